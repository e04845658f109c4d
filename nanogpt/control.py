"""
Run control for train.py's loop: when it stops (a signal), when it closes (a time budget spent),
where the learning-rate schedule stands, and what it reports. RunControl is the loop's one
companion: train.py calls it at a few named points (check, evaluated, iteration_done, save) and
it does the bookkeeping there: timing for the budget, the console lines and metrics.jsonl (through
metrics.Metrics), agreement between torchrun processes, and the checkpoint files (through
checkpoint.write).

With time_budget = 0 (the default) the schedule follows the iteration count, as in nanoGPT. With a
budget in seconds it follows the fraction of the budget spent: the run is placed at "iteration"
progress * lr_decay_iters, so warmup takes warmup_iters / lr_decay_iters of the time and the
rate reaches min_lr as the last iteration ends, on a fast machine and on a slow one.
"""

import functools
import math
import os
import shlex
import signal
import threading
import time

import torch
import torch.distributed as dist

from . import checkpoint, memory, progress
from .errors import UserError, warn_once
from .metrics import Metrics, format_duration


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


class TimeBudget:
    """The wall-clock budget of a run, from the start of the process to its last checkpoint,
    setup, compilation, evaluations and saving included, summed over resumed runs.

    The training loop asks `must_close()` before each iteration: true when one more iteration,
    an evaluation that falls due and the closing evaluation and save would not all fit in what
    is left. `progress()` is the schedule's position: 0 at the first training iteration, 1 when
    the time left is only what the closing evaluation and save need.

    The closing work is computation like the iterations, and slows with them: when another
    process takes the cores, an evaluation measured before takes several times as long. So its
    reserve is the last measured evaluation and save, scaled by how much slower the recent
    iterations run than the ones just before that evaluation (`slowdown()`), never scaled down.
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
        eval_iters forward passes, each about a third of a micro-step)."""
        if self.eval_s is not None:
            return self.eval_s * self.slowdown()
        if self.iter_s is not None:
            return 1.5 * 2 * eval_iters * self.next_iter_s() / grad_accum / 3
        return 0.0

    def reserve(self, eval_iters, grad_accum):
        """Seconds the closing evaluation, the save and the exit need."""
        save = self.save_s if self.save_s is not None else self.save_guess_s
        return self.eval_estimate(eval_iters, grad_accum) + save * self.slowdown() + self.MARGIN * self.seconds

    def must_close(self, eval_due, eval_iters, grad_accum):
        need = self.next_iter_s() + self.reserve(eval_iters, grad_accum)
        if eval_due:  # an evaluation (and maybe a save) before that iteration
            need += self.eval_estimate(eval_iters, grad_accum) + (self.save_s or 0.0) * self.slowdown()
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


class Stopped(BaseException):
    """A stop signal abandoned the work under way (an evaluation, the dtype/compile measurement,
    compiling). A BaseException, like KeyboardInterrupt, so that no `except Exception` (such as
    the compile fallback's) takes it for a failure."""


class StopSignals:
    """Ctrl-C and SIGTERM (schedulers, torchrun) stop the loop at the next iteration boundary,
    which saves the training state to last.pt; a second signal interrupts (KeyboardInterrupt)
    as soon as the running operation returns to Python. Inside
    abandoning() the first signal also ends the work under way at once (raises Stopped), for work
    that changes no training state and would make the signal wait minutes: an evaluation, the
    dtype/compile measurement, compiling. `received`: the first signal's number, None until one
    arrives. `current`: the instance whose handlers are installed."""

    current = None

    def __init__(self, ddp):
        self.ddp, self.received, self.at, self.old_handlers = ddp, None, None, {}
        self.abandon = False

    def handle(self, signum, frame):
        if self.received is None:
            self.received, self.at = signum, time.monotonic()
            if self.abandon:
                raise Stopped(signum)
        elif not (self.ddp and time.monotonic() - self.at < 1.0):
            # under torchrun a terminal's Ctrl-C reaches every rank and torchrun forwards it again:
            # a repeat within a second is that echo, not a request to abort the save
            raise KeyboardInterrupt

    def __enter__(self):
        if threading.current_thread() is threading.main_thread():  # the only thread that may set handlers
            for s in (signal.SIGINT, signal.SIGTERM):
                self.old_handlers[s] = signal.signal(s, self.handle)
        self.outer, StopSignals.current = StopSignals.current, self
        return self

    def __exit__(self, *exc):
        for s, h in self.old_handlers.items():
            signal.signal(s, h)
        StopSignals.current = self.outer


