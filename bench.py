"""
Benchmarks: the training step alone, and sampling speed.

    python bench.py                                  # training step, shakespeare_char model shape
    python bench.py config/train_shakespeare_char.py --batch_size=32
    python bench.py --compare=True                   # float32 eager vs the chosen defaults, one process
    python bench.py --sweep=True                     # every dtype x compile x optimizer combination
    python bench.py --mode=sample                    # tokens/s with and without the KV cache

Random data and random weights: nothing is read from disk, so it runs anywhere. The training step
is train.py's: autocast forward, backward, gradient clipping, AdamW. Several setups are timed in one
process with their iterations interleaved (A B A B ...), so a busy machine slows them alike and
the ratios stay meaningful; each line reports the median iteration. train.py config files are
accepted: the settings the training step has are used, the others (out_dir, max_iters, ...) ignored.
"""

import sys
import time
from types import SimpleNamespace
from typing import NamedTuple

import torch

import train
from configurator import apply_overrides, parse_argv, settings_of
from model import GPT, GPT2_SIZES, GPTConfig
from nanogpt import autotune, cpu, devices
from nanogpt.data import GPT2_PADDED_VOCAB
from nanogpt.engine import Engine
from nanogpt.errors import UserError, run_cli
from nanogpt.optim import build_optimizer, clip_gradients, resolve_optimizer
from nanogpt.settings import check_seed

# -----------------------------------------------------------------------------------------------
mode = 'train'  # 'train' or 'sample'
batch_size = 64
block_size = 256
n_layer = 6
n_head = 6
n_embd = 384
vocab_size = 65
bias = False
dropout = 0.0
gradient_accumulation_steps = 1
grad_clip = 1.0
learning_rate = 1e-3
weight_decay = 1e-1
beta1 = 0.9
beta2 = 0.99
warmup = 2  # untimed iterations per setup (compilation happens here)
iters = 10  # timed iterations per setup
compare = False  # also time the original's step (float32 eager, foreach AdamW, torch's dropout); print the speed-up
sweep = False  # also time float32 / bfloat16 x eager / compiled, and the other optimizer, against the original's step
device = 'auto'
dtype = 'auto'
compile = 'auto'
fused = 'auto'  # fused AdamW: auto (where torch has it), True or False
optimizer = 'adamw'  # or 'muon', or 'auto' as train.py resolves it; --sweep=True times the other one too
muon_lr = 0.02
muon_momentum = 0.95
peak_flops = 0.0  # FLOP/s that MFU compares against; 0 = GPU table or a measured matmul peak
seed = 1337
# sampling mode: the model shape above (10.65M shakespeare_char by default), then GPT-2 124M
num_samples = 1  # samples per row, one after another as sample.py draws them
max_new_tokens = 500  # sample.py's default: past block_size, so the window slides
prompt_len = 6  # len("ROMEO:")
gpt2_max_new_tokens = 100  # for the GPT-2 124M row (0 skips it); uncached it is slow on a CPU
# -----------------------------------------------------------------------------------------------
DEFAULTS = settings_of(globals())


def build_model(c, dev):
    torch.manual_seed(c.seed)
    cfg = GPTConfig(n_layer=c.n_layer, n_head=c.n_head, n_embd=c.n_embd, block_size=c.block_size,
                    vocab_size=c.vocab_size, bias=c.bias, dropout=c.dropout)
    return GPT(cfg).to(dev)


class Setup(NamedTuple):
    """One way to run the training step."""
    dtype: str
    compile: bool
    fused: bool = None  # fused AdamW kernel: True, False (foreach) or None (model.adamw's default)
    optimizer: str = 'adamw'
    original: bool = False  # torch's own CPU dropout (bernoulli_ masks, SDPA's math path), as nanoGPT
    written_out_attention: bool = False  # CPU training through the written-out attention (nanogpt/cpu.py)


ORIGINAL = Setup('float32', False, fused=False, original=True)  # the original's step on a CPU


