"""
The GPU device check (not collected by pytest): the shakespeare_char GPU recipe's training and
sampling commands on one GPU, ours against the original's way of running them on the same
machine, side by side in one run, with ratios.

    python tests/benchmarks/gpu_check.py --input=path/to/tinyshakespeare/input.txt          # one H200: ~7 min
    python tests/benchmarks/gpu_check.py --input=... --smoke      # the script itself checked on a CPU: ~30 s, a tiny model

1. Training, `python train.py config/train_shakespeare_char.py` end to end (wall time of the
   command) and per iteration (from its metrics.jsonl: the time between logged iterations with no
   evaluation between them), for each seed; then the same run the way the original runs it, in
   a process of its own: its step (bfloat16 autocast, torch.compile in default mode, fused
   AdamW), the loss read at log_interval, and its evaluation (one batch and one host sync at a
   time), written out below as original_train() over this project's model.py (the same GPT).
   Validation loss: ours a fresh 200-batch evaluation of each run's best checkpoint; the
   original's the best of its own 200-batch evaluations (a lower bar, as the best of several
   noisy evaluations is biased low).
2. Sampling, `python sample.py --out_dir=... --start="ROMEO:" --num_samples=5` end to end against
   the same command with --kv_cache=False (the original's algorithm, the whole context re-run for
   each token) on the same checkpoint, and tokens/s of the decode alone at batch 1 and 5: the
   engine as sample.py runs it, the engine compiled, and the original's generate.

Prints the table and writes it to --out as JSON after each part (a run cut short keeps what it measured).
"""

import argparse
import json
import math
import os
import re
import statistics
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, ROOT)


def sh(args, **kw):
    """Run a command from the project root; (wall seconds, stdout). Fails loudly."""
    t0 = time.time()
    r = subprocess.run([sys.executable, *args], cwd=ROOT, capture_output=True, text=True, **kw)
    wall = time.time() - t0
    if r.returncode != 0:
        sys.exit(f"{' '.join(args)} failed ({r.returncode}):\n{r.stdout[-3000:]}\n{r.stderr[-3000:]}")
    return wall, r.stdout


def iter_ms(out_dir):
    """Median milliseconds per iteration of a train.py run, from its metrics.jsonl: the elapsed
    time between consecutive logged iterations with no evaluation between them, per iteration.
    (Its iter lines' own times leave out GPU work still queued: on a GPU the loop waits for the
    GPU only at log_interval.)"""
    with open(os.path.join(out_dir, 'metrics.jsonl')) as f:
        events = [json.loads(line) for line in f]
    spans, last = [], None
    for e in events:
        if e['event'] == 'eval':
            last = None
        elif e['event'] == 'iter':
            if last is not None and e['iter'] > last['iter']:
                spans.append(1000 * (e['elapsed'] - last['elapsed']) / (e['iter'] - last['iter']))
            last = e
    return statistics.median(spans) if spans else float('nan')


LOG_INTERVAL = 10  # config/train_shakespeare_char.py's log_interval
SHAPE = dict(n_layer=6, n_head=6, n_embd=384, block_size=256, batch_size=64)  # config/train_shakespeare_char.py
SMOKE_SHAPE = dict(n_layer=2, n_head=2, n_embd=64, block_size=64, batch_size=8)


