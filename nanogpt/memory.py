"""
How much memory a training run needs, worked out from the model's shape before anything is
allocated, and the one-line stop where it cannot fit: train.py calls check_fits before it builds
the model, and turns an out-of-memory error that happens anyway into one line
(out_of_memory_error). docs/memory.md tabulates the formula for GPT-2's sizes:

    python -m nanogpt.memory          # that table, recomputed

The parts, in bytes (P parameters, N = batch_size * block_size tokens per micro-batch, L layers,
C = n_embd, V = vocab_size, nh = n_head, T = block_size, a = 2 under bfloat16/float16 autocast,
4 in float32):

- weights 4P (autocast keeps float32 master weights) and gradients 4P (with gradient
  accumulation they live through every micro-step, so they count at the peak);
- optimizer state: AdamW's two float32 moments, 8P, and a 4-byte step counter per tensor; Muon
  keeps one float32 momentum (4 bytes) per block-matrix parameter, AdamW's 8 for the rest;
- activations of one micro-batch, what autograd keeps for the backward pass: per token and block
  8C (the LayerNorms' float32 inputs, from the residual stream) + 14aC (the Linears' inputs, q, k,
  v, the attention output, the GELU's input) + 16 (LayerNorm statistics) + 4nh (the fused
  attention's log-sum-exp); the attention written out (nanogpt/cpu.py, and torch's own on MPS)
  keeps its (nh, T, T) softmax output instead; dropout adds 1-byte masks (and the dropped attention
  matrix), except in eager CPU training (cpu_masks), whose masks are a-byte keep tensors and whose
  chunked attention keeps its keep mask alone, a bytes per (nh, T, T) element; autocast
  keeps 2-byte copies of the Linear weights. The output layer keeps the logits (aV per token, held
  by the training loop) and the float32 log-softmax (4V), and its backward pass adds two more
  float32 (N, V) tensors for a moment: at GPT-2's vocabulary that is more than all twelve blocks
  of GPT-2 124M need.

These are eager PyTorch's counts (docs/memory.md, "How exact", says how the tests hold them to
the allocator's). torch.compile fuses and recomputes some activations and needs less, so a
compiled run that the check stops by a little may fit; the suggested batch size keeps the tokens
per step either way.
"""

import json
import math
import os
import re
from dataclasses import dataclass

import torch

from model import GPT2_SIZES

from . import checkpoint, cpu, devices
from .data import GPT2_PADDED_VOCAB, GPT2_VOCAB
from .errors import UserError

__all__ = ['GB', 'Shape', 'Estimate', 'MemoryPlan', 'estimate', 'optimizer_bytes', 'activation_bytes', 'eval_activation_bytes',
           'host_available', 'device_free', 'check_fits', 'out_of_memory_error', 'table']

GB = 1e9


@dataclass(frozen=True)
class Shape:
    """What the estimate needs of a GPT: GPTConfig's architecture fields."""
    n_layer: int
    n_head: int
    n_embd: int
    block_size: int
    vocab_size: int
    bias: bool = False

    @property
    def params(self):
        """The exact parameter count of model.GPT (the output layer shares the token embedding)."""
        C, L = self.n_embd, self.n_layer
        per_block = 12 * C * C + 2 * C + (11 * C if self.bias else 0)  # 4 Linears, 2 LayerNorms
        return (self.vocab_size + self.block_size) * C + L * per_block + C * (2 if self.bias else 1)

    @property
    def tensors(self):
        """How many parameter tensors model.GPT has (one optimizer step counter each)."""
        return 2 + self.n_layer * (12 if self.bias else 6) + (2 if self.bias else 1)

    @property
    def block_matrix_params(self):
        """Parameters of the blocks' 2-D weights: what optimizer='muon' trains with Muon."""
        return self.n_layer * 12 * self.n_embd * self.n_embd

    @property
    def linear_weight_params(self):
        """Parameters that autocast copies to 2 bytes: the blocks' Linear weights and the output layer."""
        return self.block_matrix_params + self.vocab_size * self.n_embd


