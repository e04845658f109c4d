"""CPU dropout masks from the fast generator (nanogpt/cpu.py's MaskSource): Bernoulli(1 - p) masks scaled by
1 / (1 - p), independent across elements, rows and steps, resumable from their state, and the
written-out attention math of the fast path equal to torch's fused attention."""

import math

import pytest
import torch

from model import GPT, GPTConfig
from nanogpt.cpu import MaskSource, use_dropout_masks


def drop_masks(p, shape=(64, 8192), seed=0, calls=1):
    src = MaskSource()
    src.seed(seed)
    return [src.drop(shape, p) for _ in range(calls)]


@pytest.mark.parametrize('p', [0.1, 0.2, 0.5])
def test_mask_is_bernoulli_and_unbiased(p):
    (drop, scale), = drop_masks(p)
    n = drop.numel()
    rate = drop.float().mean().item()
    assert abs(rate - p) < 4 * math.sqrt(p * (1 - p) / n) + 1 / 65536
    assert scale == pytest.approx(1 / (1 - p), rel=1e-4)
    kept = (~drop).float() * scale  # what Dropout multiplies by: mean 1, variance p / (1 - p)
    assert kept.mean().item() == pytest.approx(1.0, abs=4 * math.sqrt(p / (1 - p) / n))
    assert kept.var().item() == pytest.approx(p / (1 - p), rel=0.03)


@pytest.mark.parametrize('lag', [1, 2, 3, 4, 5])
def test_neighbouring_elements_are_uncorrelated(lag):
    """Four mask elements come from each 64-bit word: neighbours within and across words."""
    (drop, _), = drop_masks(0.2)
    a = drop.flatten().float()
    x, y = a[:-lag], a[lag:]
    r = ((x - x.mean()) * (y - y.mean())).mean() / (x.std() * y.std())
    assert abs(r.item()) < 4 / math.sqrt(a.numel())


def test_rows_and_steps_get_different_masks():
    (d1, _), (d2, _) = drop_masks(0.2, shape=(8, 4096), calls=2)
    rows = {tuple(r.tolist()) for r in d1}
    assert len(rows) == 8
    assert (d1 != d2).float().mean().item() == pytest.approx(2 * 0.2 * 0.8, abs=0.02)  # independent


def test_state_round_trip_repeats_the_masks():
    src = MaskSource()
    src.seed(7)
    src.drop((3, 5), 0.3)  # leaves a partly used word behind: the state must carry on from there
    state = src.state()
    assert all(type(v) is int for v in state['sfc64'])  # plain ints: weights_only checkpoints load them
    ahead = src.drop((100, 33), 0.3)[0]
    other = MaskSource()
    other.set_state(state)
    assert torch.equal(other.drop((100, 33), 0.3)[0], ahead)


def test_unseeded_masks_follow_torch_seed():
    torch.manual_seed(5)
    a = MaskSource().drop((4, 64), 0.5)[0]
    torch.manual_seed(5)
    assert torch.equal(MaskSource().drop((4, 64), 0.5)[0], a)


class KeepAll(MaskSource):
    def drop(self, shape, p):
        return torch.zeros(shape, dtype=torch.bool), 1.0


def test_fast_attention_path_equals_fused_attention():
    """With masks that drop nothing, training mode (the written-out CPU path) gives the logits of
    eval mode (torch's scaled_dot_product_attention): the attention math is the same."""
    torch.manual_seed(0)
    model = GPT(GPTConfig(n_layer=2, n_head=4, n_embd=64, block_size=32, vocab_size=50, dropout=0.2))
    assert use_dropout_masks(model, KeepAll())
    x = torch.randint(50, (3, 32))
    fast = model.train()(x, x)[0]
    fused = model.eval()(x, x)[0]
    torch.testing.assert_close(fast, fused, rtol=1e-5, atol=1e-5)


def test_dropout_is_applied_in_training_only():
    torch.manual_seed(0)
    model = GPT(GPTConfig(n_layer=1, n_head=2, n_embd=32, block_size=16, vocab_size=20, dropout=0.5))
    x = torch.randint(20, (2, 16))
    model.train()
    a, b = model(x, x)[1], model(x, x)[1]
    assert a != b  # new masks every step
    model.eval()
    assert model(x, x)[1] == model(x, x)[1]
