"""
Command-line configuration shared by train.py, sample.py and bench.py.

    python train.py config/train_shakespeare_char.py --batch_size=32 --compile=False

Arguments are applied in order. A bare argument is a config file: a Python file of plain
assignments (`batch_size = 32`), run with the current settings visible. `--key=value` sets one
setting; the value is read as a Python literal (`--lr=1e-3`, `--bias=True`, `--start='a=b'`) and
falls back to the raw string (`--out_dir=out-x`). Every setting must already exist with a default,
and keeps its type (an int is accepted for a float). Mistakes raise UserError with one line.
"""

import ast
import difflib
import os

from common import PROJECT_DIR, UserError


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


def apply_overrides(defaults, argv, verbose=True):
    """Return a copy of the `defaults` dict updated by config files and --key=value arguments."""
    config = dict(defaults)
    for arg in argv:
        if not arg.startswith('--'):
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
        key, eq, raw = arg[2:].partition('=')
        if not eq or not key:
            raise UserError(f"malformed argument {arg!r}: use --key=value (e.g. --batch_size=32)")
        if key not in config:
            raise UserError(f"unknown setting --{key}{_closest(key, config)}")
        try:
            value = ast.literal_eval(raw)
        except (SyntaxError, ValueError):
            value = raw  # a plain string such as an out_dir name
        if isinstance(defaults[key], str) and not isinstance(value, str) and defaults[key] != 'auto':
            value = raw  # e.g. --start=123 or --wandb_run_name=1: keep the text the user typed
        value = _check_type(key, value, defaults[key], f"--{key}")
        if verbose:
            print(f"Overriding: {key} = {value!r}")
        config[key] = value
    return config


def given_settings(argv, known):
    """The settings that argv sets, by --key=value or in a config file, whatever their value:
    on resume these win over the checkpoint's stored config, even where they equal the defaults.
    Called after apply_overrides has checked the arguments and found the files."""
    given = set()
    for arg in argv:
        if arg.startswith('--'):
            given.add(arg[2:].partition('=')[0])
            continue
        path = _find_config_file(arg)
        with open(path) as f:
            tree = ast.parse(f.read())
        for node in ast.walk(tree):
            if isinstance(node, (ast.Assign, ast.AugAssign, ast.AnnAssign)):
                for target in getattr(node, 'targets', None) or [node.target]:
                    given.update(n.id for n in ast.walk(target) if isinstance(n, ast.Name))
    return given & set(known)
