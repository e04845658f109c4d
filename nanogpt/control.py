"""
What train.py's loop calls at a few named points: RunControl, a small facade whose methods are
before_iteration, eval_progress, evaluated, save, iteration_done and summary. Each job behind
it is a unit of its own:

    StopOrClose          stop after a signal; close when the time budget ends; torchrun's
                         processes take the same decision (budget.py: the budget itself)
    Checkpoints          the checkpoint files a run writes, the last good one, and the one-line
                         errors that name it (a diverged run, out of memory)
    RunRecord            the losses and evaluations train() returns, and the closing summary
    AddedEvaluation      the batch stream put back after the evaluation a run adds at its end
    ClosingEvaluation    a budgeted run's closing evaluation, cut short when the budget's end
                         comes during it
    watch.EvalSample     the sample printed after each evaluation (sample_every_eval)
    watch.LossPlot       out_dir/loss.png, drawn when the run ends
    progress.RunEstimate what the run will cost; progress.LoopPhases what the heartbeat says
    metrics.Metrics      the console lines and metrics.jsonl

watched() wraps train() so that stop signals (signals.py) and the heartbeat (progress.py) hold
from its first line to its last.
"""

import functools
import math
import os
import time

import torch
import torch.distributed as dist

from . import checkpoint, distributed, memory, progress
from .budget import warn_if_too_short
from .watch import EvalSample, LossPlot
from .errors import UserError
from .shell import command
from .metrics import Metrics
from .signals import StopSignals

__all__ = ['watched', 'RunControl', 'StopOrClose', 'Checkpoints', 'RunRecord', 'AddedEvaluation',
           'ClosingEvaluation']


def watched(train):
    """train.py's train() with its stop signals handled and a heartbeat printing what it does
    during any silence (nanogpt/progress.py), from its first line to its last."""
    @functools.wraps(train)
    def watched_train(*args, **kwargs):
        with StopSignals(torchrun=distributed.under_torchrun()), progress.Heartbeat():
            return train(*args, **kwargs)
    return watched_train


class StopOrClose:
    """Before each iteration: stop after a signal; close (evaluate, save, stop) at once with
    eval_only, or with a time budget when the next iteration and the closing work would not fit;
    and place the learning-rate
    schedule (`progress`, budget.TimeBudget.progress). Under torchrun every process must decide
    alike: any process's signal stops them all, rank 0's clock closes the run and places the
    schedule. Without a budget the processes agree at log_interval boundaries only, so that a
    CUDA run pays no host sync for this at every iteration."""

    def __init__(self, c, run, budget, signals):
        self.c, self.run, self.budget, self.signals = c, run, budget, signals
        self.progress = 0.0

    def __call__(self, iter_num, eval_due):
        """(stop, close) before iteration iter_num; `eval_due`: an evaluation falls due there."""
        c, run, budget = self.c, self.run, self.budget
        closing = c.eval_only or budget is not None and (iter_num >= c.max_iters or budget.must_close(
            eval_due, c.eval_iters, run.grad_accum))
        self.progress = budget.progress(c.eval_iters, run.grad_accum) if budget else 0.0
        stop = self.signals.received is not None
        if run.torchrun and (budget is not None or iter_num % c.log_interval == 0):
            flag = torch.tensor([float(stop), float(closing and run.master), self.progress if run.master else 0.0],
                                dtype=torch.float64, device=run.device)
            dist.all_reduce(flag)
            stop, closing, self.progress = flag.tolist()
            stop, closing = stop > 0, closing > 0
        elif run.torchrun:
            stop = False
        return stop, closing

    def schedule_iter(self, iter_num):
        """The iteration the learning-rate schedule stands at: iter_num, or with a time budget
        progress * lr_decay_iters (a fraction)."""
        return self.progress * self.c.lr_decay_iters if self.budget else iter_num