class TrainStep:
    """One setup of the training step: a model, its optimizer and fixed random batches."""

    def __init__(self, c, dev, setup):
        device_type = devices.device_type_of(dev)
        self.c, self.setup = c, setup
        self.model = build_model(c, dev)
        if not setup.original:  # train.py's CPU fast paths; the original's step keeps torch's dropout
            masks = cpu.MaskSource()
            masks.seed(c.seed)
            as_run = SimpleNamespace(device_type=device_type, compile=setup.compile,
                                     written_out_attention=setup.written_out_attention)
            cpu.prepare_training(self.model, as_run, masks)
        self.optimizer = build_optimizer(self.model, c, setup.optimizer, device_type, setup.fused)
        self.fwd = devices.compile_model(self.model) if setup.compile else self.model
        self.ctx = devices.autocast_ctx(device_type, setup.dtype)
        g = torch.Generator().manual_seed(c.seed)
        shape = (c.gradient_accumulation_steps, c.batch_size, c.block_size)
        self.x = torch.randint(c.vocab_size, shape, generator=g).to(dev)
        self.y = torch.randint(c.vocab_size, shape, generator=g).to(dev)
        self.times, self.warmup_s = [], 0.0

    @property
    def name(self):
        s = self.setup
        compiled = s.compile and not self.fwd.fell_back  # False after a fallback
        opt = 'Muon' if s.optimizer == 'muon' else 'fused' if self.optimizer.defaults.get('fused') else 'foreach'
        drop = ', torch dropout' if s.original and self.c.dropout > 0 else ''
        attn = ', attention written out' if s.written_out_attention and not compiled else ''
        return f"{s.dtype} {'compiled' if compiled else 'eager'} {opt}{drop}{attn}"

    def step(self):
        """One optimizer step, as train.py takes it; returns the seconds it took, the device waited for."""
        c = self.c
        t0 = time.perf_counter()
        for k in range(c.gradient_accumulation_steps):
            with self.ctx:
                _, loss = self.fwd(self.x[k], self.y[k])
            (loss / c.gradient_accumulation_steps).backward()
        clip_gradients(self.model.parameters(), c.grad_clip)
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        loss.item()  # waits for the device
        return time.perf_counter() - t0

    def report(self, dev, peak_override):
        dt = sorted(self.times)[len(self.times) // 2]
        tok_s = self.c.gradient_accumulation_steps * self.c.batch_size * self.c.block_size / dt
        peak, src = devices.peak_flops(dev, self.setup.dtype, peak_override)
        mfu = self.model.estimate_mfu(self.c.batch_size * self.c.gradient_accumulation_steps, dt, peak)
        return dict(name=self.name, setup=self.setup, dt=dt, tok_s=tok_s, mfu=mfu, peak=peak, peak_src=src,
                    warmup_s=self.warmup_s)


class PeakProbes:
    """The machine's matmul peak, measured between the training iterations (a shared VM's speed
    moves severalfold from minute to minute, so a peak measured once, before, says little about
    the steps): a few 1024 x 1024 matmul batches in float32 and, where the CPU has bf16 units or
    on a GPU, in bfloat16, after every round of iterations. peak(): the best median of the dtypes."""

    def __init__(self, dev, batches=5):
        dtypes = ['float32']
        if devices.device_type_of(dev) != 'cpu' or devices.cpu_has_bf16_units():
            dtypes.append('bfloat16')
        self.probes = {d: devices.MatmulProbe(dev, d) for d in dtypes}
        self.rates = {d: [] for d in dtypes}
        self.batches = batches

    def measure(self):
        for d, probe in self.probes.items():
            self.rates[d].extend(probe.rate() for _ in range(self.batches))

    def median(self, dtype):
        rates = sorted(self.rates[dtype])
        return rates[len(rates) // 2]

    def peak(self):
        """(FLOP/s, dtype): the faster dtype's median over the run."""
        d = max(self.rates, key=self.median)
        return self.median(d), d


def bench_train(c, dev, setups, probes=None):
    """Median seconds per training iteration of each setup: warm-up (and compilation) first,
    then the timed iterations interleaved across setups (and with `probes`, PeakProbes, measured
    after each round)."""
    steps = []
    for setup in setups:
        st = TrainStep(c, dev, setup)
        t0 = time.perf_counter()
        for _ in range(c.warmup):
            st.step()
        st.warmup_s = time.perf_counter() - t0
        print(f"warmed up {st.name} in {st.warmup_s:.1f}s", flush=True)
        steps.append(st)
    for _ in range(c.iters):
        for st in steps:
            st.times.append(st.step())
        if probes is not None:
            probes.measure()
    return [st.report(dev, c.peak_flops) for st in steps]


def chosen_setup(c, dev, device_type):
    """What train.py would run with these settings: the optimizer ('auto' resolved as train.py
    resolves it), dtype and compile as train.py resolves them (autotune.choose_dtype_and_compile:
    measured for a run of the config file's max_iters or time_budget where 'auto' allows, by rule
    elsewhere)."""
    optimizer = resolve_optimizer(c.optimizer, device_type, dev)
    steps = (c.run_iters + 1) * c.gradient_accumulation_steps
    model = build_model(c, dev) if autotune.will_measure(c.dtype, c.compile, device_type) else None
    dtype, written_out_attention, compile_, _, _ = autotune.choose_dtype_and_compile(
        model, c.batch_size, c.dtype, c.compile, device_type, dev, steps, c.run_budget or None)
    fused = None if c.fused == 'auto' else c.fused
    return Setup(dtype, compile_, fused, optimizer, written_out_attention=written_out_attention)


def parse_settings(argv):
    """bench.py settings from config files and --key=value / --key value. Config files may be
    train.py's: the settings bench.py lacks are ignored there (on the command line they are still errors)."""
    items = parse_argv(argv)
    files = [item for item in items if isinstance(item, str)]
    flags = [item for item in items if not isinstance(item, str)]
    from_files = apply_overrides({**train.DEFAULTS, **DEFAULTS}, files, verbose=False)
    settings = {k: from_files[k] for k in DEFAULTS}
    # how long the config file's run is, for the compile decision (not bench settings themselves)
    settings.update(run_iters=from_files['max_iters'], run_budget=from_files['time_budget'])
    from_flags = apply_overrides(DEFAULTS, [f'--{k}' if raw is None else f'--{k}={raw}' for k, raw in flags],
                                 verbose=False)
    for key, _ in flags:
        settings[key] = from_flags[key]
    return SimpleNamespace(**settings)


def bench_sample(c, dev, shape, max_new_tokens):
    """Seconds to draw num_samples samples of max_new_tokens tokens (sample.py's defaults:
    temperature 0.8, top_k 200), the plain algorithm (model.generate) vs the engine's KV cache, random weights. The two paths
    alternate sample by sample, so a change in machine load hits both alike; each pair starts
    from the same seed, so the tokens must agree (in float32). Returns a dict for the table."""
    device_type = devices.device_type_of(dev)
    torch.manual_seed(c.seed)
    cfg = GPTConfig(dropout=0.0, **shape)
    model = GPT(cfg).to(dev).eval()
    dtype = devices.resolve_dtype(c.dtype, device_type, device=dev, cpu_bf16=True)  # what sample.py would pick
    ctx = devices.autocast_ctx(device_type, dtype)
    x = torch.randint(cfg.vocab_size, (1, c.prompt_len), generator=torch.Generator().manual_seed(c.seed)).to(dev)
    seconds = {False: 0.0, True: 0.0}
    cpu_seconds = {False: 0.0, True: 0.0}  # process CPU time: on a shared machine it moves less than wall time
    same = True
    with torch.no_grad(), ctx:
        draw = {False: model.generate, True: Engine(model).generate}
        for use_cache in (False, True):  # untimed: first-call costs (kernel and library set-up on GPUs)
            draw[use_cache](x, 2, temperature=0.8, top_k=200).tolist()
        for i in range(c.num_samples):
            out = {}
            for use_cache in (False, True):
                torch.manual_seed(c.seed + i)
                t0, c0 = time.perf_counter(), time.process_time()
                out[use_cache] = draw[use_cache](x, max_new_tokens, temperature=0.8,
                                                 top_k=200).tolist()  # .tolist() waits for the device
                seconds[use_cache] += time.perf_counter() - t0
                cpu_seconds[use_cache] += time.process_time() - c0
            same = same and out[False] == out[True]
    n = c.num_samples * max_new_tokens
    return dict(params=model.get_num_params() / 1e6, block=cfg.block_size, new=max_new_tokens, dtype=dtype,
                ref_s=seconds[False], kv_s=seconds[True], ref_tok_s=n / seconds[False],
                kv_tok_s=n / seconds[True], speedup=seconds[False] / seconds[True],
                cpu_speedup=cpu_seconds[False] / cpu_seconds[True], same=same)


def main(argv=None):
    devices.check_torch_version()
    c = parse_settings(sys.argv[1:] if argv is None else argv)
    check_seed(c.seed)
    dev = devices.resolve_device(c.device)
    device_type = devices.device_type_of(dev)
    if c.mode == 'sample':
        if c.num_samples < 1 or c.max_new_tokens < 1 or c.prompt_len < 1 or c.gpt2_max_new_tokens < 0:
            raise UserError("num_samples, max_new_tokens and prompt_len must be at least 1 and "
                            "gpt2_max_new_tokens 0 or more")
        small = dict(n_layer=c.n_layer, n_head=c.n_head, n_embd=c.n_embd, block_size=c.block_size,
                     vocab_size=c.vocab_size, bias=c.bias)
        gpt2 = dict(GPT2_SIZES['gpt2'], block_size=1024, vocab_size=GPT2_PADDED_VOCAB, bias=True)
        # the small model within its window (where the cache does all its good), then with
        # sample.py's default length, which slides the window once the sequence passes block_size
        plan = [(small, min(c.max_new_tokens, c.block_size - c.prompt_len))]
        if c.max_new_tokens > plan[0][1]:
            plan.append((small, c.max_new_tokens))
        if c.gpt2_max_new_tokens:
            plan.append((gpt2, min(c.gpt2_max_new_tokens, gpt2['block_size'] - c.prompt_len)))
        if plan[0][1] < 1:
            raise UserError(f"prompt_len {c.prompt_len} leaves no room in block_size {c.block_size}")
        rows = []
        for shape, new in plan:
            rows.append(bench_sample(c, dev, shape, new))
            r = rows[-1]
            print(f"measured {r['params']:.2f}M, {new} new tokens: uncached {r['ref_s']:.1f}s, "
                  f"kv cache {r['kv_s']:.1f}s", flush=True)
        print(f"\nsampling, {c.num_samples} sample(s) one after another, prompt {c.prompt_len} tokens, "
              f"temperature 0.8, top_k 200, device {dev}")
        print("| model | block_size | new tokens | dtype | uncached tok/s | kv cache tok/s | speed-up "
              "| speed-up in CPU time | same tokens |")
        print("| --- | --- | --- | --- | --- | --- | --- | --- | --- |")
        for r in rows:
            print(f"| {r['params']:.2f}M | {r['block']} | {r['new']} | {r['dtype']} | {r['ref_tok_s']:.1f} | "
                  f"{r['kv_tok_s']:.1f} | {r['speedup']:.2f}x | {r['cpu_speedup']:.2f}x | "
                  f"{'yes' if r['same'] else 'no'} |")
        return rows
    if c.iters < 1 or c.warmup < 0:
        raise UserError(f"iters must be at least 1 and warmup 0 or more, got {c.iters} and {c.warmup}")
    if c.fused not in ('auto', True, False):
        raise UserError(f"fused must be True, False or auto, got {c.fused!r}")
    if c.optimizer not in ('adamw', 'muon', 'auto'):
        raise UserError(f"unknown optimizer {c.optimizer!r}: use adamw, muon or auto (e.g. --optimizer=adamw)")
    torch.backends.cuda.matmul.allow_tf32 = True  # as train.py
    torch.backends.cudnn.allow_tf32 = True
    with torch.device('meta'):  # the FLOPs of one iteration, without allocating the model
        flops = build_model(c, 'meta').estimate_mfu(c.batch_size * c.gradient_accumulation_steps, 1.0, 1.0)
    chosen = chosen_setup(c, dev, device_type)
    setups = [chosen]
    if c.compare or c.sweep:
        setups.insert(0, ORIGINAL if device_type == 'cpu' else Setup('float32', False, chosen.fused))
    if c.sweep:
        can_compile = not devices.compile_unavailable(device_type)
        for d in dict.fromkeys(['float32', chosen.dtype] + (['bfloat16'] if devices.cpu_has_bf16_units() else [])):
            for comp in ([False, True] if can_compile else [False]):
                setups.append(Setup(d, comp, chosen.fused, chosen.optimizer))
            if device_type == 'cpu' and d != 'float32' and c.dropout == 0:
                setups.append(Setup(d, False, chosen.fused, chosen.optimizer, written_out_attention=True))
        other = 'muon' if chosen.optimizer == 'adamw' else 'adamw'
        setups.append(chosen._replace(optimizer=other))
        setups = list(dict.fromkeys(setups))  # each once, in order
    print(f"training step: {c.n_layer} layers x {c.n_embd} wide, {c.n_head} heads, batch "
          f"{c.batch_size} x {c.gradient_accumulation_steps} of {c.block_size} tokens, "
          f"{flops / 1e9:.3g} GFLOP/iter; {c.warmup} warm-up + {c.iters} timed iterations per setup")
    probes = PeakProbes(dev)
    results = bench_train(c, dev, setups, probes)
    peak, peak_dtype = probes.peak()
    base = results[0]['dt'] if c.compare or c.sweep else None
    chosen = next(r for r in results if r['setup'] == chosen)
    for r in results:
        tag = ' <- chosen' if r is chosen else ''
        ratio = f", {base / r['dt']:.2f}x" if base else ''
        print(f"{r['name']:<40} {r['dt'] * 1000:9.1f} ms/iter{ratio}, {r['tok_s']:>9,.0f} tok/s, "
              f"mfu {r['mfu'] * 100:5.2f}% of {r['peak'] / 1e12:.3g} TFLOP/s ({r['peak_src']}), "
              f"warm-up {r['warmup_s']:.1f}s{tag}")
    print(f"share of the machine's matmul peak ({peak_dtype} 1024x1024 matmul measured between the iterations, "
          f"median {peak / 1e9:,.0f} GFLOP/s; float32 {probes.median('float32') / 1e9:,.0f}):")
    for r in results:
        r['share'] = flops / r['dt'] / peak
        print(f"  {r['name']:<40} {flops / r['dt'] / 1e9:7,.0f} GFLOP/s, {r['share'] * 100:5.1f}% of the peak")
    if base:
        print(f"speed-up of the chosen settings ({chosen['name']}) over {results[0]['name']}: "
              f"{base / chosen['dt']:.2f}x")
    return results


if __name__ == '__main__':
    run_cli(main)