def original_train(seed, device, max_iters, eval_interval=250, eval_iters=200, shape=SHAPE):
    """The original nanoGPT's shakespeare_char run, its loop as it does it: bfloat16 autocast (or
    float32 on a CPU), torch.compile in default mode, fused AdamW, and an evaluation that reads
    each batch's loss with .item(). Returns (median ms per iteration, best val loss)."""
    import numpy as np
    import torch
    from model import GPT, GPTConfig
    from train import get_lr
    from types import SimpleNamespace
    c = SimpleNamespace(learning_rate=1e-3, min_lr=1e-4, warmup_iters=100 if max_iters == 5000 else 0,
                        lr_decay_iters=max_iters)  # the config's schedule, or the short one main() gives train.py
    torch.manual_seed(seed)
    torch.backends.cuda.matmul.allow_tf32 = True
    torch.backends.cudnn.allow_tf32 = True
    data_dir = os.path.join(ROOT, 'data', 'shakespeare_char')
    cuda = device.startswith('cuda')
    ctx = torch.autocast('cuda', dtype=torch.bfloat16) if cuda else torch.autocast('cpu', enabled=False)
    B, T = shape['batch_size'], shape['block_size']

    def get_batch(split):
        data = np.memmap(os.path.join(data_dir, f'{split}.bin'), dtype=np.uint16, mode='r')
        ix = torch.randint(len(data) - T, (B,))
        x = torch.stack([torch.from_numpy(data[i:i + T].astype(np.int64)) for i in ix])
        y = torch.stack([torch.from_numpy(data[i + 1:i + 1 + T].astype(np.int64)) for i in ix])
        if cuda:
            return x.pin_memory().to(device, non_blocking=True), y.pin_memory().to(device, non_blocking=True)
        return x.to(device), y.to(device)

    model = GPT(GPTConfig(n_layer=shape['n_layer'], n_head=shape['n_head'], n_embd=shape['n_embd'], block_size=T,
                          vocab_size=65, bias=False, dropout=0.2)).to(device)
    optimizer = model.configure_optimizers(0.1, 1e-3, (0.9, 0.99), 'cuda' if cuda else 'cpu')
    if cuda:
        model = torch.compile(model)

    @torch.no_grad()
    def estimate_loss():
        out = {}
        model.eval()
        for split in ('train', 'val'):
            losses = torch.zeros(eval_iters)
            for k in range(eval_iters):
                X, Y = get_batch(split)
                with ctx:
                    _, loss = model(X, Y)
                losses[k] = loss.item()
            out[split] = losses.mean().item()
        model.train()
        return out

    best, marks, X, Y = 1e9, [], *get_batch('train')
    for it in range(max_iters + 1):  # the original breaks once iter_num passes max_iters
        for g in optimizer.param_groups:
            g['lr'] = get_lr(it, c)
        if it % eval_interval == 0:
            best = min(best, estimate_loss()['val'])
            marks.append(None)  # no iteration span across an evaluation
        with ctx:
            _, loss = model(X, Y)
        X, Y = get_batch('train')
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        if it % LOG_INTERVAL == 0:  # the original reads the loss (a host sync) only to print it
            loss.item()
            marks.append((it, time.time()))
    spans = [1000 * (b[1] - a[1]) / (b[0] - a[0]) for a, b in zip(marks, marks[1:]) if a and b]
    return statistics.median(spans) if spans else float('nan'), best


def reevaluate(out_dir, device, eval_iters=200, extra=()):
    """The val loss of out_dir/ckpt.pt on eval_iters fresh batches (train.py --eval_only)."""
    _, out = sh(['train.py', 'config/train_shakespeare_char.py', '--init_from=resume', f'--out_dir={out_dir}',
                 '--eval_only=True', f'--eval_iters={eval_iters}', f'--device={device}', *extra])
    return float(re.findall(r'val loss ([\d.]+)', out)[-1])


def decode_rates(out_dir, device, ways):
    """{'<way> batch <b>': tokens/s} of the decode alone (500 new tokens) at batch 1 and 5, in the
    dtype sample.py picks, on the checkpoint's model. ways: 'engine' (as sample.py runs it: on CUDA
    its steps replayed from CUDA graphs), 'engine compiled' (sample.py --compile=True: mode
    reduce-overhead), 'original' (model.generate, the whole context re-run for each token)."""
    import torch
    from nanogpt import devices
    from nanogpt.checkpoint import load_checkpoint, model_from_checkpoint
    from nanogpt.engine import Engine
    model = model_from_checkpoint(load_checkpoint(os.path.join(out_dir, 'ckpt.pt'))).to(device).eval()
    dev_type = devices.device_type_of(device)
    ctx = devices.autocast_ctx(dev_type, devices.resolve_dtype('auto', dev_type, device))
    make = {'engine': lambda: Engine(model).generate, 'engine compiled': lambda: Engine(model, compile=True).generate,
            'original': lambda: model.generate}
    rates = {}
    for name in ways:
        fn = make[name]()
        for batch in (1, 5):
            x = torch.zeros((batch, 6), dtype=torch.long, device=device)
            with torch.no_grad(), ctx:
                fn(x, 300, temperature=0.8, top_k=200).tolist()  # warm-up: compiling, CUDA graphs
                t0 = time.time()
                fn(x, 500, temperature=0.8, top_k=200).tolist()
                rates[f'{name} batch {batch}'] = batch * 500 / (time.time() - t0)
    return rates