def abandonable(fn, *args, **kwargs):
    """fn(*args, **kwargs), or None when a stop signal arrives before or during it (the signal
    stays received: the loop then saves last.pt and exits). Under torchrun the work runs to its end
    (the processes must stop at the same point: RunControl.check agrees on it)."""
    signals = StopSignals.current
    if signals is None or signals.ddp:
        return fn(*args, **kwargs)
    if signals.received is not None:
        return None
    signals.abandon = True
    try:
        return fn(*args, **kwargs)
    except Stopped:
        return None
    finally:
        signals.abandon = False


def watched(train):
    """train.py's train() with its stop signals handled and a heartbeat printing what it does
    during any silence (nanogpt/progress.py), from its first line to its last."""
    @functools.wraps(train)
    def watched_train(*args, **kwargs):
        with StopSignals(ddp=int(os.environ.get('WORLD_SIZE', '1')) > 1), progress.Heartbeat():
            return train(*args, **kwargs)
    return watched_train


def start_budget(c, ckpt, t0=None):
    """The run's TimeBudget (None without time_budget, and for eval_only). A resumed run goes on
    with its clock and schedule; a budget already spent is refused before anything is built."""
    if not c.time_budget or c.eval_only:
        return None
    saved = (ckpt or {}).get('time') or {}
    budget = TimeBudget(c.time_budget, t0, saved.get('spent', 0.0), saved.get('start'))
    if budget.left() <= budget.reserve(c.eval_iters, 1) or budget.spent_by(saved):
        raise UserError(f"the time budget is spent: {c.out_dir} has used {budget.spent():.0f}s of "
                        f"time_budget={c.time_budget:g}s; continue with a larger one, e.g. "
                        f"--time_budget={2 * c.time_budget:g}")
    return budget


