"""
What a long run says while it works: a heartbeat that prints a line whenever the run has printed
nothing for a while, naming what it is doing, and the estimate of what the whole run will cost.

Some parts of a run print nothing for minutes: the dtype/compile measurement, compiling, and an
evaluation of 200 batches per split on a CPU (the used-by GPU recipe's step-0 evaluation takes
about ten minutes on a 2-core CPU). The heartbeat is a daemon thread that watches the run's
standard output: after INTERVAL seconds without a line it prints one, e.g.

    ... evaluating at iter 0: val batch 57 of 200 (1m32s)

and again every INTERVAL seconds while the silence lasts. The lines are plain (one per beat, also
in a log file); the original's console lines keep their format. NANOGPT_PROGRESS_INTERVAL sets
the interval in seconds (the tests make it short).

The estimate is arithmetic on measured times (estimate_s, estimate_line): iterations left x
seconds per iteration + evaluations left x seconds per evaluation.
"""

import os
import sys
import threading
import time
from contextlib import contextmanager

from .metrics import format_duration

INTERVAL = 10.0  # seconds of silence before a progress line (NANOGPT_PROGRESS_INTERVAL)
LONG_ON_CPU_S = 30 * 60  # an estimate beyond this on a CPU adds a line pointing to what fits


def interval():
    try:
        return float(os.environ.get('NANOGPT_PROGRESS_INTERVAL', INTERVAL))
    except ValueError:
        return INTERVAL


class _Watched:
    """sys.stdout as it was, noting when it was last written and whether a line is complete."""

    def __init__(self, stream):
        self.stream, self.last, self.at_line_start = stream, time.monotonic(), True
        self.lock = threading.Lock()

    def write(self, s):
        with self.lock:
            n = self.stream.write(s)
            if s:
                self.last, self.at_line_start = time.monotonic(), s.endswith('\n')
            return n

    def __getattr__(self, name):  # flush, fileno, isatty, encoding, ...
        return getattr(self.stream, name)


class Heartbeat:
    """A context manager: while inside, a line is printed after each `interval` seconds in which
    nothing was printed, saying what the run is doing (set with phase()) and for how long."""

    def __init__(self, every=None):
        self.every = interval() if every is None else every
        self.what, self.since = 'setting up', time.monotonic()
        self.done = threading.Event()

    def __enter__(self):
        global _current
        self.out, self.outer, _current = _Watched(sys.stdout), _current, self
        sys.stdout = self.out
        self.thread = threading.Thread(target=self._beat, name='nanogpt-heartbeat', daemon=True)
        self.thread.start()
        return self

    def __exit__(self, *exc):
        global _current
        self.done.set()
        self.thread.join()
        if sys.stdout is self.out:
            sys.stdout = self.out.stream
        _current = self.outer

    def _beat(self):
        while not self.done.wait(min(0.5, self.every / 4)):
            out = self.out
            with out.lock:
                quiet = time.monotonic() - out.last
                if quiet >= self.every and out.at_line_start:
                    what = self.what() if callable(self.what) else self.what
                    out.stream.write(f"... {what} ({format_duration(time.monotonic() - self.since)})\n")
                    out.stream.flush()
                    out.last = time.monotonic()


_current = None  # the Heartbeat of the run under way


@contextmanager
def phase(what):
    """Inside, the heartbeat says `what` (a string, or a function returning one, called at each
    beat); afterwards what it said before. Without a heartbeat, nothing."""
    hb = _current
    if hb is None:
        yield
        return
    before = hb.what, hb.since
    set_phase(what)
    try:
        yield
    finally:
        hb.what, hb.since = before


def set_phase(what, restart=True):
    """What the heartbeat says from now on; restart=False keeps the time it counts from."""
    hb = _current
    if hb is not None:
        hb.what = what
        if restart:
            hb.since = time.monotonic()


# ---- the estimate ------------------------------------------------------------------------------

def evaluations_left(iter_num, max_iters, eval_interval):
    """Evaluations from iteration iter_num to max_iters, both included: at every multiple of
    eval_interval, and one more at max_iters when it is not one (every run ends evaluated)."""
    if iter_num > max_iters:
        return 0
    n = max_iters // eval_interval - (iter_num - 1) // eval_interval  # multiples in [iter_num, max_iters]
    return n + (max_iters % eval_interval != 0)


def estimate_s(iter_num, max_iters, eval_interval, iter_s, eval_s, compile_s=0.0):
    """Seconds the run needs from iteration iter_num (not yet run, its evaluation not yet done)
    to its end: the iterations iter_num..max_iters, the evaluations among them, and any
    compiling still to come."""
    iters = max(0, max_iters - iter_num + 1)
    return iters * iter_s + evaluations_left(iter_num, max_iters, eval_interval) * eval_s + compile_s


def short_duration(s):
    """A duration for an estimate: '80ms', '4.2s', '11m00s', '3h05m'."""
    if s < 1:
        return f"{s * 1000:.0f}ms"
    if s < 60:
        return f"{s:.1f}s"
    return format_duration(s)


def estimate_line(iter_num, max_iters, eval_interval, iter_s, eval_s, compile_s=0.0, what='this run'):
    """'this run: 5001 iterations x ~5.0s + 21 evaluations x ~11m00s = ~11h05m on this machine'."""
    iters = max(0, max_iters - iter_num + 1)
    evals = evaluations_left(iter_num, max_iters, eval_interval)
    total = estimate_s(iter_num, max_iters, eval_interval, iter_s, eval_s, compile_s)
    parts = [f"{iters} iterations x ~{short_duration(iter_s)}"]
    if evals:
        parts.append(f"{evals} evaluation{'s' if evals != 1 else ''} x ~{short_duration(eval_s)}")
    if compile_s:
        parts.append(f"~{short_duration(compile_s)} compiling")
    return f"{what}: {' + '.join(parts)} = ~{format_duration(total)} on this machine"


def advice_line(c, total_s):
    """On a CPU, for a run estimated beyond LONG_ON_CPU_S: what fits in less time. `c`: the
    settings (dataset, eval_iters)."""
    ways = []
    if c.dataset == 'shakespeare_char':
        ways.append("python train.py config/train_shakespeare_char_cpu.py trains a smaller model in five minutes")
    ways.append(f"--time_budget=1800 ends this run in half an hour, with its best model saved")
    if c.eval_iters > 20:
        ways.append(f"--eval_iters=20 makes each evaluation {c.eval_iters / 20:.0f}x cheaper (and noisier)")
    return f"~{format_duration(total_s)} is long for a CPU: " + "; or ".join(ways)
