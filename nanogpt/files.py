"""
Putting a finished file in place, and deleting one, where another program may hold it open. On
Windows a file that another process has open (sample.py loading ckpt.pt, an antivirus or backup
scan, a search indexer) can be neither replaced nor deleted: os.replace and os.remove raise
PermissionError until that process lets go, usually within a moment. replace and remove retry for
a moment there, then raise HeldOpen, whose message names that cause rather than the disk.
"""

import errno
import os
import sys
import time

__all__ = ['HeldOpen', 'replace', 'remove', 'HELD_OPEN_TRIES', 'HELD_OPEN_WAIT']

HELD_OPEN_TRIES = 8  # attempts in all, HELD_OPEN_WAIT seconds apart: about 1.75 s of waiting
HELD_OPEN_WAIT = 0.25


class HeldOpen(PermissionError):
    """Another program kept `path` open (Windows) for as long as the retries waited."""

    def __init__(self, path):
        super().__init__(errno.EACCES, f"another program holds {path} open (sample.py or export_hf.py reading "
                                       f"it, an antivirus or backup scan, an editor)", path)


def _while_held_open(op, path, *args):
    """op(path, *args), retried while Windows reports the file in use. On POSIX an open file is
    never in the way, so a PermissionError there is the directory's permissions: raised at once."""
    for attempt in range(HELD_OPEN_TRIES):
        try:
            return op(path, *args)
        except PermissionError:
            if sys.platform != 'win32':
                raise
            if attempt == HELD_OPEN_TRIES - 1:
                raise HeldOpen(args[0] if args else path) from None
            time.sleep(HELD_OPEN_WAIT)


def replace(src, dst):
    """os.replace(src, dst) (atomic: readers see the old dst or the new one, whole), waiting a
    moment for a program that holds dst open on Windows."""
    _while_held_open(os.replace, src, dst)


def remove(path):
    """os.remove(path), waiting a moment for a program that holds it open on Windows."""
    _while_held_open(os.remove, path)
