"""
A benchmark, not a test (pytest does not collect it): does a time budget hold when another process
takes the cores near its end? Runs the CPU recipe with a budget, starts a second process
multiplying matrices on every core at a chosen second, and reports when the run ended.

    python data/shakespeare_char/prepare.py                 # once
    python tests/benchmarks/bench_budget_under_load.py                 # 90 s budget, load from the 78th second, 2 runs
    python tests/benchmarks/bench_budget_under_load.py --load_at=30 --runs=1
    python tests/benchmarks/bench_budget_under_load.py --load_at=-1    # no load: the reference
    python tests/benchmarks/bench_budget_under_load.py --budget=300 --load_at=255 --compile=False   # others go to train.py

Each run takes about the budget, plus a few seconds. Run it on a machine nothing else is using:
the load it starts is the one being measured. The target (issue 22): every run ends within the
budget + 2%, with the load from 85% of the budget (the 78th second of 90).
"""

import argparse
import os
import subprocess
import sys
import tempfile
import time

PROJECT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

# every core busy with float32 matmuls, as long as it lives
HOG = ("import os, torch\n"
       "torch.set_num_threads(os.cpu_count())\n"
       "a = torch.randn(2048, 2048)\n"
       "while True:\n"
       "    a = torch.tanh(a @ a)\n")


def one_run(args, out_dir):
    """(seconds from start to exit, the checkpoint's recorded spent seconds, the 'done:' line)."""
    import torch
    cmd = [sys.executable, 'train.py', args.config, f'--time_budget={args.budget}', f'--out_dir={out_dir}',
           *args.extra]
    log = open(os.path.join(out_dir, 'train.log'), 'w')
    t0 = time.monotonic()
    train = subprocess.Popen(cmd, cwd=PROJECT, stdout=log, stderr=subprocess.STDOUT)
    hog = None
    try:
        if args.load_at >= 0:
            while train.poll() is None and time.monotonic() - t0 < args.load_at:
                time.sleep(0.05)
            if train.poll() is None:
                hog = subprocess.Popen([sys.executable, '-c', HOG])
                print(f"  load started at {time.monotonic() - t0:.1f}s", flush=True)
        train.wait()
        wall = time.monotonic() - t0
    finally:
        if hog is not None:
            hog.kill()
            hog.wait()
        if train.poll() is None:
            train.kill()
            train.wait()
        log.close()
    with open(os.path.join(out_dir, 'train.log')) as f:
        lines = f.read().splitlines()
    if train.returncode != 0:
        sys.exit(f"train.py exited {train.returncode}:\n" + '\n'.join(lines[-20:]))
    done = next((line for line in reversed(lines) if line.startswith('done:')), '')
    spent = None
    for name in ('ckpt.pt', 'last.pt'):
        path = os.path.join(out_dir, name)
        if os.path.exists(path):
            saved = torch.load(path, map_location='cpu', weights_only=True).get('time') or {}
            spent = saved.get('spent') if spent is None else max(spent, saved.get('spent', 0.0))
    return wall, spent, done


def main():
    p = argparse.ArgumentParser(description=__doc__.strip().splitlines()[0])
    p.add_argument('--budget', type=float, default=90.0, help='time_budget in seconds')
    p.add_argument('--load_at', type=float, default=78.0, help='second at which the load starts; -1: none')
    p.add_argument('--runs', type=int, default=2)
    p.add_argument('--config', default='config/train_shakespeare_char_cpu.py')
    args, args.extra = p.parse_known_args()  # the rest goes to train.py, e.g. --compile=False
    if not os.path.exists(os.path.join(PROJECT, 'data', 'shakespeare_char', 'train.bin')) and \
            args.config.endswith('shakespeare_char_cpu.py'):
        sys.exit("prepare the data first: python data/shakespeare_char/prepare.py")
    print(f"{os.cpu_count()} CPUs; {args.config}, time_budget={args.budget:g}s, load from "
          f"{'no second' if args.load_at < 0 else f'second {args.load_at:g}'}; target: within "
          f"{args.budget * 1.02:.1f}s")
    results = []
    for k in range(args.runs):
        with tempfile.TemporaryDirectory(prefix='budget-load-') as out_dir:
            wall, spent, done = one_run(args, out_dir)
        results.append(wall)
        spent_text = f"{spent:.1f}s" if spent is not None else "none"
        print(f"run {k + 1}: ended at {wall:.1f}s ({100 * (wall / args.budget - 1):+.1f}% of the budget); "
              f"recorded spent at the last save {spent_text}; {done}", flush=True)
    held = all(w <= args.budget * 1.02 for w in results)
    print(f"{'held' if held else 'NOT held'}: longest run {max(results):.1f}s against {args.budget * 1.02:.1f}s")
    return 0 if held else 1


if __name__ == '__main__':
    sys.exit(main())
