"""No dead ends at the end of a training run: a run that stops at max_iters between evaluations
still evaluates and saves (and its losses stay those of a run without that evaluation); the
summary says when nothing was saved; a second run on a live run's out_dir stops with one line
naming it, a lock left by a killed run is taken over; the gradient norm is logged (a diverging
run's one line is tested with the other diverging runs, in tests/test_reliability.py)."""

import json
import os
import re

import pytest
import torch

from conftest import ONE_THREAD, read_metrics, read_until, run_script, start_training, tiny_args
from nanogpt import checkpoint
import train

pytestmark = pytest.mark.usefixtures('one_thread')


# ---- every run ends with a model ----------------------------------------------------------------

def test_short_run_ends_with_a_model_that_samples(char_dataset, tmp_path):
    """The issue's `--max_iters=30` with eval_interval 250, in small: the run evaluates and saves
    at its last iteration, the summary names ckpt.pt, and sample.py reads it."""
    out = str(tmp_path / 'out')
    r = run_script('train.py', *tiny_args(out, char_dataset, max_iters=7, eval_interval=250), env=ONE_THREAD)
    assert r.returncode == 0, r.stderr
    assert 'step 7: train loss' in r.stdout and f'saving checkpoint to {out}/ckpt.pt' in r.stdout
    assert f'best model: {out}/ckpt.pt' in r.stdout and 'not saved' not in r.stdout
    assert torch.load(os.path.join(out, 'ckpt.pt'), weights_only=True)['iter_num'] == 7
    s = run_script('sample.py', f'--out_dir={out}', '--num_samples=1', '--max_new_tokens=20', '--device=cpu',
                   env=ONE_THREAD)
    assert s.returncode == 0, s.stderr


def test_the_closing_evaluation_leaves_the_losses_as_they_were(char_dataset, tmp_path):
    """Gradient accumulation and dropout draw batches and masks after the closing evaluation of
    iteration 6: every loss, that iteration's included, is the one of a longer run that does not
    evaluate there (float32 CPU, bit for bit), and its checkpoint resumes into that longer run."""
    kw = dict(eval_interval=4, lr_decay_iters=8, gradient_accumulation_steps=2, dropout=0.1)
    whole = train.main(tiny_args(str(tmp_path / 'whole'), char_dataset, max_iters=8, **kw))
    out = str(tmp_path / 'short')
    short = train.main(tiny_args(out, char_dataset, max_iters=6, **kw))
    assert sorted(short['evals']) == [0, 4, 6] and 6 not in whole['evals']
    assert short['losses'] == {i: whole['losses'][i] for i in range(7)}
    rest = train.main(tiny_args(out, char_dataset, init_from='resume', max_iters=8, **kw))
    assert rest['losses'] == {i: whole['losses'][i] for i in (6, 7, 8)}


def test_summary_says_when_nothing_was_saved(char_dataset, tmp_path, capsys):
    # max_iters=0: iteration 0's evaluation is the untrained model's, which is never saved
    out = str(tmp_path / 'zero')
    train.main(tiny_args(out, char_dataset, max_iters=0))
    stdout = capsys.readouterr().out
    assert "best val loss" in stdout and "(iteration 0's, the untrained model's: not saved)" in stdout
    assert 'nothing was saved' in stdout and '\nbest model:' not in stdout
    assert not os.path.exists(os.path.join(out, 'ckpt.pt'))
    # a learning rate so high that the loss rises: the last evaluation writes last.pt, never ckpt.pt
    out = str(tmp_path / 'worse')
    train.main(tiny_args(out, char_dataset, max_iters=3, learning_rate=0.3, warmup_iters=0, decay_lr=False))
    stdout = capsys.readouterr().out
    assert "(iteration 0's, the untrained model's: not saved)" in stdout and '\nbest model:' not in stdout
    assert f'the training state is in {out}/last.pt (iteration 3)' in stdout
    assert f'python train.py --init_from=resume --out_dir={out} --learning_rate=0.15' in stdout
    assert sorted(os.listdir(out)) == ['last.pt', 'metrics.jsonl', 'train.lock']


