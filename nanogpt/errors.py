"""
Command-line errors: UserError for a mistake in the user's input, run_cli that reports it as one
line (exit code 2) instead of a traceback, and warn_once for warnings that should appear once.
"""

import sys


class UserError(Exception):
    """A mistake in the user's input: reported as one line and exit code 2, never a traceback."""


def run_cli(main, argv=None):
    """Run main(argv) the way a command should end: user errors as `error: ...` on stderr (exit 2),
    Ctrl-C as exit 130."""
    try:
        return main(argv)
    except UserError as e:
        print(f"error: {e}", file=sys.stderr, flush=True)
        sys.exit(2)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        sys.exit(130)


_warned = set()


def warn_once(msg):
    if msg not in _warned:
        _warned.add(msg)
        print(f"warning: {msg}", file=sys.stderr, flush=True)
