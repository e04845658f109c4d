"""
dtype and torch.compile on the CPU, chosen by measuring this model and batch (dtype=auto,
compile=auto in train.py and bench.py); on a CUDA GPU, torch.compile chosen the same way (the
dtype there follows the rule of devices.py: bfloat16 where native).

CPUs differ too much for a rule: without bf16 units (AVX2 only) bfloat16 matmuls are emulated
and slower than float32; with AVX512-BF16 or AMX they are faster (docs/speed.md has figures), but
autocast adds casts that small models may not repay; compiling fuses the elementwise work
between the matmuls but costs a minute or more. So a few forward+backward micro-steps of the
real model on a batch of the real shape are timed in each candidate (float32, and bfloat16 where
the CPU has bf16 units): one warm-up step each, then as many rounds as fit in about
TRIAL_SECONDS (one to five), so a few seconds for a small model and tens of seconds for a large
one; the fastest is used. Compiling is tried only
when the run is long enough that the expected saving repays the compile time; its result is
kept too. The measurements are cached per machine, torch version and model/batch shape in
~/.cache/nanogpt/autotune.json (NANOGPT_CACHE_DIR or XDG_CACHE_HOME move it), so the next run
starts at once. The model's weights and the random streams are left exactly as they were.

On a GPU the same trial decides compile=auto: eager micro-steps cost milliseconds there, the
compile some seconds, so a short run (a smoke test, a fine-tune of a few hundred iterations)
stays eager and the long ones compile; after the first compile on a GPU its measured compile
time and compiled step time, cached, decide exactly.

train.py (choose_for_training) and bench.py ask choose_dtype_and_compile(): a measurement where
something is 'auto' on a CPU or compile is 'auto' on CUDA, the rule of devices.py (resolve_dtype,
resolve_compile) elsewhere.
"""

import json
import os
import time
from collections import namedtuple

import torch

from . import cpu, devices, files, progress
from .errors import warn_once
from .signals import abandonable

__all__ = ['Choice', 'choose_dtype_and_compile', 'choose_for_training', 'measure_and_choose', 'will_measure']

TRIAL_SECONDS = 4.0  # time for the timed eager micro-steps of all candidates together
# compiling is tried when the run's expected saving, at this fraction of its eager time, is more
# than the compile time (measured earlier on this machine, else the guess per 6 layers). On a
# CPU the compiled step has measured at best ~5% faster than the eager paths of nanogpt/cpu.py
# (docs/speed.md); on a GPU eager steps also pay a kernel launch per elementwise op, which
# compiling fuses away.
COMPILE_GAIN_GUESS = {'cpu': 0.05, 'cuda': 0.35}
COMPILE_GUESS_S = {'cpu': 60.0, 'cuda': 16.0}  # per 6 layers; docs/speed.md says where they come from
WRITTEN_OUT = '+written_out_attention'  # a candidate's suffix: the dtype with the attention written out


def cache_file():
    root = os.environ.get('NANOGPT_CACHE_DIR') or os.path.join(
        os.environ.get('XDG_CACHE_HOME') or os.path.join(os.path.expanduser('~'), '.cache'), 'nanogpt')
    return os.path.join(root, 'autotune.json')


def cpu_name():
    try:
        with open('/proc/cpuinfo') as f:
            for line in f:
                if line.startswith('model name'):
                    return line.split(':', 1)[1].strip()
    except OSError:
        pass
    import platform
    return platform.processor() or platform.machine()


def machine_name(device='cpu'):
    """The CPU's model name, or the GPU's."""
    if torch.device(device).type == 'cuda':
        return torch.cuda.get_device_name(device)
    return cpu_name()


