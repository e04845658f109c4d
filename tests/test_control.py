"""The units behind train.py's loop (nanogpt/control.py, nanogpt/signals.py), each alone: the stop
and close decision, the checkpoints a run writes and the one-line errors that name them, the run's
record, the batch stream put back after an added evaluation, and a signal abandoning work.
Whole runs through them are in test_reliability.py, test_budget.py and test_run_end.py."""

import os
import signal
from types import SimpleNamespace

import pytest
import torch

from nanogpt import checkpoint
from nanogpt.control import AddedEvaluation, Checkpoints, RunRecord, StopOrClose
from nanogpt.errors import UserError
from nanogpt.signals import StopSignals, Stopped, abandonable

ONE_PROCESS = SimpleNamespace(torchrun=False, master=True, world_size=1, grad_accum=1, optimizer='adamw',
                              dtype='float32', device='cpu')


def settings(**kw):
    base = dict(max_iters=10, eval_iters=2, eval_interval=5, log_interval=1, lr_decay_iters=10, eval_only=False,
                out_dir='out', init_from='scratch', learning_rate=1e-3, muon_lr=0.02)
    return SimpleNamespace(**dict(base, **kw))


class Budget:
    """A budget.TimeBudget stand-in whose decision the test sets."""

    def __init__(self, close, progress=0.25):
        self.close, self.placed = close, progress

    def must_close(self, eval_due, eval_iters, grad_accum):
        return self.close

    def progress(self, eval_iters, grad_accum):
        return self.placed


def test_a_signal_stops_and_eval_only_or_the_budget_closes():
    signals = StopSignals(torchrun=False)
    decide = StopOrClose(settings(), ONE_PROCESS, None, signals)
    assert decide(3, False) == (False, False) and decide.schedule_iter(3) == 3
    signals.received = signal.SIGTERM
    assert decide(3, False) == (True, False)
    assert StopOrClose(settings(eval_only=True), ONE_PROCESS, None, StopSignals(False))(0, False) == (False, True)
    budgeted = StopOrClose(settings(), ONE_PROCESS, Budget(close=True), StopSignals(False))
    assert budgeted(3, False) == (False, True)
    assert budgeted.schedule_iter(3) == 0.25 * 10  # the schedule follows the budget, not the iteration
    assert StopOrClose(settings(), ONE_PROCESS, Budget(close=False), StopSignals(False))(3, False) == (False, False)


def test_checkpoints_remember_the_last_good_one_and_name_it_when_the_run_diverges(tmp_path):
    out = str(tmp_path)
    saves = Checkpoints(settings(out_dir=out, learning_rate=6e-4), ONE_PROCESS, None, None)
    assert saves.untouched() == "no checkpoint was saved"
    assert 'start again with a lower learning rate, e.g. --learning_rate=0.0003' in str(saves.diverged('loss is nan'))
    saves.save('ckpt.pt', {'model': {'w': torch.ones(2)}, 'iter_num': 7})
    assert torch.load(os.path.join(out, 'ckpt.pt'), weights_only=True)['iter_num'] == 7
    assert saves.saved == {'ckpt.pt': 7}
    assert saves.untouched() == f"the last checkpoint, {out}/ckpt.pt (iteration 7), is untouched"
    with pytest.raises(UserError, match=r"the weights are not finite at iter 9 \(w\): training diverged; "
                                        r"last\.pt was not written; the last checkpoint, .*ckpt\.pt \(iteration 7\), "
                                        r"is untouched; resume from it with a lower learning rate"):
        saves.save('last.pt', {'model': {'w': torch.tensor([1.0, float('nan')])}, 'iter_num': 9})
    assert not os.path.exists(os.path.join(out, 'last.pt')) and saves.last_good[1] == 7


def test_a_resumed_run_starts_from_the_newer_checkpoint(tmp_path):
    out = str(tmp_path)
    checkpoint.save_checkpoint({'iter_num': 4}, os.path.join(out, 'ckpt.pt'))
    saves = Checkpoints(settings(out_dir=out), ONE_PROCESS, None, None)
    saves.resumed(4)
    assert saves.last_good == (os.path.join(out, 'ckpt.pt'), 4)
    checkpoint.save_checkpoint({'iter_num': 6}, os.path.join(out, 'last.pt'))  # last.pt: only while newer
    saves.resumed(6)
    assert saves.last_good == (os.path.join(out, 'last.pt'), 6)


def test_the_record_is_what_train_returns():
    record = RunRecord(config={'seed': 1})
    record.evals[0] = (3.0, 2.5)
    record.losses[1] = 2.9
    assert record.untrained(2.5) and not record.untrained(2.4)
    assert record.result(2, 2.5, None) == {'iter_num': 2, 'best_val_loss': 2.5, 'losses': {1: 2.9},
                                           'evals': {0: (3.0, 2.5)}, 'interrupted': None, 'config': {'seed': 1}}


def test_the_evaluation_added_at_the_end_leaves_the_batch_stream_as_it_was():
    added = AddedEvaluation(settings(max_iters=7, eval_interval=5), budget=None)
    torch.manual_seed(0)
    added.before(7)  # 7 is not a multiple of 5: an evaluation the schedule would not make
    state = torch.get_rng_state()
    torch.rand(100)
    added.after()
    assert torch.equal(torch.get_rng_state(), state)
    added.before(5)  # a scheduled evaluation: its draws stay drawn, as in nanoGPT
    torch.rand(100)
    added.after()
    assert not torch.equal(torch.get_rng_state(), state)


def test_a_signal_abandons_work_at_once_but_not_under_torchrun():
    def work():
        signal.raise_signal(signal.SIGTERM)
        return 'finished'

    with StopSignals(torchrun=False) as signals:
        assert abandonable(work) is None and signals.received == signal.SIGTERM
        assert abandonable(lambda: 'never run') is None  # the signal stays received
    with StopSignals(torchrun=True) as signals:
        assert abandonable(work) == 'finished' and signals.received == signal.SIGTERM
    assert abandonable(lambda: 'no signals installed') == 'no signals installed'
    assert issubclass(Stopped, BaseException) and not issubclass(Stopped, Exception)
