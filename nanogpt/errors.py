"""
Command-line errors and output: UserError for a mistake in the user's input, run_cli that reports
it as one line (exit code 2) instead of a traceback, warn_once for warnings that should appear
once; and the output streams every command sets up through run_cli, so that printing never loses
work: characters the console cannot show are replaced (a cp1252 console, a pipe on Windows), and
a reader that goes away (`python sample.py | head -3`) ends the command quietly, as Unix tools
end, or, for a training run, leaves it training and saving with its output going nowhere.
"""

import errno
import os
import signal
import sys

EXIT_READER_GONE = 128 + getattr(signal, 'SIGPIPE', 13)  # 141: what a shell reports for a tool ended by SIGPIPE


class UserError(Exception):
    """A mistake in the user's input: reported as one line and exit code 2, never a traceback."""


def run_cli(main, argv=None, keep_going_without_reader=False, interrupted="interrupted"):
    """Run main(argv) the way a command should end: user errors as `error: ...` on stderr (exit 2),
    Ctrl-C as `interrupted` (exit 130), output whose reader went away as nothing (exit 141). With
    keep_going_without_reader (train.py) a closed output is not an ending: the run goes on and
    its lines go to os.devnull (setup_output)."""
    restore = setup_output(keep_going_without_reader)
    try:
        return main(argv)
    except UserError as e:
        print(f"error: {e}", file=sys.stderr, flush=True)
        sys.exit(2)
    except KeyboardInterrupt:
        print(interrupted, file=sys.stderr)
        sys.exit(130)
    except OSError as e:
        if not reader_gone(e):
            raise
        for stream in (sys.stdout, sys.stderr):
            _to_devnull(stream)  # so that the flush at exit has nowhere to fail
        sys.exit(EXIT_READER_GONE)
    finally:
        restore()


def reader_gone(e):
    """Whether the OSError `e` says that the reader of a pipe went away (Python's docs, "Note on
    SIGPIPE"): BrokenPipeError, or on Windows EINVAL, which a write to a closed pipe raises there."""
    return isinstance(e, BrokenPipeError) or (os.name == 'nt' and e.errno == errno.EINVAL)


def setup_output(keep_going_without_reader=False):
    """Make printing safe for this command: stdout replaces the characters its encoding cannot
    show ('?'), stderr writes them as \\u escapes; with keep_going_without_reader both streams
    outlive their reader (_KeepWriting). Returns the function that puts the streams back."""
    for stream, errors in ((sys.stdout, 'replace'), (sys.stderr, 'backslashreplace')):
        try:
            stream.reconfigure(errors=errors)
        except (AttributeError, ValueError, OSError):  # not a TextIOWrapper (a test's capture, a wrapper)
            pass
    if not keep_going_without_reader:
        return lambda: None
    saved = sys.stdout, sys.stderr
    sys.stdout, sys.stderr = _KeepWriting(sys.stdout), _KeepWriting(sys.stderr)

    def restore():
        if isinstance(sys.stdout, _KeepWriting):
            sys.stdout = saved[0]
        if isinstance(sys.stderr, _KeepWriting):
            sys.stderr = saved[1]
    return restore


def _to_devnull(stream):
    """Point the file descriptor under `stream` at os.devnull: what it still buffers, and every
    later line, is then written to nowhere instead of failing."""
    try:
        fd = stream.fileno()
    except (AttributeError, OSError, ValueError):
        return
    devnull = os.open(os.devnull, os.O_WRONLY)
    try:
        os.dup2(devnull, fd)
    finally:
        os.close(devnull)


class _KeepWriting:
    """A stream whose reader may go away: the first write or flush that finds it gone points the
    stream at os.devnull and the program goes on (a training run keeps training and saving)."""

    def __init__(self, stream):
        self.stream = stream

    def _gone(self):
        _to_devnull(self.stream)
        try:
            self.stream.flush()  # what the stream still holds now goes to os.devnull
        except (OSError, ValueError):
            pass

    def write(self, s):
        try:
            return self.stream.write(s)
        except OSError as e:
            if not reader_gone(e):
                raise
            self._gone()
            return len(s)

    def flush(self):
        try:
            self.stream.flush()
        except OSError as e:
            if not reader_gone(e):
                raise
            self._gone()

    def __getattr__(self, name):  # fileno, isatty, encoding, ...
        return getattr(self.stream, name)


_warned = set()


def warn_once(msg):
    if msg not in _warned:
        _warned.add(msg)
        print(f"warning: {msg}", file=sys.stderr, flush=True)