@dataclass(frozen=True)
class Estimate:
    """Bytes of each part of a training run's peak (see the module docstring)."""
    weights: int
    gradients: int
    optimizer: int
    activations: int

    @property
    def fixed(self):
        """What does not shrink with the batch: weights, gradients, optimizer state."""
        return self.weights + self.gradients + self.optimizer

    @property
    def total(self):
        return self.fixed + self.activations

    def describe(self):
        return (f"{gb(self.total)} (weights {gb(self.weights, '')}, gradients {gb(self.gradients, '')}, "
                f"optimizer state {gb(self.optimizer, '')}, activations of one micro-batch "
                f"{gb(self.activations, '')})")


def gb(n, unit=' GB'):
    """Bytes as GB (10^9 bytes) with enough digits to tell small amounts apart."""
    return f"{n / GB:.1f}{unit}" if n >= 0.1 * GB else f"{n / GB:.3f}{unit}"


def optimizer_bytes(shape, optimizer):
    """Optimizer state: AdamW's two float32 moments and a float32 step counter per tensor; with
    Muon, one float32 momentum for the block matrices (no counter) and AdamW's state for the rest."""
    if optimizer == 'muon':
        n_muon = shape.block_matrix_params
        return 4 * n_muon + 8 * (shape.params - n_muon) + 4 * (shape.tensors - 4 * shape.n_layer)
    return 8 * shape.params + 4 * shape.tensors


def activation_bytes(shape, batch_size, dtype='float32', written_out_attention=False, dropout=0.0, cpu_masks=False):
    """Bytes for one micro-batch of batch_size sequences of block_size tokens: what autograd keeps
    for the backward pass, the logits, and the peak of the backward pass on top (see the module
    docstring for the parts). cpu_masks: eager CPU training with dropout (nanogpt/cpu.py's keep
    masks and chunked attention)."""
    C, L, V, nh, T = shape.n_embd, shape.n_layer, shape.vocab_size, shape.n_head, shape.block_size
    a = 4 if dtype == 'float32' else 2
    # per block and token: the LayerNorms' float32 inputs and statistics; the inputs of the four
    # Linears, q, k and v, the attention output and the GELU's input: 14 values of width C
    per_token_layer = 2 * 4 * C + 16 + 14 * a * C
    cpu_masks = cpu_masks and dropout > 0
    if cpu_masks:
        per_token_layer += nh * T * a  # the chunked attention's keep mask, (nh, T, T) per sequence
    elif written_out_attention:
        per_token_layer += nh * T * a  # the softmax output, (nh, T, T) per sequence
        if dropout > 0:
            per_token_layer += nh * T * (1 + a)  # its dropout mask and the dropped copy
    else:
        per_token_layer += 4 * nh  # the fused kernel's float32 log-sum-exp
    if dropout > 0:  # the masks of the two residual dropouts, and of the embedding's (float32 input)
        per_token_layer += 2 * C * (a if cpu_masks else 1)
    per_token = L * per_token_layer + (C * (4 if cpu_masks else 1) if dropout > 0 else 0)
    # the final LayerNorm's float32 input and statistics, the output layer's input, the logits
    # (held by the training loop) and the float32 log-softmax; the int64 inputs and targets of
    # this micro-batch and the next
    per_token += 4 * C + 8 + a * C + a * V + 4 * V + 4 * 8
    per_seq = T * per_token
    # the backward pass's peak on top: two float32 (N, V) gradients at the output layer; or in a
    # block two (N, 4C) gradients, or one beside the float32 gradient of a (4C, C) weight, which
    # with gradient accumulation is a new tensor before it is added to .grad
    N = batch_size * T
    backward = max(N * 2 * 4 * V, N * 2 * 4 * a * C, N * 4 * a * C + 4 * 4 * C * C)
    weight_copies = 2 * shape.linear_weight_params if a == 2 else 0  # autocast's 2-byte weights, kept for backward
    return batch_size * per_seq + backward + weight_copies


