"""A long run says what it will cost and never goes quiet (nanogpt/progress.py): the estimate's
arithmetic, the heartbeat's lines during a slow evaluation and the measurement, and a stop signal
honoured at once during both, leaving a last.pt that resumes as if nothing had happened."""

import io
import json
import os
import signal
import subprocess
import sys
import time
from types import SimpleNamespace

import torch

from conftest import PROJECT, run_script, tiny_args
from nanogpt import progress

QUICK = {'NANOGPT_PROGRESS_INTERVAL': '0.3', 'OMP_NUM_THREADS': '1'}


def test_evaluations_left_counts_each_multiple_and_the_closing_one():
    assert progress.evaluations_left(0, 5000, 250) == 21  # 0, 250, ..., 5000
    assert progress.evaluations_left(0, 30, 250) == 2  # 0, and the one every run ends with at 30
    assert progress.evaluations_left(1, 5000, 250) == 20
    assert progress.evaluations_left(250, 5000, 250) == 20
    assert progress.evaluations_left(251, 260, 250) == 1  # only the closing one
    assert progress.evaluations_left(5001, 5000, 250) == 0


def test_estimate_adds_iterations_evaluations_and_compiling():
    # the shakespeare_char GPU recipe (config/train_shakespeare_char.py) on a slow CPU: 5001 iterations of 5 s and 21 evaluations of 11 minutes
    s = progress.estimate_s(0, 5000, 250, iter_s=5.0, eval_s=660.0)
    assert s == 5001 * 5.0 + 21 * 660.0
    assert progress.estimate_s(0, 5000, 250, 5.0, 660.0, compile_s=60.0) == s + 60.0
    line = progress.estimate_line(0, 5000, 250, 5.0, 660.0)
    assert line == "this run: 5001 iterations x ~5.0s + 21 evaluations x ~11m00s = ~10h47m on this machine"
    assert progress.estimate_line(0, 10, 100, 0.05, 0.5).startswith("this run: 11 iterations x ~50ms + 2 evaluations")
    c = SimpleNamespace(dataset='shakespeare_char', eval_iters=200)
    advice = progress.advice_line(c, s)
    assert 'config/train_shakespeare_char_cpu.py' in advice and '--time_budget=' in advice and '--eval_iters=20' in advice
    assert 'train_shakespeare_char_cpu' not in progress.advice_line(SimpleNamespace(dataset='mine', eval_iters=10), s)


def test_the_run_estimate_prints_once_from_the_first_evaluation_then_refines(capsys):
    """RunEstimate alone: the median of the first evaluation's forwards (the first one apart) gives
    the estimate; ten timed iterations that differ by more than a quarter print it again."""
    c = SimpleNamespace(eval_iters=4, max_iters=100, eval_interval=50, dataset='mine')
    run = SimpleNamespace(eval_batches=1, micro_step_s=None, grad_accum=1, device_type='cuda')
    est = progress.RunEstimate(c, run, active=True)
    for k, t in enumerate([5.0, 6.0, 7.0]):  # began at 0: the first forward holds 5 s of warm-up
        est.forward_done(t, k == 0, 0.0, 0, 0)
    # 2 splits x 4 forwards of 1 s; each forward a third of an iteration: 3 s per iteration
    assert capsys.readouterr().out == progress.estimate_line(0, 100, 50, 3.0, 8.0) + '\n'
    est.evaluated(8.0, 0, 0)
    for i in range(10):
        est.iteration_done(1.0, i, i, spent_s=10.0 + i)
    assert est.time_left(10) == progress.estimate_s(10, 100, 50, 1.0, 8.0)
    assert 'measured, the rest of this run' in capsys.readouterr().out
    quiet = progress.RunEstimate(c, run, active=False)  # a time budget, eval_only or rank > 0
    quiet.evaluated(8.0, 0, 0)
    quiet.iteration_done(1.0, 0, 1, spent_s=1.0)
    assert quiet.time_left(1) is None and capsys.readouterr().out == ''


def test_loop_phases_say_what_the_loop_does(monkeypatch):
    said = []
    monkeypatch.setattr(progress, 'set_phase', lambda what, restart=True: said.append((what, restart)))
    phases = progress.LoopPhases(compiling=True)
    phases.training(0, 0)
    phases.training(1, 1)  # the clock keeps running through consecutive iterations
    phases.evaluating(2, 'val', 3, 4, first=False)
    phases.writing('out/ckpt.pt')
    phases.training(3, 3)
    assert said == [("training: iter 0, compiling and warming up", True), ("training: iter 1", False),
                    ("evaluating at iter 2: val batch 3 of 4", False), ("writing out/ckpt.pt", True),
                    ("training: iter 3", True)]


def test_heartbeat_speaks_only_in_silence_and_never_inside_a_line(monkeypatch):
    out = io.StringIO()
    monkeypatch.setattr(sys, 'stdout', out)
    with progress.Heartbeat(every=0.2):
        with progress.phase("measuring"):
            time.sleep(0.7)
        sys.stdout.write("half a line")
        time.sleep(0.5)  # an unfinished line: the heartbeat waits for its end
        print(" and its end")
        progress.set_phase(lambda: "training: iter 7")
        time.sleep(0.35)
    assert sys.stdout is out  # put back
    lines = out.getvalue().splitlines()
    assert lines[0].startswith("... measuring (") and len([x for x in lines if 'measuring' in x]) >= 2
    assert "half a line and its end" in lines
    assert lines[-1].startswith("... training: iter 7 (")
    n = len(out.getvalue())
    time.sleep(0.3)
    assert len(out.getvalue()) == n  # the thread ended with the block


