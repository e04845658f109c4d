"""
Ctrl-C and SIGTERM during training: StopSignals records the first signal, so that train.py's loop
stops at the next iteration boundary and saves last.pt; abandonable runs work that a signal may
cut short (an evaluation, the dtype/compile measurement, compiling), and Stopped is how it is cut.
Nothing here knows the run: control.watched installs StopSignals for the whole of train().
"""

import signal
import threading
import time


class Stopped(BaseException):
    """A stop signal abandoned the work under way (an evaluation, the dtype/compile measurement,
    compiling). A BaseException, like KeyboardInterrupt, so that no `except Exception` (such as
    the compile fallback's) takes it for a failure."""


class StopSignals:
    """Ctrl-C and SIGTERM (schedulers, torchrun) stop the loop at the next iteration boundary,
    which saves the training state to last.pt; a second signal interrupts (KeyboardInterrupt)
    as soon as the running operation returns to Python. Inside abandonable() the first signal
    also ends the work under way at once (raises Stopped), for work that changes no training
    state and would make the signal wait minutes. `torchrun`: this process is one of torchrun's.
    `received`: the first signal's number, None until one arrives. `current`: the instance whose
    handlers are installed."""

    current = None

    def __init__(self, torchrun):
        self.torchrun, self.received, self.at, self.old_handlers = torchrun, None, None, {}
        self.abandon = False

    def handle(self, signum, frame):
        if self.received is None:
            self.received, self.at = signum, time.monotonic()
            if self.abandon:
                raise Stopped(signum)
        elif not (self.torchrun and time.monotonic() - self.at < 1.0):
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
    (the processes must stop at the same point, which control.StopOrClose agrees on)."""
    signals = StopSignals.current
    if signals is None or signals.torchrun:
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