def eval_activation_bytes(shape, batch_size, dtype='float32'):
    """Bytes of an evaluation's forward pass (no autograd graph): the logits and the float32
    log-softmax (and its float32 input under autocast), beside a block's largest intermediates."""
    C, V, a = shape.n_embd, shape.vocab_size, 4 if dtype == 'float32' else 2
    per_token = a * V + 4 * V + (4 * V if a == 2 else 0) + 14 * a * C
    return batch_size * shape.block_size * per_token + (2 * shape.linear_weight_params if a == 2 else 0)


def estimate(shape, batch_size, dtype='float32', optimizer='adamw', written_out_attention=False, dropout=0.0,
             shards=1, cpu_masks=False):
    """The Estimate of one process's training run. shards: processes that split the weights,
    gradients and optimizer state (FSDP), 1 otherwise."""
    return Estimate(weights=4 * shape.params // shards, gradients=4 * shape.params // shards,
                    optimizer=optimizer_bytes(shape, optimizer) // shards,
                    activations=activation_bytes(shape, batch_size, dtype, written_out_attention, dropout,
                                                cpu_masks))


# ---- the shape a run will build, and what it will execute -------------------------------------

def shape_for(c, ckpt, vocab_size):
    """The Shape train.py will build for settings `c`: a new model (vocab_size from meta.pkl, else
    GPT-2's padded one), the resumed checkpoint's, or GPT-2's; cropped to block_size. None where
    it cannot be known before loading (a Hugging Face directory without a readable config.json)."""
    if c.init_from == 'scratch':
        return Shape(c.n_layer, c.n_head, c.n_embd, c.block_size, vocab_size or GPT2_PADDED_VOCAB, c.bias)
    if c.init_from == 'resume':
        a = ckpt['model_args']
        return Shape(a['n_layer'], a['n_head'], a['n_embd'], min(a['block_size'], c.block_size),
                     a['vocab_size'], a.get('bias', True))
    if c.init_from in GPT2_SIZES:
        s = GPT2_SIZES[c.init_from]
        return Shape(s['n_layer'], s['n_head'], s['n_embd'], min(1024, c.block_size), GPT2_VOCAB, True)
    if checkpoint.init_source(c.init_from) != 'hf':
        return None  # a checkpoint to finetune: its shape is known once it is loaded
    try:
        with open(os.path.join(c.init_from, 'config.json')) as f:
            hf = json.load(f)
        return Shape(hf['n_layer'], hf['n_head'], hf['n_embd'], min(hf['n_positions'], c.block_size),
                     hf['vocab_size'], True)
    except (OSError, ValueError, KeyError, TypeError):
        return None


def planned_steps(c, run):
    """(dtype, attention written out) of each kind of forward+backward pass the run will make.
    On a CPU with dtype or compile 'auto', nanogpt/autotune.py measures every candidate at the
    full batch size before it chooses, so each must fit; eager CPU training with dropout always
    writes the attention out (nanogpt/cpu.py). On MPS scaled_dot_product_attention has no
    backward of its own: training goes through torch's math attention, which keeps the (nh, T, T)
    softmax output as the written-out attention does (pytorch/pytorch#179294)."""
    if run.device_type != 'cpu':
        written_out = run.device_type == 'mps'
        if c.dtype != 'auto':
            return [(c.dtype, written_out)]
        if run.device_type == 'cuda':
            return [('bfloat16', False)]  # or float16 on older GPUs: 2 bytes either way
        return [('bfloat16' if devices.mps_autocast_supported() else 'float32', written_out)]
    measured = 'auto' in (c.dtype, c.compile) and not run.fsdp
    candidates = cpu.training_candidates(c.dtype, c.dropout)
    if c.dropout > 0 and c.compile is not True:
        return [(d, True) for d, _ in candidates]
    return [(d, w) for d, w in candidates if measured or not w]  # w: the attention written out


# ---- free memory ----------------------------------------------------------------------------