def slow_eval_args(out, dataset, **kw):
    """A tiny model whose step-0 evaluation takes long: many evaluation batches."""
    return tiny_args(out, dataset, n_embd=64, block_size=64, batch_size=16, peak_flops=1e12, **kw)


def test_slow_evaluation_prints_progress_and_the_estimate(char_dataset, tmp_path):
    r = run_script('train.py', *slow_eval_args(str(tmp_path / 'o'), char_dataset, eval_iters=200,
                                               max_iters=2, eval_interval=2), env=QUICK)
    assert r.returncode == 0, r.stderr
    lines = r.stdout.splitlines()
    beats = [x for x in lines if x.startswith('... evaluating at iter 0: ')]
    assert beats and all(' batch ' in x and ' of 200 (' in x for x in beats), r.stdout
    # printed during the step-0 evaluation, before its result: 3 iterations, 2 evaluations
    est = next(i for i, x in enumerate(lines) if x.startswith('this run: '))
    assert lines[est].startswith('this run: 3 iterations x ~') and '+ 2 evaluations x ~' in lines[est]
    assert est < next(i for i, x in enumerate(lines) if x.startswith('step 0:'))
    assert 'is long for a CPU' not in r.stdout  # seconds, not half an hour


def wait_for(proc, text, timeout=120):
    """Read proc's stdout until a line holds `text`; returns the lines read."""
    lines, t0 = [], time.time()
    for line in proc.stdout:
        lines.append(line)
        if text in line or time.time() - t0 > timeout:
            break
    return lines


def test_sigterm_during_an_evaluation_stops_at_once_and_resumes_exactly(char_dataset, tmp_path):
    out = str(tmp_path / 'stopped')
    proc = subprocess.Popen([sys.executable, 'train.py', *slow_eval_args(out, char_dataset, eval_iters=200000)],
                            cwd=PROJECT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env=dict(os.environ, CUDA_VISIBLE_DEVICES='', PYTHONUNBUFFERED='1', **QUICK))
    wait_for(proc, '... evaluating at iter 0: ')  # minutes of evaluation ahead
    t0 = time.time()
    proc.send_signal(signal.SIGTERM)
    stdout, stderr = proc.communicate(timeout=60)
    assert proc.returncode == 128 + signal.SIGTERM, stderr
    assert time.time() - t0 < 15 and 'Traceback' not in stderr
    assert 'stopped by signal at iter 0' in stdout and 'step 0:' not in stdout
    assert torch.load(os.path.join(out, 'last.pt'), weights_only=True)['iter_num'] == 0

    # resumed with a short evaluation, it computes what a run that never stopped computes
    more = ['--eval_iters=4', '--max_iters=4', '--dtype=float32', '--compile=False', '--device=cpu']  # chosen per run: not resumed
    r = run_script('train.py', f'--out_dir={out}', '--init_from=resume', *more, env=QUICK)
    assert r.returncode == 0, r.stderr
    whole = str(tmp_path / 'whole')
    w = run_script('train.py', *slow_eval_args(whole, char_dataset, eval_iters=4, max_iters=4), env=QUICK)
    assert w.returncode == 0, w.stderr

    def events(d):
        return [(e['event'], e.get('iter'), e.get('loss'), e.get('val_loss'))
                for e in map(json.loads, open(os.path.join(d, 'metrics.jsonl')))]
    assert events(out) == events(whole)


def test_sigterm_during_the_dtype_measurement_stops_at_once(char_dataset, tmp_path):
    """dtype=auto on a CPU times forward+backward in each candidate dtype first: a few seconds of
    a model this size, with the heartbeat naming it; a signal then ends the run at once."""
    out = str(tmp_path / 'o')
    args = tiny_args(out, char_dataset, n_layer=4, n_head=4, n_embd=256, block_size=256, batch_size=16,
                     dtype='auto', compile='auto', max_iters=3, peak_flops=1e12)
    env = dict(os.environ, CUDA_VISIBLE_DEVICES='', NANOGPT_CACHE_DIR=str(tmp_path / 'cache'), PYTHONUNBUFFERED='1', **QUICK)
    proc = subprocess.Popen([sys.executable, 'train.py', *args], cwd=PROJECT, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env=env)
    read = wait_for(proc, '... measuring forward+backward')
    assert not any(x.startswith('auto dtype/compile:') for x in read)  # still measuring
    t0 = time.time()
    proc.send_signal(signal.SIGTERM)
    stdout, stderr = proc.communicate(timeout=60)
    assert proc.returncode == 128 + signal.SIGTERM, stderr
    assert time.time() - t0 < 15 and 'Traceback' not in stderr
    assert 'measurement abandoned' in stdout and 'stopped by signal at iter 0' in stdout
    r = run_script('train.py', f'--out_dir={out}', '--init_from=resume', '--dtype=float32', '--compile=False', '--eval_iters=2', env=QUICK)
    assert r.returncode == 0, r.stderr
    assert 'iter 3: loss' in r.stdout
