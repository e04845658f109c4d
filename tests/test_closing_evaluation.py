"""A budget that holds under load (issue 29, item 4): when the machine slows down during a budgeted
run's closing evaluation, the evaluation ends its splits early with the batches done, says so in a
line after its step line, and the run still ends inside the budget (on a fake clock: no timing
is measured here; tests/benchmarks/bench_budget_under_load.py is the real run)."""

import re
from types import SimpleNamespace

import pytest

import train
from conftest import Clock, simulated_close, tiny_args
from nanogpt.budget import TimeBudget
from nanogpt.control import ClosingEvaluation


@pytest.mark.parametrize('slowdown', [2, 4, 6, 8])
def test_a_load_that_begins_with_the_closing_evaluation_cuts_it_short(slowdown):
    """The load arrives as the closing evaluation begins: no iteration has shown it, so the
    reserve was measured at full speed. In full, the evaluation runs past 90 s * 1.02 from a
    slowdown of 4 on; cut, the run ends inside that, and the note says over how many batches."""
    _, note, began = simulated_close(90, 1, load_from=10 ** 6)
    full, _, _ = simulated_close(90, slowdown, load_from=began, cut=False)
    end, note, _ = simulated_close(90, slowdown, load_from=began)
    assert end <= 90 * 1.02 and (full > 90 * 1.02 or slowdown < 4), (full, end)
    assert re.fullmatch(r"\(the time budget ended during this evaluation: train loss over (\d+) of 10 batches, "
                        r"val loss over (\d+) of 10 batches; no sample\)", note), note


def test_no_cut_without_a_load():
    for load_from in (10 ** 6, 30):  # none, or one that the iterations showed long before the end
        end, note, _ = simulated_close(90, 1 if load_from > 90 else 3, load_from=load_from)
        assert note is None and end <= 90 * 1.02


def test_the_split_keeps_half_of_what_fits_and_each_at_least_one_batch():
    clock = Clock()
    b = TimeBudget(100, clock=clock)
    b.eval_s, b.save_s = 2.0, 0.0  # 20 forwards of 0.1 s measured
    ce = ClosingEvaluation(SimpleNamespace(eval_iters=10), SimpleNamespace(eval_batches=1, master=True, torchrun=False), b)
    clock.now += 100 - 1.0 - 1.0  # 1 s of evaluation and the 1 s margin left
    ce.start(True)
    kept = {}
    for split in ('train', 'val'):
        for k in range(10):
            clock.now += 0.1  # the measured pace: 10 forwards fit in all
            if ce.ends_split(split, k):
                break
        kept[split] = k + 1
    assert kept == {'train': 5, 'val': 5}
    ce.start(False)  # an evaluation that is not the closing one is never cut
    clock.now += 1000
    assert not ce.ends_split('train', 0) and ce.note() is None


def test_a_cut_closing_evaluation_in_a_real_run(char_dataset, tmp_path, capsys, monkeypatch):
    """train.py's loop: estimate_loss stops each split when told, the step line keeps its format,
    the note follows it, no sample is drawn, and the run saves and ends as usual."""
    monkeypatch.setattr(ClosingEvaluation, '_forwards_that_fit', lambda self, elapsed, done, total: 0)
    out = str(tmp_path / 'out')
    summary = train.main(tiny_args(out, char_dataset, time_budget=4, max_iters=10 ** 6, eval_interval=10 ** 6,
                                   eval_iters=4, sample_every_eval=True))
    lines = capsys.readouterr().out.splitlines()
    n = summary['iter_num']
    at = lines.index(f"(the time budget ended during this evaluation: train loss over 1 of 4 batches, "
                     f"val loss over 1 of 4 batches; no sample)")
    assert re.fullmatch(rf"step {n}: train loss \d+\.\d{{4}}, val loss \d+\.\d{{4}}, elapsed \d+\.\ds", lines[at - 1])
    assert not any(line.startswith('  sample at step') for line in lines)
    assert any(line.startswith(f'done: {n} iterations fitted in the 0m04s budget') for line in lines)


def test_estimate_loss_means_the_batches_done(char_dataset):
    """A split told to stop after its second forward: the mean of those two losses."""
    import contextlib
    import torch
    from model import GPT, GPTConfig
    from nanogpt.data import open_split
    c = SimpleNamespace(eval_iters=6, batch_size=2, block_size=16)
    run = SimpleNamespace(eval_batches=1, device='cpu', device_type='cpu', torchrun=False)
    data = {s: open_split(char_dataset, s, char_dataset, 16, 40) for s in ('train', 'val')}
    torch.manual_seed(0)
    model = GPT(GPTConfig(n_layer=1, n_head=1, n_embd=16, block_size=16, vocab_size=40, dropout=0.0))
    seen = []

    def forward_losses(m, x, y):
        logits, loss = GPT.forward(m, x, y)
        seen.append(loss.item())
        return logits, loss
    model.forward = lambda x, y: forward_losses(model, x, y)
    ctl = SimpleNamespace(eval_progress=lambda split, k: k == 1)
    out = train.estimate_loss(model, data, contextlib.nullcontext(), c, run, ctl)
    assert len(seen) == 4
    assert out['train'] == pytest.approx(sum(seen[:2]) / 2) and out['val'] == pytest.approx(sum(seen[2:]) / 2)
