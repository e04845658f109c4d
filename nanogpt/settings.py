"""
train.py's settings: range checks with one-line errors (check_settings), and the record of what
this run resolved them to (Run, from resolve_run: the process's place under torchrun, the device,
the optimizer, the micro-steps per process; autotune.py adds the dtype and compile choice). The
user's settings stay as they were given: everything chosen per run and machine lives in the Run.
The out_dir and its lock are outdir.py's.
"""

import math
import os
from dataclasses import dataclass, replace

import torch

from . import checkpoint, devices, distributed
from .data import check_dataset, dataset_dir
from .errors import UserError
from .optim import resolve_optimizer


@dataclass(frozen=True)
class Run:
    """What this run resolved its settings to."""
    device: str  # cpu, cuda:N, mps
    device_type: str  # cpu, cuda, mps
    optimizer: str  # adamw or muon
    grad_accum: int  # micro-steps per optimizer step on this process (the whole job's, divided by world_size)
    tokens_per_iter: int  # tokens per optimizer step, all processes together
    torchrun: bool = False  # under torchrun (DDP, or FSDP with fsdp=True)
    rank: int = 0
    world_size: int = 1
    master: bool = True  # rank 0: it alone prints and writes files
    fsdp: bool = False  # parameters sharded across the processes
    dtype: str = 'auto'  # float32, bfloat16 or float16, once autotune.py has chosen
    compile: bool = False
    written_out_attention: bool = False  # CPU training through model.py's written-out attention
    eval_batches: int = 1  # batches per forward in an evaluation (estimate_loss)
    micro_step_s: float = None  # seconds per forward+backward, where autotune.py measured it

    def replace(self, **changes):
        """A copy with `changes` (autotune.py's choices)."""
        return replace(self, **changes)


SEED_MAX = 2 ** 63 - 1  # seed + rank must suit torch.manual_seed (up to 2**64 - 1) and numpy (0 and up)


def check_seed(seed):
    """The seed seeds torch's generators and, on a CPU, numpy's dropout masks (nanogpt/cpu.py),
    which take no negative number: one range for both, checked before anything is seeded."""
    if not 0 <= seed <= SEED_MAX:
        raise UserError(f"seed must be an integer from 0 to 2**63-1, got {seed} (e.g. --seed=1337)")


def check_settings(c, defaults):
    """Range checks of train.py's settings `c`, with messages that say how to fix the value."""
    check_seed(c.seed)
    for k in ('batch_size', 'block_size', 'eval_iters', 'eval_interval', 'log_interval',
              'gradient_accumulation_steps', 'n_layer', 'n_head', 'n_embd'):
        if getattr(c, k) < 1:
            raise UserError(f"{k} must be at least 1, got {getattr(c, k)} (e.g. --{k}={defaults[k]})")
    for k in ('max_iters', 'warmup_iters', 'lr_decay_iters'):
        if getattr(c, k) < 0:
            raise UserError(f"{k} must be 0 or more, got {getattr(c, k)} (e.g. --{k}={defaults[k]})")
    if c.n_embd % c.n_head:
        raise UserError(f"n_embd ({c.n_embd}) must be divisible by n_head ({c.n_head}): each head gets "
                        f"n_embd/n_head channels; e.g. --n_embd={-(-c.n_embd // c.n_head) * c.n_head}")
    if not 0.0 <= c.dropout < 1.0:
        raise UserError(f"dropout must be in [0, 1), got {c.dropout}")
    if not (0 < c.learning_rate < math.inf and 0 <= c.min_lr < math.inf):
        raise UserError(f"learning_rate must be > 0 and min_lr >= 0, got {c.learning_rate} and {c.min_lr}")
    if c.decay_lr and c.lr_decay_iters <= c.warmup_iters:
        # the cosine runs from warmup_iters to lr_decay_iters: an empty span has no schedule
        raise UserError(f"lr_decay_iters ({c.lr_decay_iters}) must be greater than warmup_iters "
                        f"({c.warmup_iters}): e.g. --lr_decay_iters={max(c.max_iters, c.warmup_iters + 1)}, "
                        f"or --decay_lr=False for a constant learning rate")
    if c.grad_clip < 0 or c.weight_decay < 0 or not (0 <= c.beta1 < 1 and 0 <= c.beta2 < 1):
        raise UserError(f"need grad_clip >= 0 (0 = off), weight_decay >= 0 and beta1, beta2 in [0, 1); got "
                        f"{c.grad_clip}, {c.weight_decay}, {c.beta1}, {c.beta2}")
    if c.optimizer not in ('adamw', 'muon', 'auto'):
        raise UserError(f"unknown optimizer {c.optimizer!r}: use adamw, muon or auto (e.g. --optimizer=muon)")
    if c.optimizer in ('muon', 'auto') and not (0 < c.muon_lr < math.inf and 0 <= c.muon_momentum < 1):
        raise UserError(f"optimizer=muon needs muon_lr > 0 and muon_momentum in [0, 1), got {c.muon_lr} "
                        f"and {c.muon_momentum} (e.g. --muon_lr=0.02 --muon_momentum=0.95)")
    sharded = c.fsdp and distributed.under_torchrun()
    if c.optimizer == 'muon' and sharded:
        # torch.optim.Muon orthogonalises each update as one matrix; FSDP holds only a shard of it
        raise UserError("optimizer=muon cannot run with fsdp=True (Muon needs each weight matrix whole, "
                        "FSDP shards it): use --fsdp=False (DDP) or --optimizer=adamw")
    if sharded and devices.torch_version() < devices.FSDP_MIN_TORCH:
        # before torch 2.6 fully_shard lived in a private module whose API was still changing
        raise UserError(f"fsdp=True needs torch {'.'.join(map(str, devices.FSDP_MIN_TORCH))} or later (FSDP2's "
                        f"torch.distributed.fsdp.fully_shard); this is torch {torch.__version__}: "
                        f"pip install 'torch>=2.6', or use --fsdp=False (DDP)")
    if not 0 <= c.time_budget < math.inf:
        raise UserError(f"time_budget must be 0 (off) or a number of seconds, got {c.time_budget} "
                        f"(e.g. --time_budget=300)")
    if c.init_from not in ('scratch', 'resume'):
        _check_init_from(c.init_from, c.out_dir)
    check_dataset(dataset_dir(c.dataset), c.dataset)  # before out_dir is made: a missing one leaves nothing behind


