"""The time budget (time_budget): the schedule follows the fraction of the budget spent, the run
closes by itself with an evaluation and a checkpoint inside the budget, and a resumed run
continues the clock."""

import math
from types import SimpleNamespace

import pytest
import torch

import train
from nanogpt import checkpoint
from nanogpt.errors import UserError
from conftest import Clock, simulated_close, read_metrics, run_script, tiny_args
from nanogpt.budget import TimeBudget
from train import get_lr


def test_budget_progress_and_closing_follow_the_clock():
    clock = Clock()
    b = TimeBudget(100, clock=clock)
    clock.now += 10  # setup: counts against the budget, not against the schedule
    b.loop_started()
    assert b.progress(eval_iters=10, grad_accum=1) == 0.0
    for _ in range(3):
        b.iter_done(1.0)
    b.eval_s, b.save_s = 2.0, 0.5
    reserve = b.reserve(10, 1)
    assert reserve == pytest.approx(2.0 + 0.5 + 1.0)  # evaluation, save, 1% margin
    horizon = 100 - reserve - 10
    clock.now += horizon / 2
    assert b.progress(10, 1) == pytest.approx(0.5)
    assert not b.must_close(False, 10, 1)
    clock.now = 1000 + 100 - reserve - 0.5  # not even one more 1 s iteration fits
    assert b.must_close(False, 10, 1)
    assert b.progress(10, 1) == pytest.approx(1.0, abs=0.02)
    # an evaluation due before the next iteration needs its own time
    clock.now = 1000 + 100 - reserve - 3
    assert not b.must_close(False, 10, 1) and b.must_close(True, 10, 1)


def test_budget_iteration_estimate_ignores_the_first_slow_iteration():
    b = TimeBudget(60, clock=Clock())
    b.iter_done(30.0)  # compilation
    assert b.iter_s == 30.0  # nothing better known yet
    for t in (1.0, 1.2, 0.9):
        b.iter_done(t)
    assert b.iter_s == 1.0


def test_budget_state_resumes_the_clock():
    clock = Clock()
    b = TimeBudget(100, clock=clock)
    clock.now += 5
    b.loop_started()
    clock.now += 40
    st = b.state()
    assert st == {'spent': 45.0, 'start': 5.0, 'seconds': 100.0, 'closed': False}
    b2 = TimeBudget(100, spent=st['spent'], start=st['start'], clock=clock)
    assert b2.spent() == 45.0 and b2.left() == 55.0 and not b2.ended_run(st)
    clock.now += 54.5
    assert b.must_close(False, 10, 1) and b.state()['closed']
    # a run the budget ended is not resumed with the same budget, only with a larger one
    assert TimeBudget(100, spent=99.5, clock=clock).ended_run(b.state())
    assert not TimeBudget(200, spent=99.5, clock=clock).ended_run(b.state())


def test_fractional_iteration_schedule():
    c = SimpleNamespace(learning_rate=1e-3, min_lr=1e-4, warmup_iters=10, lr_decay_iters=100)
    assert get_lr(55.0, c) == pytest.approx(1e-4 + 0.5 * (1e-3 - 1e-4))
    assert get_lr(100.0, c) == pytest.approx(1e-4)
    assert get_lr(4.5, c) == pytest.approx(1e-3 * 5.5 / 11)


def decay_position(lr, c):
    """Where in the cosine (0..1) a learning rate lies."""
    coeff = (lr - c['min_lr']) / (c['learning_rate'] - c['min_lr'])
    return math.acos(max(-1.0, min(1.0, 2 * coeff - 1))) / math.pi


BUDGET_RUN = dict(max_iters=10 ** 6, lr_decay_iters=1000, warmup_iters=10, learning_rate=1e-3,
                  min_lr=1e-4, eval_interval=10 ** 6, log_interval=1)


