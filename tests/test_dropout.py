"""CPU dropout masks from the fast generator (nanogpt/cpu.py's MaskSource): Bernoulli(1 - p) masks scaled by
1 / (1 - p), independent across elements, rows and steps, resumable from their state; the
written-out attention math of the fast path equal to torch's fused attention, and the chunked
attention (ChunkedAttention) equal to model.py's written-out attention with the same masks."""

import math

import pytest
import torch

from model import GPT, GPTConfig
from nanogpt import cpu
from nanogpt.cpu import MaskSource, use_dropout_masks


def dropped(src, shape, p):
    """(a bool mask, True where dropped; the scale of the kept elements) from src's keep masks."""
    keep, scale = src.keep(shape, p, torch.float32)
    assert set(keep.unique().tolist()) <= {0.0, 1.0}
    return keep == 0, scale


def drop_masks(p, shape=(64, 8192), seed=0, calls=1):
    src = MaskSource()
    src.seed(seed)
    return [dropped(src, shape, p) for _ in range(calls)]


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
    dropped(src, (3, 5), 0.3)  # uses part of a 64-bit word: the state goes on from the next one
    state = src.state()
    assert all(type(v) is int for v in state['sfc64'])  # plain ints: weights_only checkpoints load them
    ahead = dropped(src, (100, 33), 0.3)[0]
    other = MaskSource()
    other.set_state(state)
    assert torch.equal(dropped(other, (100, 33), 0.3)[0], ahead)


def test_unseeded_masks_follow_torch_seed():
    torch.manual_seed(5)
    a = dropped(MaskSource(), (4, 64), 0.5)[0]
    torch.manual_seed(5)
    assert torch.equal(dropped(MaskSource(), (4, 64), 0.5)[0], a)


class KeepAll(MaskSource):
    def threshold(self, p):
        return -32768, 1.0  # every int16 word is at least that: nothing dropped


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


def attention_inputs(B, nh, T, hs, dtype, seed=0):
    """q, k, v (B, nh, T, hs) as the model makes them (views of one (B, T, 3C) projection)."""
    g = torch.Generator().manual_seed(seed)
    qkv = torch.randn(B, T, 3 * nh * hs, generator=g).to(dtype).requires_grad_()
    q, k, v = qkv.split(nh * hs, dim=2)
    return qkv, [t.view(B, T, nh, hs).transpose(1, 2) for t in (q, k, v)]


def attention_and_grads(p, B, nh, T, hs, dtype, chunked):
    """The output and the gradient of the projection through one attention layer in training mode,
    model.py's written-out attention (MaskedDropout) or ChunkedAttention, masks from seed 3."""
    torch.manual_seed(0)
    model = GPT(GPTConfig(n_layer=1, n_head=nh, n_embd=nh * hs, block_size=T, vocab_size=10, dropout=p))
    masks = MaskSource()
    assert use_dropout_masks(model, masks)
    attn = model.transformer.h[0].attn
    assert isinstance(attn.written_out_attention, cpu.ChunkedAttention)
    if not chunked:
        del attn.written_out_attention  # model.py's own method, with MaskedDropout
    masks.seed(3)
    qkv, (q, k, v) = attention_inputs(B, nh, T, hs, dtype)
    y = attn.written_out_attention(q, k, v)
    dy = torch.randn(y.shape, generator=torch.Generator().manual_seed(1)).to(dtype)
    y.backward(dy)
    return y.detach().float(), qkv.grad.float()


@pytest.mark.parametrize('p, dims', [
    (0.2, (4, 4, 256, 16)),  # (B, nh, T, hs): 16 (T, T) float32 matrices of 256 kB, in 4 chunks
    (0.5, (3, 2, 24, 8)),  # one chunk
])
def test_chunked_attention_equals_the_written_out_attention(p, dims):
    """ChunkedAttention is model.py's written-out attention with the same dropout masks: in float32
    its output and gradients equal the written-out ones to rounding, when one chunk holds the
    whole batch and when four chunks do; and its dropout has an effect (without it the output is
    another)."""
    assert cpu._chunk_rows(16, 256, 4) == 4
    ref, ref_grad = attention_and_grads(p, *dims, torch.float32, chunked=False)
    out, grad = attention_and_grads(p, *dims, torch.float32, chunked=True)
    torch.testing.assert_close(out, ref, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(grad, ref_grad, rtol=1e-4, atol=1e-6)
    no_dropout, _ = attention_and_grads(1e-9, *dims, torch.float32, chunked=True)  # p rounds to 0: none dropped
    assert (out - no_dropout).abs().max() > 0.1


def test_chunked_attention_in_bfloat16_stays_within_its_rounding():
    ref, ref_grad = attention_and_grads(0.2, 4, 4, 256, 16, torch.float32, chunked=False)
    out, grad = attention_and_grads(0.2, 4, 4, 256, 16, torch.bfloat16, chunked=True)
    assert (out - ref).abs().max() <= 0.02 * ref.abs().max()
    assert (grad - ref_grad).abs().max() <= 0.02 * ref_grad.abs().max()


def test_masks_off_puts_model_attention_back():
    model = GPT(GPTConfig(n_layer=2, n_head=2, n_embd=16, block_size=8, vocab_size=10, dropout=0.1))
    assert use_dropout_masks(model, MaskSource())
    assert not use_dropout_masks(model, None)
    assert all('written_out_attention' not in b.attn.__dict__ and b.attn.flash for b in model.transformer.h)
    assert all(type(m) is torch.nn.Dropout for m in model.modules() if isinstance(m, torch.nn.Dropout))