def host_available():
    """Bytes this process can still allocate on the host: MemAvailable (Linux), or less where a
    cgroup (a container's memory limit) leaves less; None where neither can be read."""
    avail = None
    try:
        with open('/proc/meminfo') as f:
            for line in f:
                if line.startswith('MemAvailable:'):
                    avail = int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    try:  # cgroup v2: the limit, less what is used, plus the page cache it can reclaim
        with open('/sys/fs/cgroup/memory.max') as f:
            limit = f.read().strip()
        if limit != 'max':
            with open('/sys/fs/cgroup/memory.current') as f:
                used = int(f.read())
            with open('/sys/fs/cgroup/memory.stat') as f:
                cache = next((int(line.split()[1]) for line in f if line.startswith('inactive_file ')), 0)
            left = int(limit) - used + cache
            avail = left if avail is None else min(avail, left)
    except (OSError, ValueError):
        pass
    return avail


MPS_RATIO_VAR = 'PYTORCH_MPS_HIGH_WATERMARK_RATIO'
_MPS_DEFAULT_RATIO = 1.7  # torch's default (docs: "MPS Environment Variables")
_MPS_MAX_RATIO = 2.0  # the largest torch accepts (MPSAllocator.h, default_high_watermark_upper_bound)


def mps_limit():
    """Bytes that torch's MPS allocator lets this process allocate: PYTORCH_MPS_HIGH_WATERMARK_RATIO
    (1.7 unless set) times Metal's recommendedMaxWorkingSetSize; past it an allocation fails with
    "MPS backend out of memory". None where there is no limit (the ratio set to 0) or no way to
    read it. On unified memory a run may be allowed more than the RAM, and then it swaps."""
    if not hasattr(torch.mps, 'recommended_max_memory'):
        return None
    try:
        ratio = float(os.environ.get(MPS_RATIO_VAR, _MPS_DEFAULT_RATIO))
    except ValueError:
        return None  # torch refuses it when it starts the allocator, with its own message
    return int(ratio * torch.mps.recommended_max_memory()) if ratio > 0 else None


def device_free(run):
    """(bytes free for this run on its device, or None where unknown; how to name it)."""
    if run.device_type == 'cuda':
        return torch.cuda.mem_get_info(run.device)[0], f"{run.device} ({torch.cuda.get_device_name(run.device)})"
    if run.device_type == 'mps':
        limit = mps_limit()
        if limit is None:
            return None, 'mps'
        # tensors alone: the allocator frees its cached blocks before it reports out of memory
        return limit - limit_used(), f"mps (torch's limit: {MPS_RATIO_VAR} x Metal's recommended maximum)"
    avail = host_available()
    local = int(os.environ.get('LOCAL_WORLD_SIZE', 1)) if run.torchrun else 1
    if avail is None:
        return None, 'cpu'
    return avail // local, 'cpu' + (f" (a {local}-process share)" if local > 1 else '')


# ---- the check before the model is built ---------------------------------------------------------

@dataclass
class MemoryPlan:
    """What check_fits found, kept by the run for the out-of-memory line of a run that fails later
    anyway: the settings, the processes sharing the micro-steps, the estimate and what was free."""
    c: object
    processes: int = 1
    need: 'Estimate' = None
    free: int = None
    where: str = ''


