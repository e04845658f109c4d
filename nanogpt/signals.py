"""
Ctrl-C and SIGTERM during training (on Windows Ctrl-Break and closing the console window):
StopSignals records the first signal, so that train.py's loop stops at the next iteration boundary
and saves last.pt; abandonable runs work that a signal may cut short (an evaluation, the
dtype/compile measurement, compiling), and Stopped is how it is cut. Nothing here knows the run:
control.watched installs StopSignals for the whole of train().
"""

import _thread
import signal
import sys
import threading
import time

__all__ = ['Stopped', 'StopSignals', 'abandonable', 'stop_signals', 'CONSOLE_CLOSE_EVENTS', 'CONSOLE_CLOSE_WAIT']

# Windows delivers no SIGTERM (os.kill and the Task Manager end a process outright). What reaches a
# console program there is Ctrl-C (SIGINT), Ctrl-Break (SIGBREAK, the signal module's name for it
# exists on Windows only) and, when its console window is closed, a console control event that
# Windows hands to each handler registered with SetConsoleCtrlHandler, in a thread of its own; the
# process ends when the handler returns, and at the latest about 5 s after the window closed.
CONSOLE_CLOSE_EVENTS = (2, 5, 6)  # CTRL_CLOSE_EVENT, CTRL_LOGOFF_EVENT, CTRL_SHUTDOWN_EVENT
CONSOLE_CLOSE_WAIT = 60.0  # the longest a console handler waits for the save; Windows decides sooner


def stop_signals():
    """The signals that stop a run cleanly on this system: SIGINT and SIGTERM, and SIGBREAK where
    the signal module has it (Windows)."""
    return [signal.SIGINT, signal.SIGTERM] + ([signal.SIGBREAK] if hasattr(signal, 'SIGBREAK') else [])


class Stopped(BaseException):
    """A stop signal abandoned the work under way (an evaluation, the dtype/compile measurement,
    compiling). A BaseException, like KeyboardInterrupt, so that no `except Exception` (such as
    the compile fallback's) takes it for a failure."""


class StopSignals:
    """Ctrl-C and SIGTERM (schedulers, torchrun), Ctrl-Break and a closed console window on
    Windows, stop the loop at the next iteration boundary,
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
        self.console_routine = None  # the console control handler, while Windows holds it
        self.ended = threading.Event()  # set when the stopped work (and its save) is over

    def handle(self, signum, frame):
        if self.received is None:
            self.received, self.at = signum, time.monotonic()
            if self.abandon:
                raise Stopped(signum)
        elif not (self.torchrun and time.monotonic() - self.at < 1.0):
            # under torchrun a terminal's Ctrl-C reaches every rank and torchrun forwards it again:
            # a repeat within a second is that echo, not a request to abort the save
            raise KeyboardInterrupt

    def console_event(self, event):
        """A console control event (Windows calls this in a thread of its own): a closed window
        stops the run as Ctrl-Break does, in the main thread, and Windows is held off until the
        run has saved, since the process ends as soon as this returns. Other events (Ctrl-C,
        Ctrl-Break) are left to Python's own handling, which turns them into signals."""
        if event not in CONSOLE_CLOSE_EVENTS:
            return False
        _thread.interrupt_main(signal.SIGBREAK)  # as if the signal had arrived: handle() runs in the main thread
        self.ended.wait(CONSOLE_CLOSE_WAIT)
        return True

    def _watch_console(self):
        """Windows only: have console_event called when the console window closes."""
        import ctypes
        from ctypes import wintypes
        routine = ctypes.WINFUNCTYPE(wintypes.BOOL, wintypes.DWORD)(self.console_event)
        if ctypes.windll.kernel32.SetConsoleCtrlHandler(routine, True):
            self.console_routine = routine  # kept alive: Windows calls it until it is removed

    def __enter__(self):
        if threading.current_thread() is threading.main_thread():  # the only thread that may set handlers
            for s in stop_signals():
                self.old_handlers[s] = signal.signal(s, self.handle)
            if sys.platform == 'win32':
                self._watch_console()
        self.outer, StopSignals.current = StopSignals.current, self
        return self

    def __exit__(self, *exc):
        for s, h in self.old_handlers.items():
            signal.signal(s, h)
        if self.console_routine is not None:
            import ctypes
            ctypes.windll.kernel32.SetConsoleCtrlHandler(self.console_routine, False)
            self.console_routine = None
        StopSignals.current = self.outer
        self.ended.set()


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
