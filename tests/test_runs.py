"""A second run into an out_dir keeps the first (nanogpt/runs.py): its files move to
out_dir/previous/run-N/ byte for byte, one line says where and how to delete them, and
keep_previous_runs=False writes over them as nanoGPT does. Real train.py runs."""

import shlex

import pytest

import train
from conftest import run_script, tiny_args
from nanogpt.errors import UserError


def _train(out, data, **kw):
    r = run_script('train.py', *tiny_args(str(out), data, **kw))
    assert r.returncode == 0, r.stderr
    return r


def test_a_second_run_keeps_the_first(tmp_path, char_dataset):
    out = tmp_path / 'out dir & co'
    _train(out, char_dataset, always_save_checkpoint=True)
    first = (out / 'ckpt.pt').read_bytes()
    first_metrics = (out / 'metrics.jsonl').read_text()
    r = _train(out, char_dataset, max_iters=5, lr_decay_iters=5, always_save_checkpoint=True)
    kept = out / 'previous' / 'run-1'
    assert (kept / 'ckpt.pt').read_bytes() == first  # byte for byte
    assert (kept / 'metrics.jsonl').read_text() == first_metrics
    assert (out / 'ckpt.pt').read_bytes() != first  # the new run is the one sample.py reads
    line = next(ln for ln in r.stdout.splitlines() if ln.startswith('kept the previous run'))
    assert str(kept) in line and 'ckpt.pt at iteration 10, best val loss' in line
    delete = line.split('delete it with: ')[1].split(' (--keep_previous_runs')[0]
    assert shlex.split(delete) == ['rm', '-r', str(kept)]
    _train(out, char_dataset, max_iters=5, lr_decay_iters=5)
    assert (out / 'previous' / 'run-2' / 'ckpt.pt').exists() and (kept / 'ckpt.pt').read_bytes() == first


def test_resume_and_keep_previous_runs_false_keep_nothing(tmp_path, char_dataset, capsys):
    out = tmp_path / 'out'
    train.main(tiny_args(str(out), char_dataset))
    train.main(tiny_args(str(out), char_dataset, init_from='resume', max_iters=12, lr_decay_iters=12))
    assert not (out / 'previous').exists() and 'kept the previous run' not in capsys.readouterr().out
    train.main(tiny_args(str(out), char_dataset, keep_previous_runs=False))
    assert not (out / 'previous').exists() and 'kept the previous run' not in capsys.readouterr().out


def test_a_run_that_stops_during_setup_moves_nothing(tmp_path, char_dataset):
    out = tmp_path / 'out'
    train.main(tiny_args(str(out), char_dataset))
    with pytest.raises(UserError, match='no checkpoint at'):
        train.main(tiny_args(str(out), char_dataset, init_from=str(tmp_path / 'nothing.pt')))
    assert (out / 'ckpt.pt').exists() and not (out / 'previous').exists()
