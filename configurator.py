"""
Command-line configuration shared by train.py, sample.py and bench.py.

    python train.py config/train_shakespeare_char.py --batch_size=32 --compile=False

Arguments are applied in order. A bare argument is a config file: a Python file of plain
assignments (`batch_size = 32`), run with the current settings visible. `--key=value` sets one
setting; the value is read as a Python literal (`--lr=1e-3`, `--bias=True`, `--start='a=b'`) and
falls back to the raw string (`--out_dir=out-x`). `--key value` works too: the next argument is the
value unless it starts with `--` (so `--temperature -1` is a value, and a value that starts with
`--` needs the `=` form); a bool setting given alone (`--stream`) means True. Every setting must
already exist with a default, and keeps its type (an int is accepted for a float). Mistakes raise
UserError with one line.
"""

import ast
import difflib
import os

from errors import UserError

PROJECT_DIR = os.path.dirname(os.path.abspath(__file__))  # config/ lives here, whatever the working directory


def _closest(key, known):
    match = difflib.get_close_matches(key, known, n=1)
    return f" (did you mean {match[0]}?)" if match else ""


def _check_type(key, value, default, source):
    """Return value converted to the type of default, or raise UserError."""
    if default == 'auto' or default is None:
        return value  # settings chosen per machine accept their typed values too; checked later
    if isinstance(default, bool):
        if isinstance(value, bool):
            return value
    elif isinstance(default, float):
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
    elif isinstance(default, int):
        if isinstance(value, int) and not isinstance(value, bool):
            return value
    elif isinstance(value, type(default)):
        return value
    raise UserError(f"{source}: {key} must be {type(default).__name__} (default {default!r}), "
                    f"got {type(value).__name__} {value!r}")


def _find_config_file(path):
    for candidate in (path, os.path.join(PROJECT_DIR, path)):
        if os.path.isfile(candidate):
            return candidate
    raise UserError(f"config file not found: {path} (config files live in config/, "
                    f"e.g. config/train_shakespeare_char.py)")


def parse_argv(argv):
    """argv as a list of items in order: a config file path (str), or (key, raw text) for
    --key=value and --key value, with raw None for a --key given alone."""
    items, rest = [], list(argv)
    while rest:
        arg = rest.pop(0)
        if not arg.startswith('--'):
            items.append(arg)
            continue
        key, eq, raw = arg[2:].partition('=')
        if not key:
            raise UserError(f"malformed argument {arg!r}: use --key=value or --key value (e.g. --batch_size=32)")
        if not eq:
            raw = rest.pop(0) if rest and not rest[0].startswith('--') else None
        items.append((key, raw))
    return items


def apply_overrides(defaults, argv, verbose=True):
    """Return a copy of the `defaults` dict updated by config files and --key=value / --key value."""
    config = dict(defaults)
    for arg in parse_argv(argv):
        if isinstance(arg, str):  # a config file
            path = _find_config_file(arg)
            with open(path) as f:
                source = f.read()
            if verbose:
                print(f"Overriding config with {arg}:")
                print(source)
            scope = dict(config)
            try:
                exec(compile(source, path, 'exec'), scope)
            except Exception as e:
                raise UserError(f"config file {arg} failed: {type(e).__name__}: {e}")
            for key, value in scope.items():
                if key.startswith('_') or key in ('__builtins__',) or callable(value) \
                        or type(value).__name__ == 'module':
                    continue
                if key not in config:
                    raise UserError(f"config file {arg} sets unknown setting {key!r}{_closest(key, config)}")
                config[key] = _check_type(key, value, defaults[key], f"config file {arg}")
            continue
        key, raw = arg
        if key not in config:
            raise UserError(f"unknown setting --{key}{_closest(key, config)}")
        if raw is None:  # --key alone
            if not isinstance(defaults[key], bool):
                raise UserError(f"malformed argument '--{key}': it needs a value, --{key}=VALUE or --{key} VALUE "
                                f"(a value that starts with -- needs the = form)")
            raw = 'True'
        try:
            value = ast.literal_eval(raw)
        except (SyntaxError, ValueError):
            value = raw  # a plain string such as an out_dir name
        if isinstance(defaults[key], str) and not isinstance(value, str) and defaults[key] != 'auto':
            value = raw  # e.g. --start=123 or --wandb_run_name=1: keep the text the user typed
        if isinstance(defaults[key], bool) and not isinstance(value, bool):  # e.g. --stream config/x.py
            raise UserError(f"--{key}: {key} must be bool, got {raw!r} (--{key} alone means True only at "
                            f"the end or before another --option)")
        value = _check_type(key, value, defaults[key], f"--{key}")
        if verbose:
            print(f"Overriding: {key} = {value!r}")
        config[key] = value
    return config


def given_settings(argv, known):
    """The settings that argv sets, by --key=value, --key value or in a config file, whatever their value:
    on resume these win over the checkpoint's stored config, even where they equal the defaults.
    Called after apply_overrides has checked the arguments and found the files."""
    given = set()
    for item in parse_argv(argv):
        if not isinstance(item, str):
            given.add(item[0])
            continue
        path = _find_config_file(item)
        with open(path) as f:
            tree = ast.parse(f.read())
        for node in ast.walk(tree):
            if isinstance(node, (ast.Assign, ast.AugAssign, ast.AnnAssign)):
                for target in getattr(node, 'targets', None) or [node.target]:
                    given.update(n.id for n in ast.walk(target) if isinstance(n, ast.Name))
    return given & set(known)