def micro_batch_at_most(c, cap, processes=1):
    """The largest micro-batch of at most cap sequences (1 at least) that splits an optimizer step
    of batch_size * gradient_accumulation_steps sequences into whole micro-steps, a multiple of
    `processes` of them (torchrun divides the micro-steps among its processes)."""
    step = c.batch_size * c.gradient_accumulation_steps
    small = [d for d in range(1, math.isqrt(step) + 1) if step % d == 0]
    return max([d for d in small + [step // d for d in small] if d <= cap and (step // d) % processes == 0] or [1])


def largest_batch(fits, batch_size):
    """The largest b < batch_size with fits(b) true (fits(1) is), by bisection: fits is monotone."""
    lo, hi = 1, batch_size - 1
    while lo < hi:
        mid = (lo + hi + 1) // 2
        lo, hi = (mid, hi) if fits(mid) else (lo, mid - 1)
    return lo


def smaller_batch_hint(c, batch_size, processes=1):
    """The settings that train with micro-batches of at most batch_size sequences and the same
    tokens per optimizer step, split among `processes`."""
    b = micro_batch_at_most(c, batch_size, processes)
    g = c.batch_size * c.gradient_accumulation_steps // b
    return f"--batch_size={b} --gradient_accumulation_steps={g} (the same tokens per step)"


def _step_label(step):
    return f"{step[0]}" + (", attention written out" if step[1] else "")


def check_fits(c, run, ckpt, vocab_size):
    """Stop with one line, before anything is allocated, where the run cannot fit: the estimate
    of its largest forward+backward pass (planned_steps) against what the device has free, and on
    a GPU also the host memory the model is built in first. `ckpt`: the resumed checkpoint or
    None; `vocab_size`: from meta.pkl, or None. Returns the MemoryPlan, for out_of_memory_error."""
    plan = MemoryPlan(c, run.world_size)
    shape = shape_for(c, ckpt, vocab_size)
    if shape is None:
        return plan
    shards = run.world_size if run.fsdp else 1
    measured = run.device_type == 'cpu' and 'auto' in (c.dtype, c.compile) and not run.fsdp

    def need_for(step, batch_size):
        cpu_masks = run.device_type == 'cpu' and step[1]  # eager CPU training: nanogpt/cpu.py's paths
        e = estimate(shape, batch_size, step[0], run.optimizer, step[1], c.dropout, shards, cpu_masks)
        if not c.eval_only:
            return e
        optimizer = e.optimizer if c.init_from == 'resume' else 0  # loaded with the checkpoint
        if measured:  # autotune.py measures training micro-steps, without an optimizer step
            return Estimate(e.weights, e.gradients, optimizer, e.activations)
        return Estimate(e.weights, 0, optimizer, eval_activation_bytes(shape, batch_size, step[0]))

    estimates = {step: need_for(step, c.batch_size) for step in planned_steps(c, run)}
    step = max(estimates, key=lambda s: estimates[s].total)
    need = estimates[step]
    free, where = device_free(run)
    plan.need, plan.free, plan.where = need, free, where
    if run.device_type != 'cpu':
        host = host_available()
        if host is not None and 4 * shape.params > host:
            raise UserError(f"the model ({shape.params / 1e6:,.0f}M parameters) is built in host memory "
                            f"before it moves to {run.device}: that needs {gb(4 * shape.params)} and "
                            f"{gb(host)} is available; use a smaller model (fewer --n_layer, a smaller "
                            f"--n_embd)")
    if free is None or need.total <= free:
        return plan
    what = f"this run needs about {need.describe()} on {where}, which has {gb(free)} free"
    least = min(estimates, key=lambda s: estimates[s].total)
    if estimates[least].total <= free:  # dtype=auto measures every candidate at the full batch size
        raise UserError(f"{what}, for {_step_label(step)}, the largest setup that dtype/compile=auto measures "
                        f"at the start: give --dtype={least[0]} --compile=False (about "
                        f"{gb(estimates[least].total)} with {_step_label(least)})")
    if need_for(step, 1).total > free:
        if need.fixed > free:
            fix = ("the weights, gradients and optimizer state alone do not fit: use a smaller model "
                   "(fewer --n_layer, a smaller --n_embd)")
        else:
            fix = "even one sequence does not fit: use a smaller --block_size or a smaller model"
        if run.device_type == 'cuda':
            fix += ", or shard it over several GPUs (torchrun ... --fsdp=True)"
    else:
        fits = largest_batch(lambda b: need_for(step, b).total <= free, c.batch_size)
        fix = f"use {smaller_batch_hint(c, fits, run.world_size)}, or a smaller --block_size or model"
    if run.device_type == 'mps':
        fix += f"; or {mps_limit_hint(need.total + limit_used())}"
    raise UserError(f"{what}: {fix}")


def limit_used():
    """Bytes already counted against mps_limit (tensors this process holds on MPS)."""
    return torch.mps.current_allocated_memory()


def mps_limit_hint(need):
    """How to let torch's MPS allocator, and with it check_fits, allow `need` bytes: the
    PYTORCH_MPS_HIGH_WATERMARK_RATIO that does (torch takes 2.0 at most), else no limit (0.0)."""
    ratio = math.ceil(10 * need / torch.mps.recommended_max_memory()) / 10
    setting = f"{MPS_RATIO_VAR}={ratio:.1f}" if ratio <= _MPS_MAX_RATIO else f"{MPS_RATIO_VAR}=0.0 (no limit)"
    return f"raise torch's MPS limit: set {setting} in the environment (beyond the RAM the Mac swaps, slowly)"


# ---- running out of memory anyway ---------------------------------------------------------------

def is_out_of_memory(e):
    """torch's out-of-memory error (CUDA, MPS), the CPU allocator's failure, or Python's MemoryError."""
    if isinstance(e, MemoryError) or type(e).__name__ == 'OutOfMemoryError':
        return True
    text = str(e) if isinstance(e, RuntimeError) else ''
    return "can't allocate memory" in text or 'out of memory' in text


def out_of_memory_error(e, plan, when='', kept=''):
    """The one-line UserError for an out-of-memory exception `e` (None for any other exception):
    what failed, the estimate and what was free at the start (`plan`, check_fits' MemoryPlan, or
    one with the settings alone where the estimate is out of reach), the fix, and `kept` (which
    checkpoint is untouched). `when`: e.g. ' at iteration 12'."""
    if not is_out_of_memory(e):
        return None
    c = plan.c
    text = str(e)
    detail = ('CUDA out of memory' if 'CUDA' in text else 'MPS out of memory' if 'MPS' in text
              else 'the allocator failed')
    asked = re.search(r'[Tt]ried to allocate ([\d.]+) ?(\w+)', text)
    if asked:
        n, unit = asked.groups()
        big = unit == 'bytes' and int(n) >= 1e6
        detail += f", asking for {int(n) / 1e6:,.0f} MB" if big else f", asking for {n} {unit}"
    line = f"out of memory{' on ' + plan.where if plan.where else ''}{when} ({detail})"
    if plan.need is not None:
        line += f"; the estimate was {gb(plan.need.total)}" + (
            f" of the {gb(plan.free)} free at the start" if plan.free is not None else '')
    fix = (f"use {smaller_batch_hint(c, c.batch_size // 2, plan.processes)}, or a smaller --block_size or model"
           if c is not None and c.batch_size > 1 else "use a smaller --batch_size, --block_size or model")
    return UserError(f"{line}: {fix}" + (f"; {kept}" if kept else ''))


# ---- the docs' table ---------------------------------------------------------------------------

def table(cards_gib=(12, 16, 24), block_size=1024, context_gib=0.5):
    """Print docs/memory.md's table: GPT-2's four shapes trained from scratch (bias=False,
    GPT-2's padded vocabulary) at block_size 1024 in bfloat16 autocast, eager, one process: the parts of
    the estimate, nanoGPT's batch_size 12, and the largest batch size that fits a card of 12, 16
    and 24 GiB of which context_gib go to the CUDA context and libraries."""
    print("| model | parameters | weights, gradients, AdamW state | the same with optimizer=muon | "
          "activations per sequence | all at batch_size 12 | "
          + " | ".join(f"largest batch_size, {g} GiB card" for g in cards_gib) + " |")
    print("| --- " * (6 + len(cards_gib)) + "|")
    for name, s in GPT2_SIZES.items():
        shape = Shape(s['n_layer'], s['n_head'], s['n_embd'], block_size, GPT2_PADDED_VOCAB, False)
        one, two = estimate(shape, 1, 'bfloat16'), estimate(shape, 2, 'bfloat16')
        fits = []
        for g in cards_gib:
            ok = [b for b in range(1, 129) if estimate(shape, b, 'bfloat16').total <= (g - context_gib) * 2 ** 30]
            fits.append(str(max(ok)) if ok else 'none')
        muon = estimate(shape, 1, 'bfloat16', 'muon')
        print(f"| {name} | {shape.params / 1e6:,.0f}M | {gb(one.fixed)} | {gb(muon.fixed)} | "
              f"{gb(two.activations - one.activations)} | {gb(estimate(shape, 12, 'bfloat16').total)} | "
              + " | ".join(fits) + " |")


if __name__ == '__main__':
    table()
