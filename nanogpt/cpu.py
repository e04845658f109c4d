"""
CPU training at matmul speed: dropout masks from a fast generator, and the attention written out.

torch's CPU dropout draws one Mersenne Twister float per element (bernoulli_): for the
shakespeare_char model that is a large share of a bfloat16 training step (docs/speed.md). torch has no
fused CPU attention with dropout either: scaled_dot_product_attention falls back to its math path
with the same bernoulli_ masks. So for eager CPU training with dropout, use_dropout_masks()
swaps the model's nn.Dropout modules for MaskedDropout, which takes its masks from a MaskSource,
and switches attention to the written-out path of model.py (the same math, whose dropout is then
a MaskedDropout too). The swap happens after the model is built, so the initialisation's random
draws are untouched; nn.Dropout holds no weights, so the state_dict keys stay the same.

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

    def drop(self, shape, p):
        """(a bool mask of `shape`, True where an element is dropped; the scale of the kept ones)."""
        if self.bitgen is None:  # unseeded: seeded from torch's RNG, so torch.manual_seed repeats runs
            self.seed(int(torch.randint(2 ** 62, ())))
        cut = min(round(p * 65536), 65535)
        n = math.prod(shape)
        words = self.bitgen.random_raw((n + 3) // 4).view(np.int16)[:n]
        drop = torch.from_numpy(words).view(shape) < cut - 32768  # int16 is uniform on [-32768, 32767]
        return drop, 65536 / (65536 - cut)

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
        drop, scale = self.masks.drop(x.shape, self.p)
        return x.masked_fill(drop, 0.0).mul_(scale)


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