def test_budgeted_run_closes_itself_inside_the_budget(char_dataset, tmp_path, capsys):
    out = str(tmp_path / 'out')
    summary = train.main(tiny_args(out, char_dataset, time_budget=4, **BUDGET_RUN))
    n = summary['iter_num']
    assert n >= 1 and sorted(summary['evals']) == [0, n]  # step 0, then the closing evaluation
    # ckpt.pt if the closing evaluation improved on step 0's (on a loaded machine a few iterations may not)
    saved = torch.load(checkpoint.find_resume_checkpoint(out)['path'], weights_only=True)
    # the run's own clock (in-process it starts in main()), as the checkpoint recorded it when
    # the last save began: closed by the budget, within it
    assert saved['iter_num'] == n and saved['time']['closed'] and saved['time']['spent'] <= 4
    stdout = capsys.readouterr().out
    assert f"done: {n} iterations fitted in the 0m04s budget" in stdout
    assert 'of budget left' in stdout
    events = read_metrics(out)
    iters = [e for e in events if e['event'] == 'iter']
    assert len(iters) == n
    assert events[-1]['event'] == 'eval' and events[-1]['elapsed'] <= saved['time']['spent']
    # how far the schedule got depends on this machine's timing (a stall of a few iterations
    # rightly closes early): test_budget_progress_and_closing... checks it on a recorded clock


def test_resumed_budget_continues_clock_and_schedule(char_dataset, tmp_path):
    out = str(tmp_path / 'out')
    train.main(tiny_args(out, char_dataset, time_budget=3, **BUDGET_RUN))
    with pytest.raises(UserError, match=r'time budget is spent.*--time_budget=6'):
        train.main(tiny_args(out, char_dataset, init_from='resume', time_budget=3, **BUDGET_RUN))
    first = len(read_metrics(out))
    saved = torch.load(checkpoint.find_resume_checkpoint(out)['path'], weights_only=True)['time']
    # 8s: 3 spent, 5 left, enough for several iterations on a loaded machine
    train.main(tiny_args(out, char_dataset, init_from='resume', time_budget=8, **BUDGET_RUN))
    resumed = [e for e in read_metrics(out)[first:] if e['event'] == 'iter']
    # the schedule goes on from inside the cosine, not from warmup: at least as far as the seconds
    # the checkpoint recorded put it in the new budget (more: the resumed run's setup counts too)
    at_least = (saved['spent'] - saved['start']) / (8 - saved['start']) * BUDGET_RUN['lr_decay_iters']
    at_least = (at_least - BUDGET_RUN['warmup_iters']) / (BUDGET_RUN['lr_decay_iters'] - BUDGET_RUN['warmup_iters'])
    assert max(0.0, at_least - 0.01) < decay_position(resumed[0]['lr'], BUDGET_RUN) < 0.9  # 0: warmup
    assert decay_position(resumed[-1]['lr'], BUDGET_RUN) > decay_position(resumed[0]['lr'], BUDGET_RUN) + 0.05


def test_budget_command_line_closes_within_budget(char_dataset, tmp_path):
    """The whole command: its clock starts before torch is imported, and the checkpoint records
    the seconds spent when the last save began."""
    out = str(tmp_path / 'out')
    r = run_script('train.py', *tiny_args(out, char_dataset, time_budget=8, **BUDGET_RUN),
                   env={'OMP_NUM_THREADS': '1'})
    assert r.returncode == 0, r.stderr[-2000:]
    assert 'iterations fitted in the 0m08s budget' in r.stdout
    saved = torch.load(checkpoint.find_resume_checkpoint(out)['path'], weights_only=True)
    assert saved['time']['closed'] and saved['time']['spent'] <= 8
    # import and setup count: the schedule began after them, the clock before
    assert 0 < saved['time']['start'] < saved['time']['spent']


def test_bad_budget_is_one_line(char_dataset, tmp_path):
    with pytest.raises(UserError, match='time_budget must be 0'):
        train.main(tiny_args(str(tmp_path / 'out'), char_dataset, time_budget=-1))


