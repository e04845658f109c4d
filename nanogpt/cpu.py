"""
CPU training at matmul speed: dropout masks from a fast generator, and the attention written out.

torch's CPU dropout draws one Mersenne Twister float per element (bernoulli_): for the
shakespeare_char model that is a large share of a bfloat16 training step (docs/speed.md). torch has no
fused CPU attention with dropout either: scaled_dot_product_attention falls back to its math path
with the same bernoulli_ masks. So for eager CPU training with dropout, use_dropout_masks()
swaps the model's nn.Dropout modules for MaskedDropout, which takes its masks from a MaskSource,
and puts ChunkedAttention in the attention's written-out slot: the same math, a few sequences'
(nh, T, T) scores at a time, so that the softmax, the dropout and their backward work in the
CPU's cache rather than on the whole (B, nh, T, T) matrix in memory. The swap happens after the
model is built, so the initialisation's random draws are untouched; nn.Dropout holds no weights,
so the state_dict keys stay the same.

A compiled model keeps nn.Dropout: inductor makes its masks inside its fused kernels.
"""

import math

import numpy as np
import torch
import torch.nn as nn

from . import devices


class MaskSource:
    """Dropout masks from numpy's SFC64 (a small chaotic counter-based generator): 64 random bits
    at a time, split into four 16-bit numbers, each compared with p * 65536: far faster than
    bernoulli_ (docs/speed.md). So p is rounded to a multiple of 1/65536 and the kept elements are scaled by
    1 / (1 - p rounded). The elements are independent, and the state is a few integers, which
    checkpoints keep for an exact resume."""

    def __init__(self):
        self.bitgen = None

    def seed(self, seed):
        self.bitgen = np.random.SFC64(seed)

    def threshold(self, p):
        """(t, scale) for dropout probability p: an element is kept where its word (words()) is at
        least t, and the kept ones are scaled by `scale`. p is rounded to a multiple of 1/65536."""
        cut = min(round(p * 65536), 65535)
        return cut - 32768, 65536 / (65536 - cut)  # int16 words are uniform on [-32768, 32767]

    def words(self, shape):
        """Uniform random int16 numbers, a tensor of `shape`: four from each 64 random bits."""
        if self.bitgen is None:  # unseeded: seeded from torch's RNG, so torch.manual_seed repeats runs
            self.seed(int(torch.randint(2 ** 62, ())))
        n = math.prod(shape)
        return torch.from_numpy(self.bitgen.random_raw((n + 3) // 4).view(np.int16)[:n]).view(shape)

    def keep(self, shape, p, dtype):
        """(a tensor of `shape` in dtype, 1 where an element is kept and 0 where it is dropped;
        the scale of the kept ones). Multiplying by it is far cheaper than masked_fill."""
        threshold, scale = self.threshold(p)
        return self.fill_keep(torch.empty(shape, dtype=dtype), threshold), scale

    def fill_keep(self, out, threshold):
        """Write the next keep mask into `out` (1 where kept, 0 where dropped) and return it."""
        return torch.ge(self.words(out.shape), threshold, out=out)

    def state(self):
        """Plain integers (a checkpoint loads them with weights_only=True); None if unseeded."""
        if self.bitgen is None:
            return None
        st = self.bitgen.state
        return {'sfc64': [int(v) for v in st['state']['state']], 'has_uint32': int(st['has_uint32']),
                'uinteger': int(st['uinteger'])}

    def set_state(self, state):
        if state is None:
            self.bitgen = None
            return
        self.bitgen = np.random.SFC64()
        self.bitgen.state = {'bit_generator': 'SFC64', 'state': {'state': np.array(state['sfc64'], dtype=np.uint64)},
                             'has_uint32': state['has_uint32'], 'uinteger': state['uinteger']}


class MaskedDropout(nn.Dropout):
    """nn.Dropout with its masks from a MaskSource (shared by all of a model's dropout layers).
    While torch.compile traces it, it is plain nn.Dropout."""

    def __init__(self, p, masks):
        super().__init__(p)
        self.masks = masks

    def forward(self, x):
        if not (self.training and self.p > 0) or torch.compiler.is_compiling():
            return super().forward(x)
        keep, scale = self.masks.keep(x.shape, self.p, x.dtype)
        return x * keep.mul_(scale)


def _chunk_rows(rows, T, itemsize, cache_bytes=2 ** 20):
    """How many of the `rows` (T, T) score matrices one chunk holds: about cache_bytes in all, what
    a core's L2 cache keeps while the chunk's elementwise passes run over it."""
    return max(1, min(rows, cache_bytes // (T * T * itemsize)))


def _causal_bias(T, like):
    """(T, T): 0 on and below the diagonal, -inf above it: the causal mask as an added bias."""
    return torch.full((T, T), float('-inf'), dtype=like.dtype, device=like.device).triu(1)


class _ChunkedAttentionFn(torch.autograd.Function):
    """Causal attention with dropout, softmax(q k^T / sqrt(hs) + bias) * keep @ v * scale, worked
    through a few sequence-heads at a time. Written out on the whole batch, each elementwise pass
    (bias, softmax, dropout, and their backward) streams a (B, nh, T, T) matrix through memory;
    here a chunk's scores stay in cache from their matmul to the next, and the backward pass
    recomputes them from q and k (as flash attention does) instead of keeping the softmax output.
    What it keeps for backward: q, k, v and the keep mask (1/0 in the activations' dtype)."""

    @staticmethod
    def forward(ctx, q, k, v, masks, p):
        B, nh, T, hs = q.shape
        q, k, v = (t.reshape(B * nh, T, hs) for t in (q, k, v))  # (B*nh, T, hs), contiguous
        bias = _causal_bias(T, q)
        y = torch.empty_like(q)
        keep = torch.empty(B * nh, T, T, dtype=q.dtype, device=q.device) if p > 0 else None
        threshold, ctx.scale = masks.threshold(p) if p > 0 else (None, 1.0)
        rows = _chunk_rows(B * nh, T, q.element_size())
        for s in (slice(i, i + rows) for i in range(0, B * nh, rows)):
            att = torch.baddbmm(bias, q[s], k[s].mT, alpha=1.0 / math.sqrt(hs)).softmax(dim=-1)  # (rows, T, T)
            if keep is not None:
                att.mul_(masks.fill_keep(keep[s], threshold))
            torch.bmm(att, v[s], out=y[s])
        ctx.save_for_backward(q, k, v, keep)
        return y.mul_(ctx.scale).view(B, nh, T, hs)

    @staticmethod
    def backward(ctx, dy):
        q, k, v, keep = ctx.saved_tensors
        BH, T, hs = q.shape
        shape = dy.shape  # (B, nh, T, hs)
        dy = dy.reshape(BH, T, hs) * ctx.scale  # the scale of the kept elements, applied once
        bias = _causal_bias(T, q)
        dq, dk, dv = (torch.empty_like(q) for _ in range(3))
        rows = _chunk_rows(BH, T, q.element_size())
        for s in (slice(i, i + rows) for i in range(0, BH, rows)):
            att = torch.baddbmm(bias, q[s], k[s].mT, alpha=1.0 / math.sqrt(hs)).softmax(dim=-1)
            datt = torch.bmm(dy[s], v[s].mT)  # (rows, T, T)
            if keep is not None:
                torch.bmm((att * keep[s]).mT, dy[s], out=dv[s])
                datt.mul_(keep[s])
            else:
                torch.bmm(att.mT, dy[s], out=dv[s])
            scores = torch._softmax_backward_data(datt, att, -1, att.dtype)  # d(q k^T / sqrt(hs) + bias)
            torch.bmm(scores, k[s], out=dq[s])
            torch.bmm(scores.mT, q[s], out=dk[s])
        return (dq.mul_(1.0 / math.sqrt(hs)).view(shape), dk.mul_(1.0 / math.sqrt(hs)).view(shape),
                dv.view(shape), None, None)


class ChunkedAttention:
    """What use_dropout_masks puts in each attention's written_out_attention slot: model.py's
    written-out attention with its dropout, computed by _ChunkedAttentionFn with masks from a
    MaskSource. Not a module: it holds no weights and adds nothing to the state_dict."""

    def __init__(self, masks, p):
        self.masks, self.p = masks, p

    def __call__(self, q, k, v):
        with torch.autocast(q.device.type, enabled=False):  # q, k, v come in the dtype to work in
            return _ChunkedAttentionFn.apply(q, k, v, self.masks, self.p)


def _dropout_slots(model):
    """(parent module, attribute name, dropout module) of every dropout layer."""
    for parent in model.modules():
        for name, child in parent.named_children():
            if isinstance(child, nn.Dropout):
                yield parent, name, child


def use_dropout_masks(model, masks):
    """Train `model` (a model.GPT) on the CPU with dropout masks from `masks` (a MaskSource) and the
    attention written out; masks=None puts nn.Dropout and the fused attention back. Returns
    whether the fast path is on (it is off for a model without dropout)."""
    on = masks is not None and model.config.dropout > 0
    for parent, name, d in list(_dropout_slots(model)):
        if on and getattr(d, 'masks', None) is not masks:
            setattr(parent, name, MaskedDropout(d.p, masks))
        elif not on and isinstance(d, MaskedDropout):  # modules stay as they are where nothing changes
            setattr(parent, name, nn.Dropout(d.p))
    for block in model.transformer.h:
        if on:
            block.attn.written_out_attention = ChunkedAttention(masks, block.attn.attn_dropout.p)
        else:
            block.attn.__dict__.pop('written_out_attention', None)  # model.py's own again
    use_written_out_attention(model, on)
    return on


def use_written_out_attention(model, on):
    """Train through model.py's written-out attention instead of the fused kernel. Without dropout
    autotune.py measures both: in bfloat16 at short block sizes the written-out one can be faster."""
    for block in model.transformer.h:
        block.attn.flash = not on


def training_candidates(dtype, dropout):
    """(dtype, written-out attention) of each way eager CPU training may run, what autotune.py
    measures: `dtype`, or for 'auto' float32 and, where the CPU has bf16 units, bfloat16; without
    dropout each reduced dtype with the attention written out too, which can beat torch's fused
    CPU kernel in bfloat16 at short block sizes. float32 keeps the fused kernel and with it the
    original's numbers; with dropout the attention is written out anyway (use_dropout_masks)."""
    dtypes = [dtype] if dtype != 'auto' else ['float32'] + (['bfloat16'] if devices.cpu_has_bf16_units() else [])
    return [(d, w) for d in dtypes for w in (False, True) if not w or (d != 'float32' and dropout == 0)]


def prepare_training(model, run, masks):
    """train.py's hook (and bench.py's): eager training on a CPU takes its dropout masks from
    `masks` (a MaskSource) and, where autotune.py chose it, the written-out attention. `run`:
    settings.Run, or anything with its device_type, compile and written_out_attention."""
    if run.device_type == 'cpu' and not run.compile:
        use_eager_paths(model, masks, run.written_out_attention)


def use_eager_paths(model, masks, written_out_attention):
    """Eager CPU training of `model`: dropout masks from `masks`, and with them the written-out
    attention; without dropout, the attention that `written_out_attention` says."""
    if not use_dropout_masks(model, masks):
        use_written_out_attention(model, written_out_attention)
