"""
What a training run reports: the evaluation lines ('step N: train loss ...') and iteration lines
('iter N: loss ..., mfu ...') it prints, the same numbers as one JSON line per event in
out_dir/metrics.jsonl (plot.py draws them; a resumed run appends), wandb with wandb_log, and the
closing summary (the best validation loss in bits per character or token, bits_per), and the
samples printed after evaluations (watch.EvalSample). Under torchrun rank 0 alone writes files (the other ranks print to /dev/null).
"""

import json
import math
import os
import time

from . import devices
from .data import dataset_meta
from .errors import warn_once
from .shell import command


def format_duration(s):
    s = max(0, int(round(s)))
    return f"{s // 3600}h{s % 3600 // 60:02d}m" if s >= 3600 else f"{s // 60}m{s % 60:02d}s"


def bits_per(loss, dataset):
    """A loss in nats as bits per token, the unit of the char-level literature: '2.096 bits per
    character' where the dataset's meta.pkl is a character vocabulary, else '... per token'."""
    meta = dataset_meta(dataset) or {}
    chars = 'stoi' in meta and max(map(len, meta['stoi']), default=1) == 1
    return f"{loss / math.log(2):.3f} bits per {'character' if chars else 'token'}"


def iterations(n):
    return f"{n} iteration{'' if n == 1 else 's'}"


class Metrics:
    """The run's report; close() closes metrics.jsonl. `run` is the settings.Run, `model` the
    unwrapped GPT (it estimates MFU), `budget` the TimeBudget or None."""

    def __init__(self, c, run, config, model, budget):
        master = run.master
        self.c, self.run, self.model, self.budget = c, run, model, budget
        self.tokens_per_iter = run.tokens_per_iter
        self.peak, src = devices.peak_flops(run.device, run.dtype, c.peak_flops)
        print(f"mfu is measured against {self.peak / 1e12:.3g} TFLOP/s ({src})")
        self.t_start, self.running_mfu = None, -1.0
        # a new run starts a new metrics file; a resumed run appends to it
        self.file = open(os.path.join(c.out_dir, 'metrics.jsonl'), 'a' if c.init_from == 'resume' else 'w') \
            if master else None
        self.wandb = None
        if c.wandb_log and master:
            try:
                import wandb
            except ImportError:
                # a warning, not an error: metrics.jsonl records every number wandb would get (plot.py
                # draws them), and config/train_gpt2.py, as the original's, turns wandb on
                warn_once("wandb_log=True but wandb is not installed: this run logs to metrics.jsonl "
                          "only (pip install wandb to log there too, or --wandb_log=False)")
            else:
                wandb.init(project=c.wandb_project, name=c.wandb_run_name, config=config)
                self.wandb = wandb

    def start(self):
        """Start the run's clock (elapsed times count from here); returns the time."""
        self.t_start = time.time()
        return self.t_start

    def write(self, **event):
        if self.file:
            self.file.write(json.dumps(event) + '\n')
            self.file.flush()  # one line per event, on disk before the next: a crash loses nothing

    def eval(self, iter_num, losses, lr):
        """An evaluation: losses {'train': ..., 'val': ...} at the learning rate lr."""
        elapsed = time.time() - self.t_start
        print(f"step {iter_num}: train loss {losses['train']:.4f}, val loss {losses['val']:.4f}, "
              f"elapsed {elapsed:.1f}s")
        self.write(event='eval', iter=iter_num, train_loss=losses['train'], val_loss=losses['val'],
                   lr=lr, elapsed=elapsed)
        if self.wandb:
            self.wandb.log({"iter": iter_num, "train/loss": losses['train'], "val/loss": losses['val'],
                            "lr": lr, "mfu": self.running_mfu * 100})

    def sample(self, iter_num, start, text, seconds):
        """A sample drawn after the evaluation at iter_num (watch.EvalSample): the prompt `start`
        and the `text` that followed it, printed under a header and framed line by line, so that no
        line of it reads as a console line."""
        print(f"  sample at step {iter_num}:")
        for line in (start + text).strip('\n').split('\n'):
            print(f"  | {line}")
        self.write(event='sample', iter=iter_num, start=start, text=text, time_ms=seconds * 1000)

    def iteration(self, iter_num, local_iter_num, lossf, lr, dt, grad_norm, time_left=None):
        """An iteration of dt seconds (the local_iter_num-th of this process) that ended with
        the loss lossf; grad_norm: the gradients' norm before clipping; time_left: seconds the
        rest of the run needs, its evaluations included (progress.RunEstimate.time_left), or None."""
        c, budget = self.c, self.budget
        if local_iter_num >= 5:  # the first iterations include compilation and warm-up
            mfu = self.model.estimate_mfu(c.batch_size * self.run.grad_accum, dt, self.peak)
            self.running_mfu = mfu if self.running_mfu == -1.0 else 0.9 * self.running_mfu + 0.1 * mfu
        tok_s = self.tokens_per_iter / dt
        if budget is not None:
            left = f", {format_duration(budget.left())} of budget left"
        else:  # not from a process's first iteration: it holds the first evaluation and any compiling
            left = f", eta {format_duration(time_left)}" if local_iter_num and time_left is not None else ''
        print(f"iter {iter_num}: loss {lossf:.4f}, time {dt * 1000:.2f}ms, mfu {self.running_mfu * 100:.2f}%, "
              f"grad norm {grad_norm:.4g}, {tok_s:,.0f} tok/s{left}")
        self.write(event='iter', iter=iter_num, loss=lossf, lr=lr, time_ms=dt * 1000,
                   mfu=self.running_mfu * 100, grad_norm=grad_norm, tok_s=tok_s, elapsed=time.time() - self.t_start)

    def summary(self, start_iter, iter_num, best_val_loss, best_file, last_good, untrained):
        """The closing lines of a run that ran to its end. best_file: the ckpt.pt that holds
        best_val_loss, or None; last_good: (path, iteration) of the newest checkpoint, or None;
        untrained: best_val_loss is the evaluation of iteration 0, before any training."""
        c, budget = self.c, self.budget
        best = f"best val loss {best_val_loss:.4f} ({bits_per(best_val_loss, c.dataset)})"
        if best_file is None:
            best += " (iteration 0's, the untrained model's: not saved)" if untrained else " (not saved)"
        if budget is not None and budget.closed:  # the budget ended the run, not max_iters
            print(f"done: {iterations(iter_num - start_iter)} fitted in the {format_duration(c.time_budget)} budget "
                  f"({format_duration(budget.spent())} used, {iter_num} in all), {best}")
        else:
            used = f" (max_iters reached, {format_duration(budget.spent())} of the {format_duration(c.time_budget)} " \
                   f"budget used)" if budget is not None else ""
            print(f"done: {iterations(iter_num)} in {format_duration(time.time() - self.t_start)}{used}, {best}")
        if best_file is not None:
            print(f"best model: {best_file}; sample from it with: {command('python', 'sample.py', f'--out_dir={c.out_dir}')}")
        elif last_good is not None:
            print(f"no best model: no evaluation improved on that loss, so ckpt.pt was not written; the "
                  f"training state is in {last_good[0]} (iteration {last_good[1]}): continue with a lower "
                  f"learning rate, e.g. " + command('python', 'train.py', '--init_from=resume', f'--out_dir={c.out_dir}',
                                                    f'--learning_rate={c.learning_rate / 2:g}'))
        else:
            longer = f"a larger --time_budget than {c.time_budget:g}" if budget is not None else "--max_iters=1 or more"
            print(f"nothing was saved: a run saves at its evaluations after iteration 0; give it {longer}")

    def close(self):
        if self.file:
            self.file.close()
