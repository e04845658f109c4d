"""Output that never costs work (nanogpt/errors.py setup_output, nanogpt/shell.py): a reader that
goes away ends sample.py quietly and leaves a training run training; a cp1252 console prints what
it can and the dataset, the run and the samples are all made; every printed command, split as
bash splits it, gives back its arguments, and the Windows form parses back as Windows would."""

import os
import shlex
import subprocess
import sys

import pytest

from conftest import PROJECT, run_script, tiny_args
from nanogpt import shell
from nanogpt.errors import EXIT_READER_GONE

ODD = ["my novel & co", "it's \"quoted\"", "données ελληνικά", "a$b`c\\", "-x", ""]


def _popen(*args, env=None):
    return subprocess.Popen([sys.executable, *args], cwd=PROJECT, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            env=dict(os.environ, CUDA_VISIBLE_DEVICES='', **(env or {})))


@pytest.fixture(scope='module')
def trained(tmp_path_factory):
    from conftest import make_char_dataset
    tmp = tmp_path_factory.mktemp('trained')
    data = make_char_dataset(tmp / 'toy')
    out = tmp / 'out & ölçü'
    r = run_script('train.py', *tiny_args(str(out), data, always_save_checkpoint=True))
    assert r.returncode == 0, r.stderr
    return out, data, r.stdout


def test_sample_into_a_closed_pipe_ends_quietly(trained):
    p = _popen('sample.py', f'--out_dir={trained[0]}', '--device=cpu', '--num_samples=40', '--max_new_tokens=200')
    p.stdout.readline()
    p.stdout.close()  # `| head -1`
    err = p.stderr.read().decode()
    assert p.wait(timeout=300) == EXIT_READER_GONE
    assert 'Traceback' not in err and 'BrokenPipe' not in err, err


def test_a_training_run_whose_reader_goes_away_keeps_training(tmp_path, char_dataset):
    p = _popen('train.py', *tiny_args(str(tmp_path / 'out'), char_dataset, max_iters=30, lr_decay_iters=30,
                                      eval_interval=10))
    p.stdout.readline()
    p.stdout.close()
    err = p.stderr.read().decode()
    assert p.wait(timeout=300) == 0, err
    assert 'Traceback' not in err, err
    import torch
    assert torch.load(tmp_path / 'out' / 'ckpt.pt', weights_only=True)['iter_num'] == 30  # it trained to the end


def test_a_cp1252_console_loses_nothing(tmp_path):
    text = tmp_path / 'greek.txt'
    text.write_text("Ἐν ἀρχῇ ἦν ὁ λόγος 🙂 καὶ ὁ λόγος ἦν πρὸς τὸν θεόν.\n" * 300, encoding='utf-8')
    env = {'PYTHONIOENCODING': 'cp1252'}
    r = run_script('data/prepare_text.py', str(text), f'--dest={tmp_path / "greek"}', env=env)
    assert r.returncode == 0 and 'Traceback' not in r.stderr, r.stderr
    assert all((tmp_path / 'greek' / f).exists() for f in ('train.bin', 'val.bin', 'meta.pkl'))
    assert 'all the unique characters:' in r.stdout  # printed, with '?' for what cp1252 lacks
    r = run_script('train.py', *tiny_args(str(tmp_path / 'out'), str(tmp_path / 'greek'), always_save_checkpoint=True),
                   env=env)
    assert r.returncode == 0 and 'Traceback' not in r.stderr, r.stderr
    r = run_script('sample.py', f'--out_dir={tmp_path / "out"}', '--device=cpu', '--num_samples=2',
                   '--max_new_tokens=100', '--start=Ἐν', env=env)
    assert r.returncode == 0 and 'Traceback' not in r.stderr, r.stderr
    assert r.stdout.count('---------------') == 2


def _command_after(marker, out):
    line = next(ln for ln in out.splitlines() if marker in ln)
    return shlex.split(line.split(marker, 1)[1])