def _check_init_from(init_from, out_dir):
    """init_from names a checkpoint to start from (not the one this run will write over), a GPT-2
    name, or a Hugging Face GPT-2 directory."""
    source = checkpoint.init_source(init_from)
    path = checkpoint.init_checkpoint_path(init_from) if source == 'checkpoint' else None
    if path and os.path.abspath(os.path.dirname(path)) == os.path.abspath(out_dir):
        raise UserError(f"init_from={init_from} is in out_dir {out_dir!r}, which this run writes to: give the new "
                        f"run another --out_dir, or continue that one with --init_from=resume")
    if source in ('checkpoint', 'gpt2'):
        return
    if source == 'hf' and not os.path.isfile(os.path.join(init_from, 'config.json')):
        raise UserError(f"init_from={init_from} is a folder with no ckpt.pt or last.pt (a train.py out_dir) and no "
                        f"config.json (a Hugging Face GPT-2 directory): train a model there first, or name another")
    if source is None:
        what = f"no checkpoint at {init_from}" if init_from.endswith('.pt') else f"unknown init_from {init_from!r}"
        raise UserError(f"{what}: use scratch, resume, gpt2, gpt2-medium, gpt2-large, gpt2-xl, a Hugging Face "
                        f"GPT-2 directory, or a checkpoint to start from (an out_dir or its ckpt.pt)")


def resolve_run(c):
    """Join torchrun's process group (under torchrun), then choose the device, the optimizer and
    each process's share of the micro-steps. Returns the Run (dtype and compile still 'auto')."""
    place = distributed.init_distributed(c.device, c.backend, c.fsdp)
    distributed.quiet_other_ranks()
    device = devices.resolve_device(place.device or c.device)
    device_type = devices.device_type_of(device)
    sharded = c.fsdp and place.torchrun
    optimizer = resolve_optimizer(c.optimizer, device_type, device, sharded)
    # gradient_accumulation_steps counts the micro-steps of the whole job (so a checkpoint resumed
    # on another number of processes keeps the tokens per iteration); each process runs its share
    if c.gradient_accumulation_steps % place.world_size:
        near = place.world_size * max(1, round(c.gradient_accumulation_steps / place.world_size))
        raise UserError(f"gradient_accumulation_steps ({c.gradient_accumulation_steps}) must be divisible by "
                        f"the number of processes ({place.world_size}), e.g. --gradient_accumulation_steps={near}")
    grad_accum = c.gradient_accumulation_steps // place.world_size
    tokens_per_iter = c.gradient_accumulation_steps * c.batch_size * c.block_size
    print(f"tokens per iteration will be: {tokens_per_iter:,}"
          + (f" ({place.world_size} processes x {grad_accum} micro-steps x {c.batch_size} batch"
             f" x {c.block_size} tokens)" if place.torchrun else ""))
    return Run(device=device, device_type=device_type, optimizer=optimizer, grad_accum=grad_accum,
               tokens_per_iter=tokens_per_iter, torchrun=place.torchrun, rank=place.rank, world_size=place.world_size,
               master=place.master, fsdp=sharded)
