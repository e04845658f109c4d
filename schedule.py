"""
The learning-rate schedule (linear warmup, cosine decay, floor) and the time budget that can
drive it.

With time_budget = 0 (the default) the schedule follows the iteration count, as in nanoGPT.
With a budget in seconds it follows the fraction of the budget spent: the run is placed at
"iteration" progress * lr_decay_iters, so warmup takes warmup_iters / lr_decay_iters of the time
and the rate reaches min_lr as the last iteration ends, on a fast machine and on a slow one.
"""

import math
import time

from errors import warn_once


def get_lr(it, c):
    """Linear warmup, then cosine decay to min_lr at lr_decay_iters, then min_lr. `it` may be a
    fraction (time-budgeted runs)."""
    if it < c.warmup_iters:
        return c.learning_rate * (it + 1) / (c.warmup_iters + 1)
    if it > c.lr_decay_iters:
        return c.min_lr
    decay_ratio = (it - c.warmup_iters) / (c.lr_decay_iters - c.warmup_iters)
    coeff = 0.5 * (1.0 + math.cos(math.pi * decay_ratio))  # from 1 down to 0
    return c.min_lr + coeff * (c.learning_rate - c.min_lr)


def format_duration(s):
    s = max(0, int(round(s)))
    return f"{s // 3600}h{s % 3600 // 60:02d}m" if s >= 3600 else f"{s // 60}m{s % 60:02d}s"


class TimeBudget:
    """The wall-clock budget of a run, from the start of the process to its last checkpoint,
    setup, compilation, evaluations and saving included, summed over resumed runs.

    The training loop asks `must_close()` before each iteration: true when one more iteration,
    an evaluation that falls due and the closing evaluation and save would not all fit in what
    is left. `progress()` is the schedule's position: 0 at the first training iteration, 1 when
    the time left is only what the closing evaluation and save need.
    """

    MARGIN = 0.01  # of the budget, kept free for printing, closing files and exiting

    def __init__(self, seconds, t0=None, spent=0.0, start=None, clock=time.time):
        self.seconds = float(seconds)
        self.clock = clock
        self.t0 = clock() if t0 is None else t0  # when this process's share began
        self.spent_before = float(spent)  # by the runs this one resumes
        self.start = start  # spent() at the first training iteration of the first run
        self.eval_s = self.save_s = None  # the last measured durations
        self.save_guess_s = 1.0
        self.iter_times = []  # this process's iteration times, the first (warm-up, compilation) apart
        self.closed = False  # the budget ended the run (stored: resuming with no more time is refused)

    FEW_ITERATIONS = 500  # fewer than this in a whole budget: the model is too big for it

    def iter_done(self, seconds):
        self.iter_times.append(seconds)
        del self.iter_times[1:-9]  # keep the first and the 9 newest
        if len(self.iter_times) == 6:  # once, when the pace is known
            pace = self.iter_s
            fits = (self.seconds - (self.start or 0.0)) / pace if pace else None
            if fits and fits < self.FEW_ITERATIONS:
                warn_once(f"at {pace:.2f}s an iteration this {format_duration(self.seconds)} budget fits "
                          f"about {fits:.0f} iterations: a smaller model (n_layer, n_embd, block_size) "
                          f"would learn more in it on this machine")

    @property
    def iter_s(self):
        """Seconds one more iteration takes: the median of the recent ones; the first iteration,
        slowed by warm-up or compilation, counts only until there is another."""
        recent = sorted(self.iter_times[1:] or self.iter_times)
        return recent[len(recent) // 2] if recent else None

    def spent(self):
        return self.spent_before + self.clock() - self.t0

    def left(self):
        return self.seconds - self.spent()

    def loop_started(self):
        if self.start is None:
            self.start = self.spent()

    def eval_estimate(self, eval_iters, grad_accum):
        """Seconds for one evaluation: measured, or before the first one a guess from the
        iteration time (2 splits x eval_iters forward passes, each about a third of a micro-step)."""
        if self.eval_s is not None:
            return self.eval_s
        if self.iter_s is not None:
            return 1.5 * 2 * eval_iters * self.iter_s / grad_accum / 3
        return 0.0

    def reserve(self, eval_iters, grad_accum):
        """Seconds the closing evaluation, the save and the exit need."""
        save = self.save_s if self.save_s is not None else self.save_guess_s
        return self.eval_estimate(eval_iters, grad_accum) + save + self.MARGIN * self.seconds

    def must_close(self, eval_due, eval_iters, grad_accum):
        need = (self.iter_s or 0.0) + self.reserve(eval_iters, grad_accum)
        if eval_due:  # an evaluation (and maybe a save) before that iteration
            need += self.eval_estimate(eval_iters, grad_accum) + (self.save_s or 0.0)
        self.closed = self.left() < need
        return self.closed

    def progress(self, eval_iters, grad_accum):
        start = self.start if self.start is not None else self.spent()
        horizon = self.seconds - self.reserve(eval_iters, grad_accum) - start
        if horizon <= 0:
            return 1.0
        return min(1.0, max(0.0, (self.spent() - start) / horizon))

    def state(self):
        return {'spent': self.spent(), 'start': self.start, 'seconds': self.seconds, 'closed': self.closed}

    def spent_by(self, saved):
        """Whether a checkpoint's time state (state()) says that a budget at least this large
        already ended that run: what it left over is less than an iteration and the closing work."""
        return saved.get('closed', False) and self.seconds <= saved.get('seconds', 0.0)
