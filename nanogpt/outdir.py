"""
The out_dir a training run writes to: made, and found writable, before anything is built
(check_out_dir), and held by one training run at a time, so that two runs never overwrite each
other's checkpoints and metrics (out_dir/train.lock, release_out_dir). Reading (sample.py,
eval_only) takes no lock.
"""

import json
import os
import socket
import time

from filelock import FileLock, Timeout

from .errors import UserError, warn_once

__all__ = ['LOCK_NAME', 'HOLDER_NAME', 'check_out_dir', 'release_out_dir']

# The lock is the operating system's own (flock on Linux and macOS, LockFileEx on Windows, through
# the filelock package torch itself installs): the kernel drops it when the process ends, however it
# ends, so a killed run leaves nothing that binds the next one. The lock file is opened, truncated
# and on Windows deleted by filelock, and on Windows no other process may read a locked byte, so who
# holds it (pid, host, start time, for the one-line message) lives in a file of its own beside it,
# written once the lock is held and deleted before it is released: found when the lock is taken, it
# was left by a run that did not end cleanly. The lock file itself stays, empty, on Linux and macOS
# (filelock deletes it on Windows): deleted while another run was opening it, two runs could each
# hold a lock on a different file.
LOCK_NAME = 'train.lock'
HOLDER_NAME = 'train.lock.json'
_held = {}  # real path of a lock this process holds -> its FileLock (None where locks do not work)


def check_out_dir(out_dir, lock=True):
    """Make out_dir, and find out now, not at the first checkpoint, that it cannot be written;
    with lock=True also hold out_dir/train.lock until release_out_dir(), or stop with one line
    naming the live run that holds it."""
    try:
        os.makedirs(out_dir, exist_ok=True)
        probe = os.path.join(out_dir, f'.write_test{os.getpid()}')
        open(probe, 'w').close()
        os.remove(probe)
    except OSError as e:
        raise UserError(f"cannot write to out_dir {out_dir!r}: {e.strerror}; choose another --out_dir")
    if lock:
        _lock_out_dir(out_dir)


def _read_holder(path):
    """'pid 123 on host, started 2026-01-02 03:04:05' from a holder file; '' where there is none;
    a file being written, or damaged, is a process that is starting up."""
    try:
        with open(path) as f:
            text = f.read()
    except OSError:
        return ''
    try:
        h = json.loads(text)
        return f"pid {h['pid']} on {h['host']}, started {h['started']}"
    except (ValueError, KeyError, TypeError):
        return "a process that is starting up"


def _lock_out_dir(out_dir):
    path = os.path.realpath(os.path.join(out_dir, LOCK_NAME))
    if path in _held:
        return
    holder = os.path.join(os.path.dirname(path), HOLDER_NAME)
    lock = FileLock(path)
    try:
        lock.acquire(timeout=0)
    except Timeout:
        raise UserError(f"{out_dir} is in use by another training run ({_read_holder(holder)}): "
                        f"wait for it to end or stop it (Ctrl-C saves its last.pt), or use another "
                        f"--out_dir; sampling and --eval_only=True may read it meanwhile") from None
    except NotImplementedError:  # older filelock releases, on a filesystem without flock (some network mounts)
        warn_once(f"cannot lock {path}: the filesystem has no file locks, so nothing stops a second "
                  f"training run from writing into {out_dir} meanwhile")
        lock = None
    left = _read_holder(holder)
    if left:
        print(f"note: {os.path.join(out_dir, LOCK_NAME)} was left by a run that no longer runs ({left}): taking it over")
    with open(holder, 'w') as f:
        f.write(json.dumps({'pid': os.getpid(), 'host': socket.gethostname(),
                            'started': time.strftime('%Y-%m-%d %H:%M:%S')}) + '\n')
    _held[path] = lock


def release_out_dir():
    """Give up every out_dir lock this process holds (train.main calls this when a run ends)."""
    for path, lock in list(_held.items()):
        try:
            os.remove(os.path.join(os.path.dirname(path), HOLDER_NAME))  # while still held: see above
        except OSError:
            pass
        if lock is not None:
            lock.release()
        del _held[path]