def cache_key(cfg, batch_size, device='cpu'):
    """Machine, software and shape: what the timings depend on."""
    if torch.device(device).type == 'cpu':
        machine = f"{cpu_name()} | bf16 units {devices.cpu_has_bf16_units()} | {torch.get_num_threads()} threads"
    else:
        machine = f"{machine_name(device)} | {torch.device(device).type}"
    return (f"{machine} | torch {torch.__version__} | {cfg.n_layer}x{cfg.n_embd} h{cfg.n_head} vocab {cfg.vocab_size} "
            f"bias {cfg.bias} dropout {cfg.dropout} | batch {batch_size} x {cfg.block_size}")


def load_cache():
    try:
        with open(cache_file()) as f:
            data = json.load(f)
        return data if isinstance(data, dict) else {}
    except (OSError, ValueError):
        return {}


def store(key, entry):
    """Merge one entry into the cache file (written to a temporary name, then renamed)."""
    path = cache_file()
    data = load_cache()
    data[key] = entry
    tmp = f"{path}.tmp{os.getpid()}"
    try:
        os.makedirs(os.path.dirname(path), exist_ok=True)
        with open(tmp, 'w') as f:
            json.dump(data, f, indent=1, sort_keys=True)
        files.replace(tmp, path)
    except OSError as e:  # a read-only home only costs a re-measurement next time
        warn_once(f"cannot write {path} ({e.strerror}): the dtype/compile measurement is not cached")
        try:
            os.remove(tmp)
        except OSError:
            pass


def describe_candidate(key, compiled=False):
    """'bfloat16' -> 'bfloat16 eager'; 'bfloat16+written_out_attention' -> 'bfloat16 eager,
    attention written out'."""
    written_out = ', attention written out' if key.endswith(WRITTEN_OUT) else ''
    return f"{_dtype_of(key)} {'compiled' if compiled else 'eager'}{written_out}"


def _dtype_of(key):
    return key.partition('+')[0]


def candidates(model, dtype, device_type='cpu'):
    """The names of what is measured: on a CPU cpu.training_candidates, e.g. 'float32', 'bfloat16'
    and 'bfloat16+written_out_attention'; on a GPU the one dtype the rule gave."""
    if device_type != 'cpu':
        return [dtype]
    return [d + (WRITTEN_OUT if w else '') for d, w in cpu.training_candidates(dtype, model.config.dropout)]


class Trial:
    """Forward+backward micro-steps of the real model on random tokens of the real shape, eager
    ones as train.py runs them (on a CPU with its own dropout masks, nanogpt/cpu.py). The weights
    never change (no optimizer step); gradients are dropped, the random states (the CPU's, and
    the GPU's where the model is on one) are put back and the model is left in its plain form."""

    def __init__(self, model, batch_size, seed=0):
        cfg = model.config
        self.device = next(model.parameters()).device
        g = torch.Generator().manual_seed(seed)
        self.x = torch.randint(cfg.vocab_size, (batch_size, cfg.block_size), generator=g).to(self.device)
        self.y = torch.randint(cfg.vocab_size, (batch_size, cfg.block_size), generator=g).to(self.device)
        self.model = model
        self.masks = cpu.MaskSource()
        self.masks.seed(seed)

    def step(self, fwd, key, compiled=False):
        if self.device.type != 'cpu':
            pass  # nn.Dropout and the fused attention, as train.py runs a GPU
        elif compiled:  # a compiled model keeps nn.Dropout and the fused attention
            cpu.use_dropout_masks(self.model, None)
        else:
            cpu.use_eager_paths(self.model, self.masks, key.endswith(WRITTEN_OUT))
        devices.sync(self.device)
        t0 = time.perf_counter()
        with devices.autocast_ctx(self.device.type, _dtype_of(key)):
            _, loss = fwd(self.x, self.y)
        loss.backward()
        devices.sync(self.device)  # the time is the kernels', not their launches'
        return time.perf_counter() - t0

    def __enter__(self):
        self.rng = devices.random_state_kept(self.device)
        self.rng.__enter__()
        self.was_training = self.model.training
        self.model.train()
        return self

    def __exit__(self, *exc):
        self.model.zero_grad(set_to_none=True)
        cpu.use_dropout_masks(self.model, None)
        self.rng.__exit__(*exc)
        self.model.train(self.was_training)


