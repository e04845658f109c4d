"""The configurator (configurator.py): config files and `--key=value` overrides, their types and
their one-line errors; command lines as people type them, `--key value` beside `--key=value` and a
bool setting alone as True, in train.py, sample.py and bench.py alike; and which settings a command
line and its config files give (what a resumed run takes from them rather than from its checkpoint)."""

import os

import pytest
import torch

from conftest import ONE_THREAD, make_char_dataset, run_script, tiny_args
import bench
import train
from nanogpt.errors import UserError
from configurator import apply_overrides, given_settings, parse_argv

DEFAULTS = {'num_samples': 10, 'temperature': 0.8, 'stream': False, 'start': '\n', 'out_dir': 'out',
            'compile': 'auto'}
TRAIN_LIKE = {'batch_size': 12, 'learning_rate': 6e-4, 'compile': 'auto', 'bias': False, 'out_dir': 'out',
              'start': '\n'}


def overrides(*argv):
    return apply_overrides(DEFAULTS, list(argv), verbose=False)


# ---- config files and --key=value ----

def test_overrides_types_and_equals_in_value():
    c = apply_overrides(TRAIN_LIKE, ['--batch_size=32', '--learning_rate=1', '--compile=False', '--bias=True',
                                     '--out_dir=out-x', '--start=a=b'], verbose=False)
    assert c == {'batch_size': 32, 'learning_rate': 1.0, 'compile': False, 'bias': True,
                 'out_dir': 'out-x', 'start': 'a=b'}
    assert isinstance(c['learning_rate'], float)


@pytest.mark.parametrize('arg, msg', [
    (['--batch_sise=3'], 'did you mean batch_size'),
    (['--batch_size=3.5'], 'batch_size must be int'),
    (['--bias=1'], 'bias must be bool'),
    (['--batch_size'], 'malformed argument'),
    (['config/nope.py'], 'config file not found'),
])
def test_override_errors(arg, msg):
    with pytest.raises(UserError, match=msg):
        apply_overrides(TRAIN_LIKE, arg, verbose=False)


def test_config_file_applies_and_rejects_unknown(tmp_path):
    good = tmp_path / 'a.py'
    good.write_text("import math\nbatch_size = 4 * 2\nlearning_rate = 1e-3\n")
    assert apply_overrides(TRAIN_LIKE, [str(good)], verbose=False)['batch_size'] == 8
    bad = tmp_path / 'b.py'
    bad.write_text("batchsize = 4\n")
    with pytest.raises(UserError, match="unknown setting 'batchsize'"):
        apply_overrides(TRAIN_LIKE, [str(bad)], verbose=False)


# ---- --key value beside --key=value ----

@pytest.mark.parametrize('key, raw, expected', [
    ('num_samples', '5', 5),
    ('temperature', '1e-3', 1e-3),
    ('temperature', '2', 2.0),  # an int for a float
    ('temperature', '-1', -1.0),  # a negative number is a value, not an option
    ('stream', 'True', True),
    ('stream', 'False', False),
    ('compile', 'False', False),
    ('out_dir', 'out-x', 'out-x'),
    ('start', 'ROMEO:', 'ROMEO:'),
    ('start', 'a = b, c=d', 'a = b, c=d'),
    ('start', "'quoted'", 'quoted'),  # read as a Python literal in both forms
    ('start', '123', '123'),  # a str setting keeps the text typed
    ('start', '', ''),
])
def test_both_forms_give_the_same_setting(key, raw, expected):
    with_equals, with_space = overrides(f'--{key}={raw}'), overrides(f'--{key}', raw)
    assert with_equals == with_space
    assert with_space[key] == expected and type(with_space[key]) is type(expected)


def test_parse_argv_keeps_order_and_never_takes_a_file_for_a_flag_value():
    argv = ['a.py', '--x', '1', '--y=2=3', '--flag', '--w', '-1', 'b.py', '--z=', '--last']
    assert parse_argv(argv) == ['a.py', ('x', '1'), ('y', '2=3'), ('flag', None), ('w', '-1'), 'b.py',
                                ('z', ''), ('last', None)]


def test_bool_setting_alone_means_true():
    assert overrides('--stream')['stream'] is True  # at the end
    c = overrides('--stream', '--num_samples', '3')  # before another option
    assert (c['stream'], c['num_samples']) == (True, 3)
    assert overrides('--stream', '--start=x')['stream'] is True
    assert overrides('--stream', '--stream=False')['stream'] is False  # applied in order


def test_space_form_value_then_config_file(tmp_path):
    cfg = tmp_path / 'cfg.py'
    cfg.write_text("temperature = 0.5\n")
    c = overrides('--num_samples', '3', str(cfg), '--start', 'x')
    assert (c['num_samples'], c['temperature'], c['start']) == (3, 0.5, 'x')
    cfg.write_text("num_samples = 7\n")
    assert overrides('--num_samples', '3', str(cfg))['num_samples'] == 7  # in order: the file comes after


