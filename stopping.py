"""
When the training loop stops before max_iters: after Ctrl-C or SIGTERM (StopSignals, which lets
the loop save the training state first), or when a time budget has room for no more iterations
(the loop then closes: evaluates, saves and stops). Under torchrun every rank must stop, close and
set the learning rate alike; stop_close_progress makes them agree.
"""

import signal
import threading
import time

import torch
import torch.distributed as dist


class StopSignals:
    """Ctrl-C and SIGTERM (schedulers, torchrun) stop the loop at the next iteration boundary,
    which saves the training state to last.pt; a second signal interrupts at once. `received`:
    the first signal's number, None until one arrives."""

    def __init__(self, ddp):
        self.ddp, self.received, self.at, self.old_handlers = ddp, None, None, {}

    def handle(self, signum, frame):
        if self.received is None:
            self.received, self.at = signum, time.monotonic()
        elif not (self.ddp and time.monotonic() - self.at < 1.0):
            # under torchrun a terminal's Ctrl-C reaches every rank and torchrun forwards it again:
            # a repeat within a second is that echo, not a request to abort the save
            raise KeyboardInterrupt

    def __enter__(self):
        if threading.current_thread() is threading.main_thread():  # the only thread that may set handlers
            for s in (signal.SIGINT, signal.SIGTERM):
                self.old_handlers[s] = signal.signal(s, self.handle)
        return self

    def __exit__(self, *exc):
        for s, h in self.old_handlers.items():
            signal.signal(s, h)


def stop_close_progress(c, procs, stop, budget, iter_num, eval_due):
    """(stop, close, progress) before an iteration: stop after a signal (`stop`, the StopSignals);
    with a time budget, close (evaluate, save, stop) when the next iteration would not fit, and the
    schedule's progress (0 without a budget). `procs`: distributed.Procs."""
    closing = budget is not None and (iter_num >= c.max_iters or budget.must_close(
        eval_due, c.eval_iters, c.gradient_accumulation_steps))
    progress = budget.progress(c.eval_iters, c.gradient_accumulation_steps) if budget else 0.0
    if not procs.ddp:
        return stop.received is not None, closing, progress
    # every rank must stop, close and set the learning rate alike: rank 0's signal flag and clock
    # decide. Without a budget they agree at log_interval boundaries only, so a CUDA run does not
    # pay a host sync for this every iteration.
    if budget is None and iter_num % c.log_interval != 0:
        return False, closing, progress
    flag = torch.tensor([float(stop.received is not None), float(closing and procs.master),
                         progress if procs.master else 0.0], dtype=torch.float64, device=c.device)
    dist.all_reduce(flag)
    sig, close, prog = flag.tolist()
    return sig > 0, close > 0, prog