class Checkpoints:
    """The checkpoint files of train.py's run: each save (checkpoint.write, by rank 0, after the
    random streams of all processes are gathered), the newest good one (this run's, or the one it
    resumed from), and the one-line errors that say what a failure leaves: a diverged run
    (the command that continues at half the learning rate), and out of memory."""

    def __init__(self, c, run, budget, memory_plan):
        self.c, self.run, self.budget, self.memory_plan = c, run, budget, memory_plan
        self.saved = {}  # checkpoint name -> iteration, of those this run wrote
        self.last_good = None  # (path, iteration) of the newest checkpoint: this run's, or the one resumed

    def resumed(self, iter_num):
        """A resumed run starts at iter_num from the newer of last.pt and ckpt.pt (last.pt exists
        only while it is the newer)."""
        name = 'last.pt' if os.path.exists(os.path.join(self.c.out_dir, 'last.pt')) else 'ckpt.pt'
        self.last_good = (os.path.join(self.c.out_dir, name), iter_num)

    def save(self, name, state):
        """Write the training state `state` to out_dir/<name> (every process calls this at the
        same points, for the collectives)."""
        if self.budget is not None:
            state['time'] = self.budget.state()  # a resumed budgeted run continues its clock and schedule
        t0 = time.time()
        distributed.gather_random_states(state, self.run)
        if self.run.master:
            try:
                checkpoint.write(state, self.c.out_dir, name)
            except checkpoint.NonFiniteWeights as e:
                raise self.diverged(f"the weights are not finite at iter {e.iter_num} ({e.bad})",
                                    f"{name} was not written; ") from None
        self.saved[name] = state['iter_num']
        self.last_good = (os.path.join(self.c.out_dir, name), state['iter_num'])
        if self.budget is not None and self.run.master:
            self.budget.save_s = time.time() - t0

    def untouched(self):
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
            fix = (f"{self.untouched()}; resume from it with a lower learning rate: "
                   + command('python', 'train.py', '--init_from=resume', f'--out_dir={c.out_dir}', *lower.split()))
        if self.run.dtype != 'float32':
            fix += " (or --dtype=float32)"
        if self.run.device == 'mps':  # pytorch/pytorch#107294, #178697 (docs/platforms.md)
            fix += ("; on MPS the GPU's kernels can be the cause too: NaNs and wrong results are reported "
                    "on Intel Macs with AMD GPUs, so try the same command with --device=cpu")
        return UserError(f"{what}: training diverged; {unsaved}{fix}")

    def out_of_memory(self, exc, iter_num):
        """The one-line UserError for an out-of-memory `exc` in the loop (None for any other):
        nothing is saved then, so every checkpoint stays as it was."""
        when = f" at iteration {iter_num}" if iter_num is not None else ''
        return memory.out_of_memory_error(exc, self.memory_plan, when, self.untouched())


class RunRecord:
    """What train() returns: the loss of each iteration whose loss was read and the losses of
    each evaluation, with where the run started and how it ended."""

    def __init__(self, config):
        self.config = config
        self.start_iter = None  # the first iteration this process ran (or evaluated)
        self.losses, self.evals = {}, {}  # iteration -> loss, and -> (train, val)

    def untrained(self, best_val_loss):
        """Whether best_val_loss is the evaluation of iteration 0, before any training."""
        return self.evals.get(0, (None, None))[1] == best_val_loss

    def result(self, iter_num, best_val_loss, interrupted):
        return {'iter_num': iter_num, 'best_val_loss': best_val_loss, 'losses': self.losses,
                'evals': self.evals, 'interrupted': interrupted, 'config': self.config}


class AddedEvaluation:
    """The evaluation that a run without a time budget adds at its last iteration (when that is
    not a multiple of eval_interval) draws its batches from the training batches' stream: the
    stream is put back after it, so that every iteration's loss stays what it would be without it."""

    def __init__(self, c, budget):
        self.c, self.budget = c, budget
        self.cpu_state = None

    def before(self, iter_num):
        c = self.c
        added = (self.budget is None and iter_num >= c.max_iters and iter_num % c.eval_interval != 0
                 and not c.eval_only)
        self.cpu_state = torch.get_rng_state() if added else None

    def after(self):
        if self.cpu_state is not None:
            torch.set_rng_state(self.cpu_state)
            self.cpu_state = None


