"""
Commands printed for a user to paste: `command(*args)` quotes each argument so that the shell runs
exactly those arguments, whatever a name holds (spaces, &, quotes, $, letters beyond ASCII).

On POSIX the quoting is shlex.quote's (bash, zsh, dash). On Windows one printed command must work
in both cmd and PowerShell, which share no full quoting: an argument with anything beyond letters,
digits and `-_.:/\\=+` is put in double quotes, where both shells take spaces, &, |, <, >, ;, (, )
and , literally; an inner `"` is doubled (`""` inside quotes is one `"` to cmd, to PowerShell and
to the C runtime that splits Python's command line), and backslashes before a quote are doubled as
that runtime requires. What no quoting shared by both shells protects: `%NAME%` (cmd) and `$name`
or a backtick (PowerShell) are still expanded inside double quotes; docs/training.md says so.
"""

import os
import re
import shlex

_WINDOWS_PLAIN = re.compile(r'[\w\-.:/\\=+]+')  # \w: letters and digits of any script, and _


def _quote_windows(arg):
    if arg and _WINDOWS_PLAIN.fullmatch(arg):
        return arg
    out, backslashes = ['"'], 0
    for ch in arg:
        if ch == '\\':
            backslashes += 1
            continue
        if ch == '"':  # the C runtime: 2n backslashes + "" -> n backslashes and one quote
            out.append('\\' * (2 * backslashes) + '""')
        else:
            out.append('\\' * backslashes + ch)
        backslashes = 0
    out.append('\\' * (2 * backslashes) + '"')  # before the closing quote: doubled, or it escapes it
    return ''.join(out)


def quote(arg):
    """One argument, quoted for this platform's shells."""
    arg = str(arg)
    return _quote_windows(arg) if os.name == 'nt' else shlex.quote(arg)


def command(*args):
    """The command line that runs `args` (strings; an option and its value as one '--key=value'),
    quoted for this platform's shells."""
    return ' '.join(quote(a) for a in args)


def remove_folder(path):
    """The command that deletes the folder `path` and everything in it."""
    return f"rmdir /s /q {quote(path)}" if os.name == 'nt' else command('rm', '-r', path)
