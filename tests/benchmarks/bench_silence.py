"""
A benchmark, not a test (pytest does not collect it): how long does a run go without printing,
and how fast does it stop on SIGTERM? Runs a command, puts the seconds since its start before each
line it prints, and reports the longest silence within a window (default the first ten minutes)
and, with --term_at, how long the command took to exit after SIGTERM at that second.

    python tests/benchmarks/bench_silence.py -- python train.py config/train_shakespeare_char.py
    python tests/benchmarks/bench_silence.py --term_at=150 -- python train.py config/train_shakespeare_char.py --out_dir=o150
    python train.py --init_from=resume --out_dir=o150 --max_iters=1 --eval_iters=2   # the last.pt resumes

The targets (issue 23), on a 2-core CPU: no silence over 15 s in the first ten minutes of the
shakespeare_char GPU recipe (the command above); SIGTERM at any moment (the dtype measurement, the
step-0 evaluation, training) exits within 15 s with a last.pt that resumes. NANOGPT_CACHE_DIR=<an empty directory> makes the measurement run
as on a first start. The stamped lines go to --log (default silence.log).
"""

import argparse
import json
import os
import signal
import subprocess
import threading
import time

PROJECT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def main():
    p = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    p.add_argument('--term_at', type=float, default=0, help='send SIGTERM at this second (0: never)')
    p.add_argument('--window', type=float, default=600, help='seconds from the start in which silences count')
    p.add_argument('--log', default='silence.log')
    p.add_argument('cmd', nargs=argparse.REMAINDER, help='-- then the command')
    a = p.parse_args()
    cmd = a.cmd[1:] if a.cmd[:1] == ['--'] else a.cmd
    if not cmd:
        p.error("give the command after --, e.g. -- python train.py config/train_shakespeare_char.py")
    t0 = time.time()
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, cwd=PROJECT,
                            env=dict(os.environ, PYTHONUNBUFFERED='1'))
    term = {}
    if a.term_at:
        def send():
            time.sleep(a.term_at)
            if proc.poll() is None:
                term['at'] = time.time() - t0
                proc.send_signal(signal.SIGTERM)
        threading.Thread(target=send, daemon=True).start()
    times = [0.0]
    with open(a.log, 'w') as f:
        for line in proc.stdout:
            times.append(time.time() - t0)
            f.write(f"[{times[-1]:7.1f}] {line}")
            f.flush()
    rc = proc.wait()
    end = time.time() - t0
    seen = [t for t in times if t <= a.window] + [min(end, a.window)]
    gaps = [b - x for x, b in zip(seen, seen[1:])]
    longest = max(range(len(gaps)), key=gaps.__getitem__)
    print(json.dumps(dict(exit_code=rc, seconds=round(end, 1), lines=len(times) - 1,
                          longest_silence_s=round(gaps[longest], 1), silence_from_s=round(seen[longest], 1),
                          sigterm_at_s=round(term['at'], 1) if term else None,
                          exit_after_sigterm_s=round(end - term['at'], 1) if term else None)))


if __name__ == '__main__':
    main()