class ClosingEvaluation:
    """A budgeted run's closing evaluation when the budget's end comes during it: the machine
    slowed down after the closing reserve was last measured, so the evaluation would run past the
    budget. After each forward it asks the budget how many more fit (_forwards_that_fit)
    and, when fewer than it has left, ends its splits early: the train split keeps half of all
    that fit, the val split the rest, each at least one batch. The losses are the means over the
    batches done; the step line keeps its format, and note() is the line after it that says over
    how many. Under torchrun process 0's clock decides for all (one all_reduce per forward, in
    this evaluation only)."""

    def __init__(self, c, run, budget):
        self.c, self.run, self.budget = c, run, budget
        self.active, self.began, self.kept = False, None, {}

    def start(self, closing):
        """An evaluation may begin: the closing one (closing=True) watches the budget."""
        self.active = closing and self.budget is not None
        self.began, self.kept = (self.budget.clock() if self.active else None), {}

    def ends_split(self, split, k):
        """After forward k (from 0) of `split`: whether the split ends there."""
        if not self.active:
            return False
        n = self.c.eval_iters // self.run.eval_batches  # forwards per split
        stop = False
        if self.run.master and k + 1 < n:
            done = k + 1 + (self.kept.get('train', n) if split == 'val' else 0)
            left = n - (k + 1) + (n if split == 'train' else 0)
            fit = self._forwards_that_fit(self.budget.clock() - self.began, done, 2 * n)
            if fit < left:
                stop = k + 1 >= max(1, (done + fit) // 2) if split == 'train' else fit < 1
        if self.run.torchrun:
            flag = torch.tensor([float(stop)], device=self.run.device)
            dist.all_reduce(flag)
            stop = flag.item() > 0
        if stop:
            self.kept[split] = k + 1
        return stop

    def _forwards_that_fit(self, elapsed, done, total):
        """During the closing evaluation, after `done` of its `total` forwards (both splits) took
        `elapsed` seconds: how many more fit before the time the rest of the closing work needs
        (TimeBudget.after_eval_s), at this evaluation's own pace. A machine that slowed down during the
        evaluation shows it there first, so the save and the rest are scaled by this evaluation's
        pace against the last measured one's, where that is slower than the iterations say."""
        budget = self.budget
        pace = elapsed / done
        slowdown = budget.slowdown()
        if budget.eval_s:
            slowdown = max(slowdown, pace / (budget.eval_s / total))
        return max(0, int((budget.left() - budget.after_eval_s(slowdown)) / pace))

    def note(self):
        """The line after a cut evaluation's step line; None when it ran in full."""
        if not self.kept:
            return None
        n, eb = self.c.eval_iters // self.run.eval_batches, self.run.eval_batches
        over = ', '.join(f"{split} loss over {self.kept.get(split, n) * eb} of {n * eb} batches"
                         for split in ('train', 'val'))
        return f"(the time budget ended during this evaluation: {over}; no sample)"


class RunControl:
    """train.py's loop talks to this at a few named points. `c`: the settings; `run`: the
    settings.Run; `model`: the unwrapped GPT (for MFU); `config`: what checkpoints store;
    `budget`: a budget.TimeBudget or None; `memory_plan`: memory.check_fits' MemoryPlan. A context manager: inside it metrics.jsonl is open, and
    an out-of-memory error leaves as one line. The stop signals are those watched() installed."""

    def __init__(self, c, run, model, config, budget, memory_plan):
        self.c, self.run, self.budget = c, run, budget
        if budget is not None and run.master:
            warn_if_too_short(budget, run.micro_step_s, c.eval_iters, run.grad_accum)  # a budget too short to keep
        self.signals = StopSignals.current
        self.metrics = Metrics(c, run, config, model, budget)
        self.stop_or_close = StopOrClose(c, run, budget, self.signals)
        self.checkpoints = Checkpoints(c, run, budget, memory_plan)
        self.record = RunRecord(config)
        self.added_eval = AddedEvaluation(c, budget)
        self.closing_eval = ClosingEvaluation(c, run, budget)
        self.sample = EvalSample(c, run, model, self.metrics)
        self.loss_plot = LossPlot(c, run)
        if budget is not None:  # the closing work holds these too
            budget.sample_s = EvalSample.GUESS_S if self.sample.on else 0.0
            budget.end_s = LossPlot.GUESS_S if self.loss_plot.drawable else 0.0
        self.estimate = progress.RunEstimate(c, run, active=budget is None and run.master and not c.eval_only)
        self.phases = progress.LoopPhases(compiling=run.compile)
        self.iter_num = None  # the iteration under way
        self.local_iter_num = 0  # iterations this process has run
        self.work_began = None  # when the current iteration's own work began (after any evaluation and save)
        self.last_iter_end = None  # when the last iteration ended (or the loop began)

    def __enter__(self):
        self.last_iter_end = self.work_began = self.metrics.start()
        return self

    def __exit__(self, exc_type, exc, tb):
        self.metrics.close()
        oom = self.checkpoints.out_of_memory(exc, self.iter_num) if exc else None
        if oom is not None:
            raise oom from None

    def before_iteration(self, iter_num, eval_due):
        """(stop, close) before iteration iter_num (StopOrClose)."""
        if self.record.start_iter is None:
            self.record.start_iter = iter_num
            if self.c.init_from == 'resume':
                self.checkpoints.resumed(iter_num)
        self.iter_num = iter_num
        self.work_began = time.time()
        self.phases.training(iter_num, self.local_iter_num)
        self.added_eval.before(iter_num)
        stop, closing = self.stop_or_close(iter_num, eval_due)
        self.closing_eval.start(closing)
        return stop, closing

    def schedule_iter(self, iter_num):
        return self.stop_or_close.schedule_iter(iter_num)

    def stopped(self, iter_num):
        print(f"stopped by signal at iter {iter_num}: training state saved to "
              f"{os.path.join(self.c.out_dir, 'last.pt')}; continue with "
              + command('python', 'train.py', '--init_from=resume', f'--out_dir={self.c.out_dir}'))

    def eval_progress(self, split, k):
        """Called after each evaluation forward (k counts them, from 0, in each split): the
        heartbeat says where the evaluation stands, and the estimate takes its time. Returns
        True where the split ends there, with the batches done (ClosingEvaluation)."""
        first, n, eb = k == 0 and split == 'train', self.c.eval_iters // self.run.eval_batches, self.run.eval_batches
        self.estimate.forward_done(time.time(), first, self.work_began, self.iter_num, self.local_iter_num)
        self.phases.evaluating(self.iter_num, split, (k + 1) * eb, n * eb, first)
        return self.closing_eval.ends_split(split, k)

    def evaluated(self, iter_num, losses, lr):
        """An evaluation's losses {'train': ..., 'val': ...}: printed and recorded, with the
        sample after it (EvalSample); a non-finite validation loss ends the run with one line."""
        eval_s = time.time() - self.work_began
        if self.budget is not None:
            self.budget.eval_s = eval_s
        self.added_eval.after()
        self.metrics.eval(iter_num, losses, lr)
        self.record.evals[iter_num] = (losses['train'], losses['val'])
        if not math.isfinite(losses['val']):
            raise self.checkpoints.diverged(f"validation loss is {losses['val']} at iter {iter_num}")
        cut = self.closing_eval.note()
        if cut is not None:
            print(cut)
        sample_s = self.sample(iter_num) if cut is None else 0.0
        if self.budget is not None and sample_s:
            self.budget.sample_s = sample_s
        self.estimate.evaluated(eval_s + sample_s, self.iter_num, self.local_iter_num)
        self.work_began = time.time()

    def save(self, name, state):
        """Write the training state `state` to out_dir/<name> (Checkpoints.save). An eval_only
        run writes nothing (it holds no lock on out_dir)."""
        if self.c.eval_only:
            return
        self.phases.writing(os.path.join(self.c.out_dir, name))
        self.checkpoints.save(name, state)
        self.work_began = time.time()

    def iteration_done(self, iter_num, loss, lr, grad_norm):
        """One iteration ended; `loss` is its last micro-step's loss divided by grad_accum,
        `grad_norm` the gradients' norm before clipping (tensors). The loss is read (a host sync)
        on the CPU at every iteration, where it costs nothing; on a GPU (CUDA, MPS), whose queue
        it would drain every step, at log_interval; the norm when it is logged."""
        c, run = self.c, self.run
        t1 = time.time()
        dt, self.last_iter_end = t1 - self.last_iter_end, t1
        if self.budget is not None:
            if self.local_iter_num == 0:
                self.budget.loop_started(self.work_began)
            self.budget.iter_done(t1 - self.work_began)  # the iteration alone, without an evaluation before it
        self.estimate.iteration_done(t1 - self.work_began, iter_num, self.local_iter_num, t1 - self.metrics.t_start)
        if run.device_type == 'cpu' or iter_num % c.log_interval == 0:
            lossf = loss.item() * run.grad_accum  # the last micro-step's loss
            if not math.isfinite(lossf):
                raise self.checkpoints.diverged(f"loss is {lossf} at iter {iter_num}")
            self.record.losses[iter_num] = lossf
            if iter_num % c.log_interval == 0 and run.master:
                # 'iter N: loss ...'
                self.metrics.iteration(iter_num, self.local_iter_num, lossf, lr, dt, grad_norm.item(),
                                       self.estimate.time_left(iter_num + 1))
        self.local_iter_num += 1

    def summary(self, iter_num, best_val_loss):
        """The run's summary dict (train.main returns it); prints the closing lines of a run that
        ended by itself."""
        c, interrupted = self.c, self.signals.received
        if self.run.master and not c.eval_only and interrupted is None:
            best_file = os.path.join(c.out_dir, 'ckpt.pt')
            if 'ckpt.pt' not in self.checkpoints.saved and not (c.init_from == 'resume' and os.path.exists(best_file)):
                best_file = None  # no ckpt.pt holds best_val_loss: the summary says so
            self.metrics.summary(self.record.start_iter or 0, iter_num, best_val_loss, best_file,
                                 self.checkpoints.last_good, self.record.untrained(best_val_loss))
            self.loss_plot.draw()
        return self.record.result(iter_num, best_val_loss, interrupted)
