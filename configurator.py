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
UserError with one line. A run that resumes takes the settings it was trained with from its
checkpoint, except the ones given again (resumed_settings).
"""

import ast
import difflib
import os
import sys
from types import SimpleNamespace

from nanogpt.errors import UserError, warn_once
from nanogpt.shell import command

PROJECT_DIR = os.path.dirname(os.path.abspath(__file__))  # config/ lives here, whatever the working directory


def settings_of(scope):
    """A script's settings: the plain values (int, float, bool, str) among its module-level names
    (pass globals()), the defaults that config files and --key=value override."""
    return {k: v for k, v in scope.items() if not k.startswith('_') and isinstance(v, (int, float, bool, str))}


def _closest(key, known):
    match = difflib.get_close_matches(key, known, n=1)
    return f" (did you mean {match[0]}?)" if match else ""


def check_type(key, value, default, source):
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
    for candidate in (path, os.path.join(PROJECT_DIR, path)):
        if os.path.isdir(candidate):
            raise UserError(f"{path} is a folder, not a config file: name a file in it, e.g. "
                            f"config/train_shakespeare_char.py")
    raise UserError(f"config file not found: {path} (config files live in config/, "
                    f"e.g. config/train_shakespeare_char.py)")


CONFIG_FILE_KEYS = ('config', 'config_file', 'config_path', 'cfg')  # what users try for a config file


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
                config[key] = check_type(key, value, defaults[key], f"config file {arg}")
            continue
        key, raw = arg
        if key not in config and key in CONFIG_FILE_KEYS:
            script = os.path.basename(sys.argv[0]) if sys.argv[0].endswith('.py') else 'train.py'
            raise UserError(f"--{key}: config files are plain arguments, not a setting: "
                            f"{command('python', script, raw) if raw else f'python {script} FILE'}")
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
        value = check_type(key, value, defaults[key], f"--{key}")
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


# chosen per run and machine: a resumed run takes none of these from its checkpoint
NOT_RESUMED = ('init_from', 'out_dir', 'eval_only', 'device', 'dtype', 'compile', 'backend')


def resumed_settings(c, ckpt, defaults, given=None):
    """The settings of a run that resumes from `ckpt` (None: not resuming, c as it is). Settings
    not given on the command line or in a config file (`given`, from given_settings) come from
    the checkpoint's stored config, except NOT_RESUMED; architecture settings that were given must
    agree with the checkpoint's model_args. Without `given` (train() called directly), a value
    other than the default counts as given. Returns a new namespace."""
    if ckpt is None:
        return c
    c = SimpleNamespace(**vars(c))

    def was_given(k):
        return k in given if given is not None else getattr(c, k) != defaults[k]

    stored = ckpt.get('config') or {}
    for k, v in stored.items():
        if k in defaults and k not in NOT_RESUMED and not was_given(k):
            try:
                setattr(c, k, check_type(k, v, defaults[k], f"{c.out_dir} checkpoint config"))
            except UserError as e:
                warn_once(f"{e}; using {getattr(c, k)!r}")
    from nanogpt.checkpoint import KEPT_ARCH_KEYS  # here, not at the top: plot.py imports this module without torch
    margs = ckpt['model_args']
    for k in KEPT_ARCH_KEYS:
        if was_given(k) and getattr(c, k) != margs[k]:
            raise UserError(f"the checkpoint has {k}={margs[k]!r} but {k}={getattr(c, k)!r} was given: "
                            f"drop the override, or train a new model in another --out_dir")
        setattr(c, k, margs[k])
    if not was_given('block_size') and 'block_size' not in stored:
        c.block_size = margs['block_size']
    if c.block_size > margs['block_size']:
        raise UserError(f"cannot resume with block_size={c.block_size}: the checkpoint was trained with "
                        f"block_size={margs['block_size']} and position embeddings cannot grow; "
                        f"use --block_size={margs['block_size']} or less")
    it = int(ckpt.get('iter_num', 0))
    if not c.eval_only and c.max_iters < it:
        raise UserError(f"cannot resume with max_iters={c.max_iters}: the checkpoint is at iteration {it} already; "
                        f"give a larger --max_iters (with --lr_decay_iters to match) to train on, "
                        f"or --eval_only=True to evaluate it")
    return c
