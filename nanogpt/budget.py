"""
The time budget (time_budget seconds): when a run must close so that its closing evaluation and
save still fit, and where the learning-rate schedule stands.

With time_budget = 0 (the default) the schedule follows the iteration count, as in nanoGPT. With a
budget in seconds it follows the fraction of the budget spent: the run is placed at "iteration"
progress * lr_decay_iters, so warmup takes warmup_iters / lr_decay_iters of the time and the
rate reaches min_lr as the last iteration ends, on a fast machine and on a slow one.
"""

import time

from .errors import UserError, warn_once
from .metrics import format_duration
from .progress import IterationTimes, evaluation_s


class TimeBudget:
    """The wall-clock budget of a run, from the start of the process to its last checkpoint,
    setup, compilation, evaluations and saving included, summed over resumed runs.

    control.StopOrClose asks `must_close()` before each iteration: true when one more iteration,
    an evaluation that falls due and the closing evaluation and save would not all fit in what
    is left. `progress()` is the schedule's position: 0 at the first training iteration, 1 when
    the time left is only what the closing evaluation and save need.

    The closing work is computation like the iterations, and slows with them: when another
    process takes the cores, an evaluation measured before takes several times as long. So its
    reserve is the last measured evaluation and save, scaled by how much slower the recent
    iterations run than the ones just before that evaluation (`slowdown()`), never scaled down.
    A slowdown that begins during the closing evaluation itself shows in no iteration: there
    control.ClosingEvaluation counts how many more of its batches fit before `after_eval_s()`, and
    the evaluation stops early rather than run past the budget.
    """

    MARGIN = 0.01  # of the budget, kept free for printing, closing files and exiting
    # Iterations whose median is the current pace. Three: two slow ones in a row move it and a
    # single hiccup does not; and on CUDA, where only every log_interval-th iteration waits for
    # the GPU (its time holds the queued ones too), one such iteration among three moves nothing.
    RECENT = 3

    def __init__(self, seconds, t0=None, spent=0.0, start=None, clock=time.time):
        self.seconds = float(seconds)
        self.clock = clock
        self.t0 = clock() if t0 is None else t0  # when this process's share began
        self.spent_before = float(spent)  # by the runs this one resumes
        self.start = start  # spent() at the first training iteration of the first run
        self._eval_s = self.save_s = None  # the last measured durations
        # what else the closing work holds, at the pace of the last measurement: the sample printed
        # after an evaluation (watch.EvalSample; a guess until one is measured) and what the run
        # does after its last save (watch.LossPlot's drawing); 0 where the run does neither
        self.sample_s = self.end_s = 0.0
        self.eval_pace = None  # recent_s when that evaluation ran (or, after step 0's, once known)
        self.save_guess_s = 1.0
        self.iter_times = IterationTimes()  # this process's
        self.closed = False  # the budget ended the run (stored: resuming with no more time is refused)

    FEW_ITERATIONS = 500  # fewer than this in a whole budget: the model is too big for it

    @property
    def eval_s(self):
        """Seconds the last evaluation took (None before one); setting it records the pace then."""
        return self._eval_s

    @eval_s.setter
    def eval_s(self, seconds):
        self._eval_s = seconds
        self.eval_pace = self.recent_s  # None at step 0: iter_done fills it in once known

    def iter_done(self, seconds):
        self.iter_times.add(seconds)
        if self._eval_s is not None and self.eval_pace is None:
            self.eval_pace = self.recent_s  # step 0's evaluation: the pace that followed it
        if len(self.iter_times) == 6:  # once, when the pace is known
            pace = self.iter_s
            fits = (self.seconds - (self.start or 0.0)) / pace if pace else None
            if fits and fits < self.FEW_ITERATIONS:
                warn_once(f"at {pace:.2f}s an iteration this {format_duration(self.seconds)} budget fits "
                          f"about {fits:.0f} iterations: a smaller model (n_layer, n_embd, block_size) "
                          f"would learn more in it on this machine")

    @property
    def iter_s(self):
        """Seconds one more iteration takes (IterationTimes.median)."""
        return self.iter_times.median()

    @property
    def recent_s(self):
        """The median of the RECENT newest iterations (the first one apart); None before there are
        that many."""
        return self.iter_times.recent(self.RECENT)

    def slowdown(self):
        """How many times slower the recent iterations run than those before the last measured
        evaluation; 1 when they do not, or before that is known."""
        now, then = self.recent_s, self.eval_pace
        return max(1.0, now / then) if now and then else 1.0

    def next_iter_s(self):
        """Seconds the next iteration is expected to take: the usual pace, or the recent one if slower."""
        return max(self.iter_s or 0.0, self.recent_s or 0.0)

    def spent(self):
        return self.spent_before + self.clock() - self.t0

    def left(self):
        return self.seconds - self.spent()

    def loop_started(self, at=None):
        """The first training iteration began at time `at` (default: now): the schedule starts there."""
        if self.start is None:
            self.start = self.spent() if at is None else self.spent_before + at - self.t0

    def eval_estimate(self, eval_iters, grad_accum):
        """Seconds for one evaluation at the recent pace: the last one measured, scaled by the
        slowdown since, or before the first one a guess from the iteration time (2 splits x
        eval_iters forward passes; progress.evaluation_s), with half as much again to spare."""
        if self.eval_s is not None:
            return self.eval_s * self.slowdown()
        if self.iter_s is not None:
            return 1.5 * evaluation_s(self.next_iter_s(), 2 * eval_iters, grad_accum)
        return 0.0

    def after_eval_s(self, slowdown=None):
        """Seconds the closing work needs after its evaluation: the sample, the save and the run's
        end, at `slowdown` times their measured pace (default: slowdown()), and the margin."""
        save = self.save_s if self.save_s is not None else self.save_guess_s
        slowdown = self.slowdown() if slowdown is None else slowdown
        return (self.sample_s + save + self.end_s) * slowdown + self.MARGIN * self.seconds

    def reserve(self, eval_iters, grad_accum):
        """Seconds the closing evaluation, the save and the exit need."""
        return self.eval_estimate(eval_iters, grad_accum) + self.after_eval_s()

    def must_close(self, eval_due, eval_iters, grad_accum):
        need = self.next_iter_s() + self.reserve(eval_iters, grad_accum)
        if eval_due:  # an evaluation, its sample and maybe a save before that iteration
            need += self.eval_estimate(eval_iters, grad_accum) + (self.sample_s + (self.save_s or 0.0)) * self.slowdown()
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

    def ended_run(self, saved):
        """Whether a checkpoint's time state (state()) says that a budget at least this large
        already ended that run: what it left over is less than an iteration and the closing work."""
        return saved.get('closed', False) and self.seconds <= saved.get('seconds', 0.0)