def test_a_budget_too_short_for_the_model_says_so(capsys, monkeypatch):
    from nanogpt import errors
    monkeypatch.setattr(errors, '_warned', set())
    clock = Clock()
    b = TimeBudget(300, clock=clock)
    b.loop_started()
    for _ in range(6):
        clock.now += 1.2
        b.iter_done(1.2)
    err = capsys.readouterr().err
    assert err.count('warning:') == 1 and 'fits about 250 iterations' in err
    fast = TimeBudget(300, clock=clock)
    fast.loop_started()
    for _ in range(6):
        fast.iter_done(0.2)
    assert capsys.readouterr().err == ''


# ---- the closing reserve follows a slowdown (issue 22: a CPU hog from 85% of the budget) ----------

def test_reserve_follows_the_slowdown_of_recent_iterations():
    clock = Clock()
    b = TimeBudget(100, clock=clock)
    b.loop_started()
    for _ in range(10):
        b.iter_done(0.1)
    b.eval_s, b.save_s = 2.0, 0.5  # measured at a pace of 0.1 s an iteration
    assert b.eval_pace == 0.1 and b.slowdown() == 1.0
    assert b.reserve(10, 1) == pytest.approx(2.5 + 1.0)
    b.iter_done(0.5)  # one slow iteration: a hiccup moves nothing
    assert b.slowdown() == 1.0 and b.next_iter_s() == 0.1
    b.iter_done(0.5)  # two in a row: the machine is 5 times slower, and so will the closing work be
    assert b.slowdown() == pytest.approx(5.0) and b.next_iter_s() == 0.5
    assert b.reserve(10, 1) == pytest.approx(5 * 2.5 + 1.0)
    clock.now = 1000 + 100 - (0.5 + 13.5) + 0.1  # just less than one iteration and the reserve left
    assert b.must_close(False, 10, 1)
    clock.now -= 0.2
    assert not b.must_close(False, 10, 1)
    assert b.must_close(True, 10, 1)  # with an evaluation and a save due first, 5 times slower too
    for _ in range(2):
        b.iter_done(0.05)  # faster than before: the measured evaluation is not scaled down
    assert b.slowdown() == 1.0 and b.reserve(10, 1) == pytest.approx(3.5)


def test_step_0_evaluation_takes_the_pace_that_follows_it():
    b = TimeBudget(100, clock=Clock())
    b.eval_s = 3.0  # before any iteration (warm-up in it: an overestimate, which is the safe side)
    b.iter_done(2.0)  # the first iteration: compilation, never the pace
    for t in (0.2, 0.2, 0.2):
        assert b.eval_pace is None
        b.iter_done(t)
    assert b.eval_pace == 0.2 and b.slowdown() == 1.0


def test_gpu_pattern_of_one_waiting_iteration_in_ten_is_no_slowdown():
    """On CUDA only the log_interval-th iteration reads the loss and so waits for the GPU."""
    b = TimeBudget(100, clock=Clock())
    for k in range(40):
        b.iter_done(0.2 if k % 10 == 9 else 0.01)
        if k == 25:
            b.eval_s = 1.0
    for k in range(40, 80):
        b.iter_done(0.2 if k % 10 == 9 else 0.01)
        assert b.slowdown() == 1.0


def simulated_run(budget_s, slowdown, load_from):
    """The second at which a budgeted run on a fake clock closed (conftest.simulated_close, with its
    closing evaluation in full: 2 x 10 forwards of 0.06 s)."""
    return simulated_close(budget_s, slowdown, load_from, cut=False)[0]


@pytest.mark.parametrize('slowdown', [1, 2, 4, 6])
def test_budget_holds_when_the_machine_slows_down_at_85_percent(slowdown):
    """The issue's case: a 90 s budget, another process taking the cores from the 78th second
    (iterations, evaluation and save alike slower). The run closes within the budget + 2%."""
    end = simulated_run(90, slowdown, load_from=78)
    assert end <= 90 * 1.02, end
    assert simulated_run(90, 1, load_from=78) <= 90  # without the load, within the budget itself