def measure_eager(trial, keys):
    """Median seconds per micro-step of each candidate, after one untimed warm-up step each; the
    timed steps alternate between candidates so that a change in machine load hits all alike."""
    warm = {k: trial.step(trial.model, k) for k in keys}
    rounds = int(max(1, min(5, TRIAL_SECONDS / sum(warm.values()))))
    times = {k: [] for k in keys}
    for _ in range(rounds):
        for k in keys:
            times[k].append(trial.step(trial.model, k))
    return {k: sorted(t)[len(t) // 2] for k, t in times.items()}


STALE_RATIO = 2.0  # a cached winner that runs this many times faster now was measured on a busy machine


def stale_cache(trial, eager):
    """(whether the cached times `eager` were measured on a busy machine, the winner's time now):
    the cached fastest candidate, timed now (the slower of two steps after a warm-up one), runs
    STALE_RATIO times faster than the cache says. A slower machine now proves nothing: the cache
    stays. Without this check one busy minute would decide every later run on this machine."""
    best = min(eager, key=eager.get)
    trial.step(trial.model, best)
    now = max(trial.step(trial.model, best) for _ in range(2))
    return now * STALE_RATIO < eager[best], now


def compile_guess(cache, n_layer, device='cpu'):
    """Seconds compiling is expected to take: the slowest measured on this machine (this CPU,
    or this GPU model) per layer, scaled to n_layer; the device type's COMPILE_GUESS_S per 6
    layers before any measurement."""
    measured = [e for e in cache.values() if isinstance(e, dict) and e.get('compile_s') and e.get('n_layer')]
    machine = machine_name(device) if measured else None
    per_layer = [e['compile_s'] / e['n_layer'] for e in measured if e.get('cpu') == machine]
    return max(per_layer) * n_layer if per_layer else COMPILE_GUESS_S[torch.device(device).type] * n_layer / 6


def worth_trying_compile(run_s, guess_s, device_type):
    """Before compiling was ever measured for this shape: does a run of run_s eager seconds
    save more than the guessed compile time, at the device type's guessed gain?"""
    return run_s * COMPILE_GAIN_GUESS[device_type] > guess_s


def fastest(times, compile_s, steps=None, seconds=None):
    """The fastest candidate for a run of `steps` micro-steps, or of `seconds` (a time budget:
    the most micro-steps after compiling). times: {(dtype, compiled): seconds per micro-step}."""
    def cost(k):
        c = compile_s if k[1] else 0.0
        if seconds is not None:
            return -(seconds - c) / times[k]
        return steps * times[k] + c
    return min(times, key=cost)


Choice = namedtuple('Choice', 'dtype written_out_attention compile compiled_model micro_step_s')


def measure_and_choose(model, batch_size, dtype, compile, run_steps, budget_s=None, compile_ok=True, log=print):
    """Choice(dtype, written_out_attention, compile, compiled_model or None, micro_step_s) for training
    the model where it is (a CPU, or a GPU with its dtype fixed): micro_step_s is the chosen
    candidate's measured seconds per forward+backward (None when nothing was measured). dtype,
    compile: 'auto' or fixed. run_steps: micro-steps the run will take (without a budget);
    budget_s: seconds left in a time budget. compile_ok: False where compiling cannot work. The
    heartbeat (nanogpt/progress.py) says what it measures."""
    with progress.phase("measuring forward+backward (compile=auto, dtype=auto)"):
        return _measure_and_choose(model, batch_size, dtype, compile, run_steps, budget_s, compile_ok, log)


def _measure_and_choose(model, batch_size, dtype, compile, run_steps, budget_s, compile_ok, log):
    dtype_setting = dtype
    device = next(model.parameters()).device
    keys = candidates(model, dtype, device.type)
    cache = load_cache()
    key = cache_key(model.config, batch_size, device)
    entry = cache.get(key) or {}
    eager = {k: entry['eager'][k] for k in keys if k in entry.get('eager', {})}
    compiled_model = None
    with Trial(model, batch_size) as trial:
        if eager and len(eager) == len(keys):
            stale, now = stale_cache(trial, eager)
            if stale:
                best = min(eager, key=eager.get)
                log(f"auto dtype/compile: the cached times were measured on a busier machine ({describe_candidate(best)} "
                    f"{now * 1000:.0f} ms now, {eager[best] * 1000:.0f} ms cached): measuring again")
                eager = {}
                entry = {k: v for k, v in entry.items() if k not in ('eager', 'compiled', 'compile_s')}
        if len(eager) < len(keys) and (len(keys) > 1 or compile == 'auto'):
            eager = measure_eager(trial, keys)
            entry = dict(entry, eager=dict(entry.get('eager', {}), **eager), n_layer=model.config.n_layer,
                         cpu=machine_name(device), when=time.strftime('%Y-%m-%d %H:%M:%S'))
            store(key, entry)
            source = "measured"
        else:
            source = f"measured earlier, cached in {cache_file()}"
        if eager:
            log(f"auto dtype/compile: forward+backward of this model and batch ({source}): "
                + "; ".join(f"{describe_candidate(k)} {t * 1000:.0f} ms" for k, t in sorted(eager.items(), key=lambda kv: kv[1])))
        best = min(eager, key=eager.get) if eager else keys[0]
        dtype = _dtype_of(best)
        times = {(k, False): t for k, t in eager.items()} or {(best, False): 1.0}
        compile_s = entry.get('compile_s')
        if compile is True or (compile == 'auto' and compile_ok):
            cached_compiled = entry.get('compiled', {}).get(dtype)
            if compile is True:
                want = True
            elif cached_compiled is not None:
                times[(dtype, True)] = cached_compiled
                want = fastest(times, compile_s, run_steps, budget_s)[1]
            else:
                guess = compile_guess(cache, model.config.n_layer, device)
                run_s = budget_s if budget_s is not None else run_steps * eager.get(best, 0.0)
                want = worth_trying_compile(run_s, guess, device.type)
                if not want:
                    log(f"auto compile: not tried (a run of ~{run_s:.0f}s would not repay ~{guess:.0f}s of compiling)")
            if want:
                log("compiling the model... (the first iterations are slow)")
                compiled_model = devices.compile_model(model)
                if compile == 'auto' and cached_compiled is None:
                    t0 = time.perf_counter()
                    with progress.phase("compiling the model"):
                        trial.step(compiled_model, dtype, compiled=True)  # compiles
                    compiled_model.warm = True
                    first = time.perf_counter() - t0
                    if not compiled_model.fell_back:
                        t_c = sorted(trial.step(compiled_model, dtype, compiled=True) for _ in range(3))[1]
                        compile_s = max(0.0, first - t_c)
                        entry = dict(entry, compile_s=compile_s, compiled=dict(entry.get('compiled', {}), **{dtype: t_c}))
                        store(key, entry)
                        times[(dtype, True)] = t_c
                        log(f"auto compile: {describe_candidate(dtype, True)} {t_c * 1000:.0f} ms after {compile_s:.0f}s of compiling")
                if compile == 'auto' and (compiled_model.fell_back or not fastest(times, 0.0, run_steps, budget_s)[1]):
                    compiled_model = None  # slower than eager, or failed: the compile time is spent either way
    use_compile = compiled_model is not None
    written_out_attention = not use_compile and best.endswith(WRITTEN_OUT)
    why = "fastest measured" if len(times) > 1 else "the only candidate"
    given = [name for name, setting in (('dtype', dtype_setting), ('compile', compile)) if setting != 'auto']
    how = f"auto: {why}" if not given else f"{' and '.join(given)} given" + (
        f"; {'compile' if given == ['dtype'] else 'dtype'} auto: {why}" if len(given) == 1 else "")
    log(f"using dtype: {dtype}, compile: {use_compile}" + (", attention written out" if written_out_attention else "")
        + f" ({how})")
    step_s = times.get((dtype, True)) if use_compile else (eager.get(best) if eager else None)
    return Choice(dtype, written_out_attention, use_compile, compiled_model, step_s)


def will_measure(dtype, compile, device_type, fsdp=False):
    """Whether choose_dtype_and_compile() measures (and so needs the model): something 'auto' on a CPU, or
    compile 'auto' on a CUDA GPU where torch.compile works (elsewhere the rule says why not);
    never under FSDP."""
    on_cpu = device_type == 'cpu' and 'auto' in (dtype, compile)
    on_gpu = device_type == 'cuda' and compile == 'auto' and not devices.compile_unavailable(device_type)
    return (on_cpu or on_gpu) and not fsdp


def choose_dtype_and_compile(model, batch_size, dtype, compile, device_type, device, run_steps, budget_s=None,
                             fsdp=False):
    """Choice for training `model` (on `device` already) with these settings, as train.py runs
    it: 'auto' measured (measure_and_choose) where something is 'auto' on a CPU or compile is 'auto' on a
    CUDA GPU, the rule of devices.py elsewhere (MPS, FSDP); a fixed dtype is checked either way.
    `model` may be None where nothing is measured (will_measure() is False)."""
    devices.check_compile_setting(compile)
    measure = will_measure(dtype, compile, device_type, fsdp)
    dtype_given = dtype != 'auto'
    if dtype != 'auto' or device_type != 'cpu' or not measure:
        dtype = devices.resolve_dtype(dtype, device_type, device=device)
    if not measure:
        if dtype_given:  # an auto dtype printed its line as it was resolved
            print(f"using dtype: {dtype} (given)")
        return Choice(dtype, False, devices.resolve_compile(compile, device_type), None, None)
    why_not = devices.compile_unavailable(device_type)
    if why_not and compile is True:
        compile = devices.eager_instead(why_not)
    # a stop signal abandons the measurement: the loop then stops before its first iteration
    choice = abandonable(measure_and_choose, model, batch_size, dtype, compile, run_steps, budget_s, not why_not)
    if choice is None:
        print("dtype/compile measurement abandoned: stopping")
        choice = Choice('float32' if dtype == 'auto' else dtype, False, False, None, None)
    return choice


def choose_for_training(model, c, run, ckpt, budget):
    """(run with dtype, compile and written_out_attention resolved, the compiled model or None):
    choose_dtype_and_compile() for train.py. `run`: the settings.Run; `ckpt`: the resumed
    checkpoint or None; `budget`: the TimeBudget or None. Under torchrun every process measures, and rank 0's choice
    holds for all."""
    steps = (c.max_iters - (ckpt['iter_num'] if ckpt else 0) + 1) * run.grad_accum
    dtype, written_out_attention, use_compile, compiled, step_s = choose_dtype_and_compile(
        model, c.batch_size, c.dtype, c.compile, run.device_type, run.device, steps,
        budget.left() if budget else None, run.fsdp)
    if run.torchrun:  # every process measured (or applied the rule); rank 0's choice holds for all
        import torch.distributed as dist
        choice = [dtype, written_out_attention, use_compile]
        dist.broadcast_object_list(choice, src=0)
        dtype, written_out_attention, use_compile = choice
        compiled = compiled if use_compile else None  # else compile_and_wrap compiles
    return run.replace(dtype=dtype, compile=use_compile, written_out_attention=written_out_attention, micro_step_s=step_s,
                   eval_batches=devices.eval_batches(c, model.config.vocab_size, run.device_type)), compiled