class RunControl:
    """train.py's loop talks to this at a few named points. `c`: the settings; `run`: the
    settings.Run; `model`: the unwrapped GPT (for MFU); `config`: what checkpoints store;
    `budget`: a TimeBudget or None. A context manager: inside it Ctrl-C and SIGTERM stop the loop
    at the next check(), and metrics.jsonl is open."""

    def __init__(self, c, run, model, config, budget):
        self.c, self.run, self.budget = c, run, budget
        # the signals that watched() installed for the whole of train(), or this loop's own
        self.own_signals = StopSignals.current is None
        self.signals = StopSignals(run.ddp) if self.own_signals else StopSignals.current
        self.metrics = Metrics(c, run, config, model, budget)
        self.local_iters = 0  # iterations this process has run
        self.start_iter = None
        self.t_last = None  # when the last iteration ended (or the loop began)
        self.t_mark = None  # when the current iteration's own work began (after any evaluation and save)
        self.losses, self.evals = {}, {}  # iteration -> loss, and -> (train, val): the summary's record
        self.config = config
        self.iter_num = None  # the iteration under way
        self.saved = {}  # checkpoint name -> iteration, of those this run wrote
        self.last_good = None  # (path, iteration) of the newest checkpoint: this run's, or the one resumed
        self.kept_rng = None  # the batch stream's state, put back after the evaluation a run adds at its end
        self.eval_batch_s = []  # the first evaluation's forward times, until the estimate is printed
        self.t_prev = None
        self.training_phase = False  # the heartbeat says "training" (not evaluating or writing)
        self.last_eval_s = None  # seconds the last whole evaluation took
        # each iteration's own work (no evaluation or save): the time budget's record, or the estimate's
        self.iter_times = budget.iter_times if budget is not None else IterationTimes()
        self.estimated = None  # the estimate printed (seconds for the whole run), once printed
        self.refined = False

    def __enter__(self):
        if self.own_signals:
            self.signals.__enter__()
        self.t_last = self.t_mark = self.metrics.start()
        return self

    def __exit__(self, exc_type, exc, tb):
        if self.own_signals:
            self.signals.__exit__(exc_type, exc, tb)
        self.metrics.close()
        when = f" at iteration {self.iter_num}" if self.iter_num is not None else ''
        oom = memory.out_of_memory_error(exc, when, self.kept()) if exc else None
        if oom is not None:
            raise oom from None  # one line; nothing is saved, so every checkpoint stays as it was

    # ---- before an iteration ---------------------------------------------------------------

    def check(self, iter_num, eval_due):
        """(stop, close) before an iteration: stop after a signal; with a time budget, close
        (evaluate, save, stop) when the next iteration would not fit. Under torchrun every process
        must decide alike: rank 0's signal flag and clock decide."""
        c, run, budget = self.c, self.run, self.budget
        if self.start_iter is None:
            self.start_iter = iter_num
            if c.init_from == 'resume':  # last.pt exists only while it is newer than ckpt.pt
                name = 'last.pt' if os.path.exists(os.path.join(c.out_dir, 'last.pt')) else 'ckpt.pt'
                self.last_good = (os.path.join(c.out_dir, name), iter_num)
        self.iter_num = iter_num
        self.t_mark = time.time()
        # the heartbeat's clock runs from the first iteration after an evaluation or a save
        progress.set_phase(f"training: iter {iter_num}" + (
            ", compiling and warming up" if self.local_iters == 0 and self.run.compile else ''),
            restart=not self.training_phase)
        self.training_phase = True
        # the evaluation that a run without a time budget adds at its last iteration draws its
        # batches from the training batches' stream: evaluated() puts the stream back, so that
        # every iteration's loss stays what it would be without it
        added_eval = budget is None and iter_num >= c.max_iters and iter_num % c.eval_interval != 0 and not c.eval_only
        self.kept_rng = torch.get_rng_state() if added_eval else None
        closing = budget is not None and (iter_num >= c.max_iters or budget.must_close(
            eval_due, c.eval_iters, run.grad_accum))
        self.progress = budget.progress(c.eval_iters, run.grad_accum) if budget else 0.0
        stop = self.signals.received is not None
        if run.ddp and (budget is not None or iter_num % c.log_interval == 0):
            # without a budget the processes agree at log_interval boundaries only, so that a
            # CUDA run pays no host sync for this at every iteration
            flag = torch.tensor([float(stop), float(closing and run.master), self.progress if run.master else 0.0],
                                dtype=torch.float64, device=run.device)
            dist.all_reduce(flag)
            stop, closing, self.progress = flag.tolist()
            stop, closing = stop > 0, closing > 0
        elif run.ddp:
            stop = False
        return stop, closing

    def schedule_iter(self, iter_num):
        """The iteration the learning-rate schedule stands at: iter_num, or with a time budget
        progress * lr_decay_iters (a fraction)."""
        return self.progress * self.c.lr_decay_iters if self.budget else iter_num

    def stopped(self, iter_num):
        print(f"stopped by signal at iter {iter_num}: training state saved to "
              f"{os.path.join(self.c.out_dir, 'last.pt')}; continue with --init_from=resume")

    # ---- evaluation and checkpoints ----------------------------------------------------------

    def eval_progress(self, split, k):
        """Called after each evaluation forward (k counts them, from 0, in each split): the
        heartbeat says where the evaluation stands, and on the first evaluation the run's estimate
        is printed as soon as a forward's time is known."""
        now, first = time.time(), k == 0 and split == 'train'
        if self.estimated is None:
            if first:
                self.eval_batch_s = []
            self.eval_batch_s.append(now - (self.t_mark if first else self.t_prev))
        self.t_prev = now
        n = self.c.eval_iters // self.run.eval_batches
        self.training_phase = False
        progress.set_phase(f"evaluating at iter {self.iter_num}: {split} batch {(k + 1) * self.run.eval_batches} "
                           f"of {n * self.run.eval_batches}", restart=first)
        if self.estimated is None and len(self.eval_batch_s) >= 3:
            # the first forward holds one-off warm-up: the median of the others is the pace
            rest = sorted(self.eval_batch_s[1:])
            self.print_estimate(eval_s=rest[len(rest) // 2] * 2 * n)

    def evaluated(self, iter_num, losses, lr):
        """An evaluation's losses {'train': ..., 'val': ...}: printed and recorded; a non-finite
        validation loss ends the run with one line."""
        self.last_eval_s = time.time() - self.t_mark
        if self.budget is not None:
            self.budget.eval_s = self.last_eval_s
        if self.estimated is None:
            self.print_estimate(eval_s=self.last_eval_s)
        if self.kept_rng is not None:
            torch.set_rng_state(self.kept_rng)
            self.kept_rng = None
        self.metrics.eval(iter_num, losses, lr)
        self.evals[iter_num] = (losses['train'], losses['val'])
        if not math.isfinite(losses['val']):
            raise self.diverged(f"validation loss is {losses['val']} at iter {iter_num}")
        self.t_mark = time.time()

    def save(self, name, state):
        """Write the training state `state` to out_dir/<name> (rank 0; every process calls this
        at the same points, collectives included). See checkpoint.write. An eval_only run writes
        nothing (it holds no lock on out_dir)."""
        if self.c.eval_only:
            return
        if self.budget is not None:
            state['time'] = self.budget.state()  # a resumed budgeted run continues its clock and schedule
        t0 = time.time()
        progress.set_phase(f"writing {os.path.join(self.c.out_dir, name)}")
        self.training_phase = False
        try:
            checkpoint.write(state, self.c.out_dir, name, self.run)
        except checkpoint.NonFiniteWeights as e:
            raise self.diverged(f"the weights are not finite at iter {e.iter_num} ({e.bad})",
                                f"{name} was not written; ") from None
        self.saved[name] = state['iter_num']
        self.last_good = (os.path.join(self.c.out_dir, name), state['iter_num'])
        if self.budget is not None and self.run.master:
            self.budget.save_s = time.time() - t0
        self.t_mark = time.time()

    # ---- after an iteration ------------------------------------------------------------------

    def kept(self):
        """Which checkpoint a failure leaves for the run to continue from, in words."""
        if self.last_good is None:
            return "no checkpoint was saved"
        return f"the last checkpoint, {self.last_good[0]} (iteration {self.last_good[1]}), is untouched"

    def diverged(self, what, unsaved=''):
        """The one-line error for a run whose loss or weights went non-finite (`what`): the last
        good checkpoint, and the command that continues from it at half the learning rate."""
        c = self.c
        lower = f"--learning_rate={c.learning_rate / 2:g}" + (
            f" --muon_lr={c.muon_lr / 2:g}" if self.run.optimizer == 'muon' else '')
        if self.last_good is None:
            fix = f"no checkpoint was saved; start again with a lower learning rate, e.g. {lower}"
        else:
            fix = (f"{self.kept()}; resume from it with a lower learning rate: python train.py "
                   f"--init_from=resume --out_dir={shlex.quote(c.out_dir)} {lower}")
        if self.run.dtype != 'float32':
            fix += " (or --dtype=float32)"
        return UserError(f"{what}: training diverged; {unsaved}{fix}")

    def iteration_done(self, iter_num, loss, lr, grad_norm):
        """One iteration ended; `loss` is its last micro-step's loss divided by grad_accum,
        `grad_norm` the gradients' norm before clipping (tensors). The loss is read (a host sync)
        on the CPU at every iteration, on GPUs at log_interval; the norm when it is logged."""
        c, run = self.c, self.run
        t1 = time.time()
        dt, self.t_last = t1 - self.t_last, t1
        if self.budget is not None:
            if self.local_iters == 0:
                self.budget.loop_started(self.t_mark)
            self.budget.iter_done(t1 - self.t_mark)  # the iteration alone, without an evaluation before it
        else:
            self.iter_times.add(t1 - self.t_mark)
        if self.estimated is None and self.local_iters == 1:  # no evaluation came first (a resumed run)
            self.print_estimate(eval_s=None)
        elif not self.refined and len(self.iter_times) >= 10 and self.last_eval_s is not None:
            self.refine_estimate(iter_num)
        if run.device_type != 'cuda' or iter_num % c.log_interval == 0:
            lossf = loss.item() * run.grad_accum  # the last micro-step's loss
            if not math.isfinite(lossf):
                raise self.diverged(f"loss is {lossf} at iter {iter_num}")
            self.losses[iter_num] = lossf
            if iter_num % c.log_interval == 0 and run.master:
                # 'iter N: loss ...'
                self.metrics.iteration(iter_num, self.local_iters, lossf, lr, dt, grad_norm.item(),
                                       self.time_left(iter_num + 1))
        self.local_iters += 1

    # ---- what the run will cost -----------------------------------------------------------

    def time_left(self, iter_num):
        """Seconds from iteration iter_num to the end at the measured pace, the evaluations to
        come included (None with a time budget, which says that itself, or before a measurement)."""
        iter_s = self.iter_times.median()
        if self.budget is not None or iter_s is None or self.c.eval_only:
            return None
        eval_s = self.last_eval_s if self.last_eval_s is not None else 0.0
        return progress.estimate_s(iter_num, self.c.max_iters, self.c.eval_interval, iter_s, eval_s)

    def print_estimate(self, eval_s):
        """The run's cost, printed once (rank 0, without a time budget), from the best times known:
        iterations as autotune.py measured them (run.micro_step_s) or as run here, else three
        evaluation forwards per micro-step (forward and backward); on a CPU a run beyond half an
        hour adds what would fit."""
        c, run = self.c, self.run
        if self.budget is not None or c.eval_only or not run.master:
            self.estimated = 0.0
            return
        n_fwd = c.eval_iters // run.eval_batches * 2
        iter_s = self.iter_times.median()
        if iter_s is None and run.micro_step_s:
            iter_s = run.micro_step_s * run.grad_accum
        elif iter_s is None and eval_s:
            iter_s = 3 * eval_s / n_fwd / run.eval_batches * run.grad_accum
        if iter_s is None:
            return  # nothing measured yet
        if eval_s is None:
            eval_s = n_fwd * iter_s / run.grad_accum / 3 * run.eval_batches
        start = self.iter_num if self.iter_num is not None else 0
        if self.local_iters:  # printed after the first iteration: the estimate is of those left
            start += 1
        self.estimated = progress.estimate_s(start, c.max_iters, c.eval_interval, iter_s, eval_s)
        print(progress.estimate_line(start, c.max_iters, c.eval_interval, iter_s, eval_s))
        if run.device_type == 'cpu' and self.estimated > progress.LONG_ON_CPU_S:
            print(progress.advice_line(c, self.estimated))

    def refine_estimate(self, iter_num):
        """Once iterations and an evaluation have been timed here: the estimate again, when the
        measured times change it by more than a quarter."""
        self.refined = True
        left = self.time_left(iter_num + 1)
        if left is None or not self.estimated:
            return
        spent = time.time() - self.metrics.t_start
        if abs(spent + left - self.estimated) > 0.25 * self.estimated:
            line = progress.estimate_line(iter_num + 1, self.c.max_iters, self.c.eval_interval,
                                          self.iter_times.median(), self.last_eval_s, what='measured, the rest of this run')
            print(line)

    def summary(self, iter_num, best_val_loss):
        """The run's summary dict (train.main returns it); prints the closing lines of a run that
        ended by itself."""
        interrupted = self.signals.received
        if self.run.master and not self.c.eval_only and interrupted is None:
            best_file = os.path.join(self.c.out_dir, 'ckpt.pt')
            if 'ckpt.pt' not in self.saved and not (self.c.init_from == 'resume' and os.path.exists(best_file)):
                best_file = None  # no ckpt.pt holds best_val_loss: the summary says so
            untrained = self.evals.get(0, (None, None))[1] == best_val_loss
            self.metrics.summary(self.start_iter or 0, iter_num, best_val_loss, best_file, self.last_good, untrained)
        return {'iter_num': iter_num, 'best_val_loss': best_val_loss, 'losses': self.losses,
                'evals': self.evals, 'interrupted': interrupted, 'config': self.config}