# ---- one run per out_dir --------------------------------------------------------------------------

def test_one_training_run_per_out_dir(char_dataset, tmp_path, capsys):
    """A second train.py on a live run's out_dir stops at once with one line naming the run;
    sample.py and eval_only read meanwhile; after the run is killed its lock binds nothing."""
    out = str(tmp_path / 'out')
    first = start_training(out, char_dataset, max_iters=100000, lr_decay_iters=100000, eval_interval=3)
    try:
        read_until(first, 'saving checkpoint')
        second = run_script('train.py', *tiny_args(out, char_dataset, peak_flops=1e12), env=ONE_THREAD)
        assert second.returncode == 2 and 'Traceback' not in second.stderr
        assert second.stderr.count('\n') == 1
        assert re.match(rf"error: {re.escape(out)} is in use by another training run \(pid {first.pid} on "
                        rf"\S+, started \d{{4}}-\d\d-\d\d \d\d:\d\d:\d\d\)", second.stderr), second.stderr
        assert 'Initializing' not in second.stdout  # stopped before building anything
        s = run_script('sample.py', f'--out_dir={out}', '--num_samples=1', '--max_new_tokens=5', '--device=cpu',
                       env=ONE_THREAD)
        assert s.returncode == 0, s.stderr
        train.main(['--init_from=resume', f'--out_dir={out}', '--eval_only=True', '--eval_iters=1',
                    '--device=cpu', '--dtype=float32', '--compile=False', '--peak_flops=1e12'])
    finally:
        first.kill()
        first.communicate()
    holder = os.path.join(out, 'train.lock.json')  # who holds out_dir/train.lock
    assert json.load(open(holder))['pid'] == first.pid  # left behind by the killed run
    capsys.readouterr()
    reached = checkpoint.find_resume_checkpoint(out)['iter_num']
    train.main(tiny_args(out, char_dataset, init_from='resume', max_iters=reached + 1, peak_flops=1e12))
    stdout = capsys.readouterr().out
    assert f'was left by a run that no longer runs (pid {first.pid}' in stdout and 'Resuming training' in stdout
    assert not os.path.exists(holder)  # released when the run ended


# ---- gradient norm and divergence -------------------------------------------------------------------

def test_gradient_norm_is_logged_before_clipping(char_dataset, tmp_path, capsys):
    out = str(tmp_path / 'clipped')
    train.main(tiny_args(out, char_dataset, max_iters=3, grad_clip=0.01))
    lines = [line for line in capsys.readouterr().out.splitlines() if line.startswith('iter ')]
    assert len(lines) == 4
    assert all(re.match(r'iter \d+: loss \d+\.\d{4}, time \d+\.\d\dms, mfu -?\d+\.\d\d%, grad norm \d', line)
               for line in lines), lines
    clipped = [e['grad_norm'] for e in read_metrics(out) if e['event'] == 'iter']
    assert len(clipped) == 4 and all(g > 0.01 for g in clipped)  # the norm before clipping to 0.01
    # without clipping the norm is measured, and the training is the original's: the same losses
    # as a run that clips at a norm it never reaches
    free = train.main(tiny_args(str(tmp_path / 'free'), char_dataset, max_iters=3, grad_clip=0.0))
    loose = train.main(tiny_args(str(tmp_path / 'loose'), char_dataset, max_iters=3, grad_clip=1e9))
    assert free['losses'] == loose['losses']
    norms = [e['grad_norm'] for e in read_metrics(str(tmp_path / 'free')) if e['event'] == 'iter']
    assert norms == [e['grad_norm'] for e in read_metrics(str(tmp_path / 'loose')) if e['event'] == 'iter']
    assert norms[0] == clipped[0]  # iteration 0: the same gradients, clipped or not