def test_printed_commands_split_back_into_their_arguments(tmp_path, trained):
    out, data, train_out = trained
    assert _command_after('sample from it with: ', train_out) == ['python', 'sample.py', f'--out_dir={out}']
    odd = tmp_path / "my novel & 'co' ölü.txt"
    odd.write_text("hello world, a small text\n" * 50)
    dest = tmp_path / 'data & "set"'
    r = run_script('data/prepare_text.py', str(odd), f'--dest={dest}')
    assert r.returncode == 0, r.stderr
    assert _command_after('train with: ', r.stdout) == [
        'python', 'train.py', 'config/train_shakespeare_char_cpu.py', f'--dataset={dest}',
        "--out_dir=out-my novel & 'co' ölü"]
    r = run_script('train.py', *tiny_args(str(tmp_path / 'o'), str(tmp_path / 'no such & data')))
    assert shlex.split(r.stderr.strip().rsplit('<your text file> ', 1)[1]) == [f'--dest={tmp_path / "no such & data"}']
    os.makedirs(tmp_path / 'only last')
    (out / 'ckpt.pt').rename(tmp_path / 'only last' / 'last.pt')
    try:
        r = run_script('sample.py', f'--out_dir={tmp_path / "only last"}')
        assert _command_after('continue it with: ', r.stderr) == [
            'python', 'train.py', '--init_from=resume', f'--out_dir={tmp_path / "only last"}']
    finally:
        (tmp_path / 'only last' / 'last.pt').rename(out / 'ckpt.pt')
    for arg in ODD:
        assert shlex.split(shell.command('python', 'x.py', arg)) == ['python', 'x.py', arg]


def _windows_split(line):
    """Split a command line as the Microsoft C runtime splits Python's (backslashes count only
    before a quote; "" inside quotes is one quote), after cmd/PowerShell pass it through."""
    args, cur, quoted, i, have = [], [], False, 0, False
    while i < len(line):
        ch = line[i]
        if ch == '\\':
            n = len(line[i:]) - len(line[i:].lstrip('\\'))
            if line[i + n:i + n + 1] == '"':
                cur.append('\\' * (n // 2))
                if n % 2:
                    cur.append('"')
                    i += n + 1
                    continue
                i += n
                continue
            cur.append('\\' * n)
            i += n
            continue
        if ch == '"':
            have = True
            if quoted and line[i + 1:i + 2] == '"':
                cur.append('"')
                i += 2
                continue
            quoted = not quoted
        elif ch == ' ' and not quoted:
            if cur or have:
                args.append(''.join(cur))
            cur, have = [], False
        else:
            cur.append(ch)
        i += 1
    if cur or have:
        args.append(''.join(cur))
    return args


def test_windows_commands_are_double_quoted_for_cmd_and_powershell(monkeypatch):
    monkeypatch.setattr(os, 'name', 'nt')
    assert shell.command('python', 'train.py', '--dataset=my novel & co', '--out_dir=out-x') == \
        'python train.py "--dataset=my novel & co" --out_dir=out-x'
    assert shell.command('--out_dir=C:\\runs\\') == '--out_dir=C:\\runs\\'  # nothing to quote
    assert shell.command('--out_dir=C:\\my runs\\') == '"--out_dir=C:\\my runs\\\\"'  # its \ must not eat the quote
    assert shell.command('données') == 'données'
    for arg in ODD:
        line = shell.command('python', 'x.py', arg)
        assert _windows_split(line) == ['python', 'x.py', arg]
        quoted = line[len('python x.py '):]
        if quoted.startswith('"'):  # cmd's & | < > ; , and spaces are all inside the quotes
            assert quoted.endswith('"') and all(ch not in quoted[1:-1].replace('""', '') for ch in '"')
    assert shell.remove_folder('C:\\out\\previous\\run-1') == 'rmdir /s /q C:\\out\\previous\\run-1'
