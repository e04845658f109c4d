"""
What a long run says while it works: a heartbeat that prints a line whenever the run has printed
nothing for a while, naming what it is doing (LoopPhases names train.py's loop), and the estimate
of what the whole run will cost (RunEstimate, from IterationTimes and the arithmetic below).

Some parts of a run print nothing for minutes: the dtype/compile measurement, compiling, and an
evaluation of 200 batches per split on a CPU (docs/training.md, "What the run will cost", shows
the shakespeare_char GPU recipe's first minutes on a CPU). The heartbeat is a daemon thread that watches the run's
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

__all__ = ['Heartbeat', 'phase', 'set_phase', 'LoopPhases', 'IterationTimes', 'RunEstimate', 'evaluation_s',
           'evaluations_left', 'estimate_s', 'estimate_line', 'advice_line', 'LONG_ON_CPU_S']

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


class LoopPhases:
    """What the heartbeat says during train.py's loop. While training, its clock runs from the
    first iteration after an evaluation or a save, so a beat says how long training has been
    silent, not how long this one iteration took."""

    def __init__(self, compiling):
        self.compiling = compiling  # the first iteration compiles (run.compile)
        self.in_training = False

    def training(self, iter_num, local_iter_num):
        set_phase(f"training: iter {iter_num}" + (
            ", compiling and warming up" if local_iter_num == 0 and self.compiling else ''),
            restart=not self.in_training)
        self.in_training = True

    def evaluating(self, iter_num, split, batches_done, batches, first):
        self.in_training = False
        set_phase(f"evaluating at iter {iter_num}: {split} batch {batches_done} of {batches}", restart=first)

    def writing(self, path):
        set_phase(f"writing {path}")
        self.in_training = False


# ---- the estimate ------------------------------------------------------------------------------

class IterationTimes:
    """A process's iteration times as a pace: the first iteration (warm-up, compiling) and the 9
    newest are kept. Shared by the time budget and the run's estimate."""

    def __init__(self):
        self.times = []

    def add(self, seconds):
        self.times.append(seconds)
        del self.times[1:-9]

    def __len__(self):
        return len(self.times)

    def median(self):
        """Seconds one more iteration takes: the median of the recent ones; the first iteration
        counts only until there is another. None before any."""
        recent = sorted(self.times[1:] or self.times)
        return recent[len(recent) // 2] if recent else None

    def recent(self, n):
        """The median of the n newest iterations (the first one apart); None before there are n."""
        last = sorted(self.times[1:][-n:])
        return last[len(last) // 2] if len(last) == n else None


def evaluation_s(iter_s, batches, grad_accum):
    """Seconds for `batches` evaluation batches at iter_s seconds per iteration of grad_accum
    micro-steps: an evaluation batch is a forward alone, about a third of a micro-step (a forward
    and a backward pass that costs about two)."""
    return batches * iter_s / grad_accum / 3



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


class RunEstimate:
    """What a run without a time budget will cost, printed once by rank 0 from the best times
    known as soon as there are any: iterations as autotune.py measured them (run.micro_step_s) or
    as run here, else from the first evaluation's forwards; on a CPU a run beyond LONG_ON_CPU_S
    adds what would fit. Printed again once iterations and an evaluation have been timed here,
    when they change it by more than a quarter. `active`: False (a time budget, eval_only, ranks
    other than 0) prints nothing and gives no time left."""

    def __init__(self, c, run, active):
        self.c, self.run, self.active = c, run, active
        self.iter_times = IterationTimes()  # each iteration's own work (no evaluation or save)
        self.estimated = None  # seconds for the whole run, once printed
        self.refined = False
        self.forward_s = []  # the first evaluation's forward times, until the estimate is printed
        self.last_forward_end = None
        self.last_eval_s = None  # seconds the last whole evaluation took

    def _forwards(self):
        return self.c.eval_iters // self.run.eval_batches  # per split

    def forward_done(self, now, first, work_began, iter_num, local_iter_num):
        """An evaluation forward ended at `now` (the first of an evaluation when `first`, which
        began at `work_began`): on the first evaluation the estimate is printed as soon as a
        forward's time is known. The first forward holds one-off warm-up: the median of the
        others is the pace."""
        if self.active and self.estimated is None:
            if first:
                self.forward_s = []
            self.forward_s.append(now - (work_began if first else self.last_forward_end))
        self.last_forward_end = now
        if self.active and self.estimated is None and len(self.forward_s) >= 3:
            rest = sorted(self.forward_s[1:])
            self._show(iter_num, local_iter_num, eval_s=rest[len(rest) // 2] * 2 * self._forwards())

    def evaluated(self, eval_s, iter_num, local_iter_num):
        self.last_eval_s = eval_s
        if self.active and self.estimated is None:
            self._show(iter_num, local_iter_num, eval_s)

    def iteration_done(self, seconds, iter_num, local_iter_num, spent_s):
        """An iteration's own work took `seconds`; `spent_s`: the run's time so far."""
        if not self.active:
            return
        self.iter_times.add(seconds)
        if self.estimated is None and local_iter_num == 1:  # no evaluation came first (a resumed run)
            self._show(iter_num, local_iter_num, eval_s=None)
        elif not self.refined and len(self.iter_times) >= 10 and self.last_eval_s is not None:
            self._refine(iter_num, spent_s)

    def time_left(self, iter_num):
        """Seconds from iteration iter_num to the end at the measured pace, the evaluations to
        come included (None when inactive or before a measurement)."""
        iter_s = self.iter_times.median()
        if not self.active or iter_s is None:
            return None
        eval_s = self.last_eval_s if self.last_eval_s is not None else 0.0
        return estimate_s(iter_num, self.c.max_iters, self.c.eval_interval, iter_s, eval_s)

    def _show(self, iter_num, local_iter_num, eval_s):
        c, run = self.c, self.run
        batches = 2 * self._forwards() * run.eval_batches  # both splits
        iter_s = self.iter_times.median()
        if iter_s is None and run.micro_step_s:
            iter_s = run.micro_step_s * run.grad_accum
        elif iter_s is None and eval_s:
            iter_s = eval_s / evaluation_s(1.0, batches, run.grad_accum)
        if iter_s is None:
            return  # nothing measured yet
        if eval_s is None:
            eval_s = evaluation_s(iter_s, batches, run.grad_accum)
        start = iter_num + (1 if local_iter_num else 0)  # after an iteration: the estimate is of those left
        self.estimated = estimate_s(start, c.max_iters, c.eval_interval, iter_s, eval_s)
        print(estimate_line(start, c.max_iters, c.eval_interval, iter_s, eval_s))
        if run.device_type == 'cpu' and self.estimated > LONG_ON_CPU_S:
            print(advice_line(c, self.estimated))

    def _refine(self, iter_num, spent_s):
        self.refined = True
        left = self.time_left(iter_num + 1)
        if left is None or not self.estimated:
            return
        if abs(spent_s + left - self.estimated) > 0.25 * self.estimated:
            print(estimate_line(iter_num + 1, self.c.max_iters, self.c.eval_interval, self.iter_times.median(),
                                self.last_eval_s, what='measured, the rest of this run'))