@pytest.mark.parametrize('argv, message', [
    (['--num_samples'], r"malformed argument '--num_samples': it needs a value, --num_samples=VALUE"),
    (['--num_samples', '--stream'], r"'--num_samples': it needs a value"),
    (['--start', '--x'], r"'--start': .*a value that starts with -- needs the = form"),
    (['--num_sampels', '3'], r'unknown setting --num_sampels \(did you mean num_samples\?\)'),
    (['--num_samples', 'five'], r"--num_samples: num_samples must be int .*got str 'five'"),
    (['--num_samples', '3', 'config/nope.py'], r'config file not found: config/nope.py'),
    (['--stream', 'config/x.py'], r"--stream: stream must be bool, got 'config/x.py' \(--stream alone means True "
                                  r"only at the end or before another --option\)"),
    (['--', '3'], r"malformed argument '--'"),
])
def test_space_form_errors(argv, message):
    with pytest.raises(UserError, match=message):
        overrides(*argv)


def test_value_starting_with_dashes_takes_the_equals_form():
    assert overrides('--start=--x')['start'] == '--x'


def test_given_settings_count_both_forms(tmp_path):
    cfg = tmp_path / 'cfg.py'
    cfg.write_text("dropout = 0.1\n")
    argv = ['--max_iters', '5', '--learning_rate=1e-3', str(cfg), '--bias', '--out_dir', 'o', '--decay_lr']
    apply_overrides(train.DEFAULTS, argv, verbose=False)  # valid as a whole
    assert given_settings(argv, train.DEFAULTS) == {'max_iters', 'learning_rate', 'bias', 'dropout', 'out_dir',
                                                    'decay_lr'}


def test_given_settings_include_config_file_assignments(tmp_path):
    cfg = tmp_path / 'cfg.py'
    cfg.write_text("import math\nbatch_size = 4\nn_layer, n_head = 2, 2\nnot_a_setting = 1\nmax_iters += 0\n")
    assert train.given_settings([str(cfg), '--dropout=0.0'], train.DEFAULTS) == {'batch_size', 'n_layer', 'n_head', 'max_iters',
                                                                 'dropout'}


def test_bench_settings_in_the_space_form():
    train_config = os.path.join(os.path.dirname(os.path.dirname(__file__)), 'config', 'train_shakespeare_char.py')
    c = bench.parse_settings(['--iters', '3', train_config, '--mode', 'sample', '--compare', '--warmup', '0'])
    assert (c.iters, c.mode, c.compare, c.warmup, c.batch_size, c.n_layer) == (3, 'sample', True, 0, 64, 6)
    assert bench.parse_settings(['--iters', '3']) == bench.parse_settings(['--iters=3'])
    with pytest.raises(UserError, match='max_iters'):
        bench.parse_settings(['--max_iters', '3'])


# ---- the issue's commands, end to end ----

@pytest.fixture(scope='module')
def trained_space_form(tmp_path_factory):
    """train.py run as typed with spaces, a bool alone included; returns (CompletedProcess, out_dir, dataset)."""
    root = tmp_path_factory.mktemp('space')
    dataset = make_char_dataset(root / 'toy', n_chars=4000)
    out = str(root / 'out')
    args = []
    for arg in tiny_args(out, dataset, max_iters=2, eval_interval=2, lr_decay_iters=2, warmup_iters=0,
                         peak_flops=1e12):  # no matmul benchmark at start
        args += arg.split('=', 1)
    r = run_script('train.py', *args, '--bias', env=ONE_THREAD)
    return r, out, dataset


def test_train_in_the_space_form(trained_space_form):
    r, out, dataset = trained_space_form
    assert r.returncode == 0, r.stderr
    ckpt = torch.load(os.path.join(out, 'ckpt.pt'), weights_only=True)
    assert ckpt['iter_num'] == 2 and ckpt['model_args']['n_layer'] == 2 and ckpt['model_args']['bias'] is True
    # resume: settings given in the space form win over the checkpoint's stored config (max_iters 2)
    summary = train.main(['--init_from', 'resume', '--out_dir', out, '--max_iters', '4', '--device', 'cpu',
                          '--compile', 'False', '--dtype', 'float32', '--eval_iters', '1'])
    assert summary['config']['max_iters'] == 4
    saved = [torch.load(os.path.join(out, f), weights_only=True)['iter_num'] for f in ('ckpt.pt', 'last.pt')
             if os.path.exists(os.path.join(out, f))]
    assert max(saved) == 4  # trained on to the new max_iters, saved at its evaluation


def test_sample_command_from_the_issue(trained_space_form):
    _, out, _ = trained_space_form
    r = run_script('sample.py', '--out_dir', out, '--num_samples', '2', '--start', 'ROMEO:', '--max_new_tokens',
                   '8', '--device', 'cpu', env=ONE_THREAD)
    assert r.returncode == 0, r.stderr
    assert "Overriding: num_samples = 2" in r.stdout and "Overriding: start = 'ROMEO:'" in r.stdout
    lines = r.stdout.splitlines()
    assert lines.count('-' * 15) == 2 and lines[-1] == '-' * 15  # two samples, each followed by its dashes
    assert sum(line.startswith('ROMEO:') for line in lines) >= 2, r.stdout  # each sample begins with the prompt
