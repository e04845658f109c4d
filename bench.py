"""
Benchmarks: the training step alone, and sampling speed.

    python bench.py                                  # training step, shakespeare_char model shape
    python bench.py config/train_shakespeare_char.py --batch_size=32
    python bench.py --compare=True                   # float32 eager vs the chosen defaults, one process
    python bench.py --mode=sample                    # tokens/s with and without the KV cache

Random data and random weights: nothing is read from disk, so it runs anywhere.
"""

import sys
import time
from types import SimpleNamespace

import torch

import common
from configurator import apply_overrides
from model import GPT, GPTConfig

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
learning_rate = 1e-3
weight_decay = 1e-1
beta1 = 0.9
beta2 = 0.99
warmup = 3  # untimed iterations (compilation happens here)
iters = 10  # timed iterations
compare = False  # also run float32 eager and print the speed-up of the chosen settings
device = 'auto'
dtype = 'auto'
compile = 'auto'
peak_flops = 0.0
seed = 1337
# sampling mode
num_samples = 5
max_new_tokens = 500
prompt_len = 6
# -----------------------------------------------------------------------------------------------
DEFAULTS = {k: v for k, v in globals().items()
            if not k.startswith('_') and isinstance(v, (int, float, bool, str))}


def build_model(c, dev):
    torch.manual_seed(c.seed)
    cfg = GPTConfig(n_layer=c.n_layer, n_head=c.n_head, n_embd=c.n_embd, block_size=c.block_size,
                    vocab_size=c.vocab_size, bias=c.bias, dropout=c.dropout)
    return GPT(cfg).to(dev)


def bench_train(c, dev, dtype, compile_):
    """ms per training iteration (forward, backward, AdamW step) on random tokens."""
    device_type = common.device_type_of(dev)
    model = build_model(c, dev)
    optimizer = model.configure_optimizers(c.weight_decay, c.learning_rate, (c.beta1, c.beta2), device_type)
    fwd = torch.compile(model) if compile_ else model
    ctx = common.autocast_ctx(device_type, dtype)
    x = torch.randint(c.vocab_size, (c.batch_size, c.block_size), device=dev)
    y = torch.randint(c.vocab_size, (c.batch_size, c.block_size), device=dev)

    def step():
        with ctx:
            _, loss = fwd(x, y)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        return loss

    for _ in range(c.warmup):
        step().item()
    t0 = time.perf_counter()
    for _ in range(c.iters):
        loss = step()
    loss.item()  # wait for the device
    dt = (time.perf_counter() - t0) / c.iters
    peak, src = common.peak_flops(dev, dtype, c.peak_flops)
    mfu = model.estimate_mfu(c.batch_size, dt, peak)
    tok_s = c.batch_size * c.block_size / dt
    return dt, tok_s, mfu, src


def bench_sample(c, dev, use_cache):
    """Tokens per second generating num_samples x max_new_tokens one sample at a time."""
    model = build_model(c, dev).eval()
    x = torch.randint(c.vocab_size, (1, c.prompt_len), device=dev)
    torch.manual_seed(c.seed)
    t0 = time.perf_counter()
    with torch.no_grad():
        for _ in range(c.num_samples):
            model.generate(x, c.max_new_tokens, temperature=0.8, top_k=200, use_cache=use_cache)
    dt = time.perf_counter() - t0
    return c.num_samples * c.max_new_tokens / dt, dt


def main(argv=None):
    c = SimpleNamespace(**apply_overrides(DEFAULTS, sys.argv[1:] if argv is None else argv, verbose=False))
    dev = common.resolve_device(c.device)
    device_type = common.device_type_of(dev)
    if c.mode == 'sample':
        rows = []
        for use_cache in (False, True):
            tok_s, dt = bench_sample(c, dev, use_cache)
            rows.append((('kv cache' if use_cache else 'uncached'), tok_s, dt))
        print(f"{'path':<10} {'tok/s':>10} {'seconds':>9}")
        for name, tok_s, dt in rows:
            print(f"{name:<10} {tok_s:>10.1f} {dt:>9.2f}")
        print(f"speed-up: {rows[1][1] / rows[0][1]:.2f}x")
        return rows
    dtype = common.resolve_dtype(c.dtype, device_type, c.n_embd)
    compile_ = common.resolve_compile(c.compile, device_type)
    runs = [('chosen', dtype, compile_)]
    if c.compare:
        runs.insert(0, ('fp32 eager', 'float32', False))
    results = []
    for name, dt_, comp in runs:
        dt, tok_s, mfu, src = bench_train(c, dev, dt_, comp)
        results.append((name, dt_, comp, dt, tok_s, mfu))
        print(f"{name}: {dt_}, compile={comp}: {dt * 1000:.1f} ms/iter, {tok_s:,.0f} tok/s, "
              f"mfu {mfu * 100:.2f}% (of {src})")
    if c.compare:
        print(f"speed-up of chosen settings over float32 eager: {results[0][3] / results[1][3]:.2f}x")
    return results


if __name__ == '__main__':
    common.run_cli(main)