def main():
    p = argparse.ArgumentParser(description=__doc__.strip().splitlines()[0])
    p.add_argument('--input', required=True, help="tiny shakespeare's input.txt")
    p.add_argument('--device', default='cuda')
    p.add_argument('--max_iters', type=int, default=5000)
    p.add_argument('--seeds', type=int, default=2)
    p.add_argument('--smoke', action='store_true', help="a tiny model for 20 iterations on the CPU: checks the script")
    p.add_argument('--out', default='gpu_check.json')
    p.add_argument('--original_seed', type=int, help="(internal) run the original's loop alone, print its JSON")
    a = p.parse_args()
    if a.smoke:
        a.device, a.max_iters, a.seeds = 'cpu', 20, 1
    shape = SMOKE_SHAPE if a.smoke else SHAPE
    sized = [f'--{k}={v}' for k, v in shape.items()] if a.smoke else []
    eval_every = max(2 * LOG_INTERVAL, a.max_iters // 4)  # a short run: iteration spans between evaluations
    short = [] if a.max_iters == 5000 else [f'--max_iters={a.max_iters}', f'--lr_decay_iters={a.max_iters}', '--warmup_iters=0',
                                             f'--eval_interval={eval_every}', '--eval_iters=20']
    if a.original_seed is not None:  # a process of its own, so that its end to end counts start-up as ours does
        ms, best = original_train(a.original_seed, a.device, a.max_iters,
                                     *((eval_every, 20) if short else (250, 200)), shape=shape)
        print(json.dumps(dict(iter_ms=ms, val=best)))
        return
    sh(['data/shakespeare_char/prepare.py', f'--input={a.input}'])
    import torch
    rows = {'torch': torch.__version__, 'device': torch.cuda.get_device_name() if a.device.startswith('cuda') else a.device}
    seeds = [1337 + s for s in range(a.seeds)]
    # the cheap, telling parts first and the table written after each, so that a run cut short
    # by its time limit still leaves what it measured: one seed, sampling, the other seeds, and
    # the compiled decode (minutes of compiling) last
    for i, seed in enumerate(seeds):
        out_dir = f'/tmp/gpu-check-ours-{seed}'
        wall, _ = sh(['train.py', 'config/train_shakespeare_char.py', f'--out_dir={out_dir}', f'--seed={seed}',
                      f'--device={a.device}', *short, *sized])
        rows[f'ours seed {seed}'] = dict(wall_s=wall, iter_ms=iter_ms(out_dir),
                                       val=reevaluate(out_dir, a.device, 20 if short else 200, sized))
        wall, out = sh([os.path.abspath(__file__), *sys.argv[1:], f'--original_seed={seed}'])
        rows[f'original seed {seed}'] = dict(wall_s=wall, **json.loads(out.strip().splitlines()[-1]))
        report(rows, a.out)
        if i == 0:
            sample = ['sample.py', f'--out_dir={out_dir}', '--start=ROMEO:', '--num_samples=5', f'--device={a.device}']
            rows['sample.py wall s (engine)'] = sh(sample)[0]
            rows['sample.py wall s (kv_cache=False)'] = sh(sample + ['--kv_cache=False'])[0]
            rows['tokens/s'] = decode_rates(out_dir, a.device, ('engine', 'original'))
            report(rows, a.out)
    if a.device.startswith('cuda'):
        rows['tokens/s'].update(decode_rates(f'/tmp/gpu-check-ours-{seeds[0]}', a.device, ('engine compiled',)))
    ratios = report(rows, a.out)
    assert all(math.isfinite(v) for v in ratios.values())


def report(rows, path):
    """rows['ratios'] from what is measured so far; prints the table and writes it to path."""
    mean = lambda xs: sum(xs) / len(xs)  # noqa: E731
    ours = [v for k, v in rows.items() if k.startswith('ours seed')]
    orig = [v for k, v in rows.items() if k.startswith('original seed')]
    rate = rows.get('tokens/s', {})
    ratios = {}
    if ours and orig:
        ratios['train end to end (original / ours)'] = mean([o['wall_s'] for o in orig]) / mean([o['wall_s'] for o in ours])
        ratios['train per iteration (original / ours)'] = mean([o['iter_ms'] for o in orig]) / mean([o['iter_ms'] for o in ours])
        ratios['val loss, ours - original (mean)'] = mean([o['val'] for o in ours]) - mean([o['val'] for o in orig])
    if 'sample.py wall s (engine)' in rows:
        ratios['sample.py (kv_cache=False / engine)'] = (rows['sample.py wall s (kv_cache=False)']
                                                         / rows['sample.py wall s (engine)'])
    for name in ('engine', 'engine compiled'):
        for b in (1, 5):
            if f'{name} batch {b}' in rate:
                ratios[f'decode batch {b} ({name} / original)'] = rate[f'{name} batch {b}'] / rate[f'original batch {b}']
    rows['ratios'] = ratios
    print(json.dumps(rows, indent=1), flush=True)
    with open(path, 'w') as f:
        json.dump(rows, f, indent=1)
    return ratios


if __name__ == '__main__':
    main()