def warn_if_too_short(budget, micro_step_s, eval_iters, grad_accum):
    """At the loop's start of a budgeted run: one line when what is left cannot hold one iteration and one
    evaluation at the pace autotune.py measured (micro_step_s seconds per micro-step; None
    where nothing was measured, and nothing is known yet). The run then overruns its budget."""
    if not micro_step_s:
        return
    iteration = micro_step_s * grad_accum
    need = iteration + evaluation_s(iteration, 2 * eval_iters, grad_accum)
    if budget.left() < need:
        warn_once(f"time_budget={budget.seconds:g}s leaves {budget.left():.1f}s, less than one iteration and "
                  f"one evaluation (about {need:.1f}s at the measured pace): the run will take longer than "
                  f"its budget; give a larger --time_budget, or a smaller --eval_iters or model")


def start_budget(c, ckpt, t0=None):
    """The run's TimeBudget (None without time_budget, and for eval_only). A resumed run goes on
    with its clock and schedule; a budget already spent is refused before anything is built."""
    if not c.time_budget or c.eval_only:
        return None
    saved = (ckpt or {}).get('time') or {}
    budget = TimeBudget(c.time_budget, t0, saved.get('spent', 0.0), saved.get('start'))
    if budget.left() <= budget.reserve(c.eval_iters, 1) or budget.ended_run(saved):
        raise UserError(f"the time budget is spent: {c.out_dir} has used {budget.spent():.0f}s of "
                        f"time_budget={c.time_budget:g}s; continue with a larger one, e.g. "
                        f"--time_budget={2 * c.time_budget:g}")
    return budget
