"""
Train a GPT, on one device or many (torchrun).

    python data/shakespeare_char/prepare.py
    python train.py config/train_shakespeare_char.py              # 10.65M model, GPU-sized
    python train.py config/train_shakespeare_char_cpu.py          # a few minutes on a laptop CPU
    python train.py config/train_shakespeare_char.py --init_from=resume   # continue a run
    torchrun --standalone --nproc_per_node=4 train.py config/train_gpt2.py

Settings are the module-level variables below; config files and --key=value override them
(see configurator.py). out_dir/ckpt.pt is the best model by validation loss (what sample.py
reads); out_dir/last.pt is the latest training state, written when an evaluation does not improve
and when the run is interrupted (Ctrl-C, SIGTERM). init_from='resume' continues from the newer of
the two and reproduces the uninterrupted run exactly.
"""

import time

T_IMPORT = time.time()  # a time budget counts from here: importing torch is part of the run

import json
import math
import os
import signal
import sys
from types import SimpleNamespace

import torch
import torch.distributed as dist

import autotune
import common
from common import UserError
from checkpoint import ARCH_KEYS, find_resume_checkpoint, fit_optimizer_state, full_sharded_state, load_full_optimizer_state, model_from_checkpoint, rng_state, save_checkpoint, set_rng_state
from dataset import Batches, dataset_dir, load_meta, open_split
from configurator import _check_type, apply_overrides, given_settings
from model import GPT, GPTConfig
from optim import build_optimizer, set_lr
from schedule import TimeBudget, format_duration, get_lr

# -----------------------------------------------------------------------------------------------
# default settings: GPT-2 (124M) on OpenWebText, as in nanoGPT
# I/O
out_dir = 'out'
eval_interval = 2000
log_interval = 1
eval_iters = 200
eval_only = False  # evaluate once and exit
always_save_checkpoint = True  # write ckpt.pt at every evaluation, not only when val loss improves
init_from = 'scratch'  # 'scratch', 'resume' or a GPT-2 name ('gpt2', 'gpt2-medium', ...) or HF directory
# wandb logging
wandb_log = False
wandb_project = 'owt'
wandb_run_name = 'gpt2'
# data
dataset = 'openwebtext'  # data/<dataset>/{train,val}.bin (or a directory path)
gradient_accumulation_steps = 5 * 8  # micro-steps per optimizer step (split across DDP ranks)
batch_size = 12  # micro-batch size
block_size = 1024
# model
n_layer = 12
n_head = 12
n_embd = 768
dropout = 0.0  # 0 for pretraining, 0.1+ for finetuning
bias = False
# optimizer
optimizer = 'adamw'  # 'adamw', or 'muon': Muon for the blocks' matrices, AdamW for the rest (see optim.py)
learning_rate = 6e-4  # peak AdamW learning rate
max_iters = 600000
weight_decay = 1e-1
beta1 = 0.9
beta2 = 0.95
grad_clip = 1.0  # 0 disables clipping
muon_lr = 0.02  # optimizer='muon': peak learning rate of the block matrices (same schedule)
muon_momentum = 0.95
time_budget = 0.0  # seconds from start to the last checkpoint; 0 = off (max_iters alone ends the run)
# learning rate schedule
decay_lr = True
warmup_iters = 2000
lr_decay_iters = 600000  # ~ max_iters (Chinchilla)
min_lr = 6e-5  # ~ learning_rate / 10 (Chinchilla)
# distributed
backend = 'auto'  # 'nccl' on CUDA, 'gloo' on CPU
fsdp = False  # shard parameters, gradients and optimizer state across ranks (FSDP2)
# system: 'auto' picks the best for this machine and says why
device = 'auto'  # 'cpu', 'cuda', 'cuda:0', 'mps'
dtype = 'auto'  # 'float32', 'bfloat16', 'float16'
compile = 'auto'  # torch.compile
seed = 1337  # each DDP rank uses seed + rank
peak_flops = 0.0  # FLOP/s that MFU compares against; 0 = GPU table or a measured matmul peak
# -----------------------------------------------------------------------------------------------
DEFAULTS = {k: v for k, v in globals().items()
            if not k.startswith('_') and isinstance(v, (int, float, bool, str))}
# chosen per run and machine, never taken from a checkpoint's stored config
NOT_RESUMED = ('init_from', 'out_dir', 'eval_only', 'device', 'dtype', 'compile', 'backend')


def check_config(c):
    """Range checks with messages that say how to fix the value."""
    positive = ('batch_size', 'block_size', 'eval_iters', 'eval_interval', 'log_interval',
                'gradient_accumulation_steps', 'n_layer', 'n_head', 'n_embd')
    for k in positive:
        if getattr(c, k) < 1:
            raise UserError(f"{k} must be at least 1, got {getattr(c, k)} (e.g. --{k}={DEFAULTS[k]})")
    for k in ('max_iters', 'warmup_iters', 'lr_decay_iters'):
        if getattr(c, k) < 0:
            raise UserError(f"{k} must be 0 or more, got {getattr(c, k)} (e.g. --{k}={DEFAULTS[k]})")
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
    if c.optimizer not in ('adamw', 'muon'):
        raise UserError(f"unknown optimizer {c.optimizer!r}: use adamw or muon (e.g. --optimizer=muon)")
    if c.optimizer == 'muon' and not (0 < c.muon_lr < math.inf and 0 <= c.muon_momentum < 1):
        raise UserError(f"optimizer=muon needs muon_lr > 0 and muon_momentum in [0, 1), got {c.muon_lr} "
                        f"and {c.muon_momentum} (e.g. --muon_lr=0.02 --muon_momentum=0.95)")
    if not 0 <= c.time_budget < math.inf:
        raise UserError(f"time_budget must be 0 (off) or a number of seconds, got {c.time_budget} "
                        f"(e.g. --time_budget=300)")
    if not (c.init_from in ('scratch', 'resume') or c.init_from.startswith('gpt2')
            or os.path.isdir(c.init_from)):
        raise UserError(f"unknown init_from {c.init_from!r}: use scratch, resume, gpt2, gpt2-medium, "
                        f"gpt2-large, gpt2-xl or a Hugging Face GPT-2 directory")


def resolve_resume_config(c, ckpt):
    """Settings not given on the command line (or in a config file) come from the checkpoint's
    stored config; architecture settings that were given must agree with the checkpoint."""
    given = getattr(c, '_given', None)

    def was_given(k):
        # train(c) called without main(): a value other than the default counts as given
        return k in given if given is not None else getattr(c, k) != DEFAULTS[k]

    stored = ckpt.get('config') or {}
    for k, v in stored.items():
        if k in DEFAULTS and k not in NOT_RESUMED and not was_given(k):
            try:
                setattr(c, k, _check_type(k, v, DEFAULTS[k], f"{c.out_dir} checkpoint config"))
            except UserError as e:
                common.warn_once(f"{e}; using {getattr(c, k)!r}")
    margs = ckpt['model_args']
    for k in ('n_layer', 'n_head', 'n_embd', 'bias'):
        if was_given(k) and getattr(c, k) != margs[k]:
            raise UserError(f"the checkpoint has {k}={margs[k]!r} but {k}={getattr(c, k)!r} was given: "
                            f"drop the override, or train a new model in another --out_dir")
        setattr(c, k, margs[k])
    if not was_given('block_size') and 'block_size' not in stored:
        c.block_size = margs['block_size']
    if c.block_size > margs['block_size']:
        raise UserError(f"cannot resume with block_size={c.block_size}: the checkpoint was trained with "
                        f"block_size={margs['block_size']} and position embeddings cannot grow; "
                        f"use --block_size={margs['block_size']} or less")


def load_optimizer_state(optimizer, sd, path, kind, sharded_model=None):
    """Load a checkpoint's optimizer state, with one-line errors when it cannot belong here."""
    saved = sd.get('kind', 'adamw') if isinstance(sd, dict) else 'adamw'
    if saved != kind:
        raise UserError(f"{path} was trained with optimizer={saved}, whose state cannot continue as {kind}: "
                        f"resume with --optimizer={saved}, or start a new run in another --out_dir")
    try:
        parts = optimizer.inner_states(sd) if kind == 'muon' else [(optimizer, sd)]
        for opt, part in parts:
            fit_optimizer_state(part, [p for g in opt.param_groups for p in g['params']])
        if sharded_model is not None:
            load_full_optimizer_state(sharded_model, optimizer, sd)
        else:
            optimizer.load_state_dict(sd)
    except (ValueError, KeyError, TypeError, RuntimeError) as e:
        raise UserError(f"{path}: its optimizer state does not fit this model's {kind} "
                        f"({type(e).__name__}: {str(e).splitlines()[0][:200]}); the file is damaged "
                        f"or not from this model") from None


def choose_dtype_and_compile(model, c, device_type, ddp, start_iter, budget):
    """Resolve c.dtype and c.compile: 'auto' by measurement on a CPU (autotune.py), by rule on
    GPUs and MPS. Returns the compiled model when the measurement has compiled it already."""
    measure = device_type == 'cpu' and 'auto' in (c.dtype, c.compile) and not (c.fsdp and ddp)
    if c.dtype != 'auto' or not measure:
        c.dtype = common.resolve_dtype(c.dtype, device_type, device=c.device)  # checks a fixed choice
    if not measure:
        c.compile = common.resolve_compile(c.compile, device_type)
        return None
    if c.compile not in ('auto', True, False):
        raise UserError(f"compile must be True, False or auto, got {c.compile!r}")
    why_not = common.compile_unavailable('cpu')
    if why_not and c.compile is True:
        common.warn_once(f"torch.compile unavailable ({why_not}); running eager")
        c.compile = False
    steps = (c.max_iters - start_iter + 1) * c.gradient_accumulation_steps
    dtype, math_attention, use_compile, compiled = autotune.choose(
        model, c.batch_size, c.dtype, c.compile, steps, budget.left() if budget else None, not why_not)
    if ddp:  # every rank measured; rank 0's choice holds for all
        choice = [dtype, math_attention, use_compile]
        dist.broadcast_object_list(choice, src=0)
        dtype, math_attention, use_compile = choice
        compiled = (compiled or common.compile_model(model)) if use_compile else None
    model.set_math_attention(math_attention)
    c.dtype, c.compile = dtype, use_compile
    return compiled


def train(c):
    """Run training with settings `c` (a namespace of DEFAULTS' keys); returns a summary dict."""
    check_config(c)
    if c.optimizer == 'muon' and c.fsdp and int(os.environ.get('RANK', -1)) != -1:
        # torch.optim.Muon orthogonalises each update as one matrix; FSDP holds only a shard of it
        raise UserError("optimizer=muon cannot run with fsdp=True (Muon needs each weight matrix whole, "
                        "FSDP shards it): use --fsdp=False (DDP) or --optimizer=adamw")
    ddp, rank, world_size, master = common.init_distributed(c)
    if not master:
        sys.stdout = open(os.devnull, 'w')  # rank 0 alone prints
    c.device = common.resolve_device(c.device)
    device_type = common.device_type_of(c.device)

    ckpt, ckpt_path = None, None
    if c.init_from == 'resume':
        ckpt, ckpt_path = find_resume_checkpoint(c.out_dir)
        resolve_resume_config(c, ckpt)
        check_config(c)
    config = {k: getattr(c, k) for k in DEFAULTS}  # stored in checkpoints
    budget = None
    if c.time_budget and not c.eval_only:
        saved = (ckpt or {}).get('time') or {}
        budget = TimeBudget(c.time_budget, getattr(c, '_t0', None), saved.get('spent', 0.0), saved.get('start'))
        if budget.left() <= budget.reserve(c.eval_iters, c.gradient_accumulation_steps):
            raise UserError(f"the time budget is spent: {c.out_dir} has used {budget.spent():.0f}s of "
                            f"time_budget={c.time_budget:g}s; continue with a larger one, e.g. "
                            f"--time_budget={2 * c.time_budget:g}")

    # gradient_accumulation_steps counts micro-steps of the whole job (stored so in checkpoints, so
    # a resume on another number of processes keeps the tokens per iteration); each rank does its share
    if c.gradient_accumulation_steps % world_size:
        near = world_size * max(1, round(c.gradient_accumulation_steps / world_size))
        raise UserError(f"gradient_accumulation_steps ({c.gradient_accumulation_steps}) must be divisible by "
                        f"the number of processes ({world_size}), e.g. --gradient_accumulation_steps={near}")
    c.gradient_accumulation_steps //= world_size
    tokens_per_iter = c.gradient_accumulation_steps * world_size * c.batch_size * c.block_size
    print(f"tokens per iteration will be: {tokens_per_iter:,}"
          + (f" ({world_size} processes x {c.gradient_accumulation_steps} micro-steps x {c.batch_size} batch"
             f" x {c.block_size} tokens)" if world_size > 1 else ""))
    if master:
        try:
            os.makedirs(c.out_dir, exist_ok=True)
            probe = os.path.join(c.out_dir, f'.write_test{os.getpid()}')
            open(probe, 'w').close()
            os.remove(probe)
        except OSError as e:
            raise UserError(f"cannot write to out_dir {c.out_dir!r}: {e.strerror}; choose another --out_dir")
    torch.manual_seed(c.seed + rank)
    torch.backends.cuda.matmul.allow_tf32 = True  # tf32 matmuls on Ampere+: much faster, fine for training
    torch.backends.cudnn.allow_tf32 = True

    # ---- data ----
    data_dir = dataset_dir(c.dataset)
    meta_path = os.path.join(data_dir, 'meta.pkl')
    meta_vocab_size = None
    if os.path.exists(meta_path):
        meta_vocab_size = load_meta(meta_path)['vocab_size']
        print(f"found vocab_size = {meta_vocab_size} (inside {meta_path})")

    # ---- model ----
    model_args = dict(n_layer=c.n_layer, n_head=c.n_head, n_embd=c.n_embd, block_size=c.block_size,
                      bias=c.bias, vocab_size=None, dropout=c.dropout)
    if c.init_from == 'scratch':
        print("Initializing a new model from scratch")
        if meta_vocab_size is None:
            print("defaulting to vocab_size of GPT-2 to 50304 (50257 rounded up for efficiency)")
        model_args['vocab_size'] = meta_vocab_size if meta_vocab_size is not None else 50304
        model = GPT(GPTConfig(**model_args))
    elif c.init_from == 'resume':
        print(f"Resuming training from {ckpt_path} (iter {ckpt['iter_num']})")
        for k in ARCH_KEYS:
            model_args[k] = ckpt['model_args'][k]
        model_args['block_size'] = ckpt['model_args']['block_size']
        model = model_from_checkpoint(ckpt, dropout=c.dropout)
    else:
        print(f"Initializing from OpenAI GPT-2 weights: {c.init_from}")
        try:
            model = GPT.from_pretrained(c.init_from, dict(dropout=c.dropout))
        except (ImportError, OSError, ValueError) as e:  # from_pretrained's one-line messages
            raise UserError(str(e)) from None
        for k in ARCH_KEYS:
            model_args[k] = getattr(model.config, k)
    if c.block_size < model.config.block_size:
        model.crop_block_size(c.block_size)
        model_args['block_size'] = c.block_size
    elif c.block_size > model.config.block_size:
        raise UserError(f"block_size={c.block_size} is more than the {model.config.block_size} positions "
                        f"{c.init_from} was trained with: use --block_size={model.config.block_size} or less")
    if meta_vocab_size is not None and meta_vocab_size > model_args['vocab_size']:
        raise UserError(f"{meta_path} has vocab_size {meta_vocab_size} but the model has "
                        f"{model_args['vocab_size']}: the dataset does not belong to this model")
    data = {s: open_split(data_dir, s, c.dataset, c.block_size, model_args['vocab_size'])
            for s in ('train', 'val')}
    model.to(c.device)
    compiled = choose_dtype_and_compile(model, c, device_type, ddp, ckpt['iter_num'] if ckpt else 0, budget)
    config.update(device=c.device, dtype=c.dtype, compile=c.compile)
    ctx = common.autocast_ctx(device_type, c.dtype)
    # a gradient scaler only where float16 needs one (CUDA); never created on CPU or MPS
    scaler = torch.amp.GradScaler('cuda') if device_type == 'cuda' and c.dtype == 'float16' else None

    raw_model = model
    sharded = c.fsdp and ddp
    if sharded:
        # FSDP2 swaps the parameters for sharded DTensors in place, so this comes before the
        # optimizer is made (it must hold the shards). Each block is one unit, gathered only while
        # it runs; the root unit holds the embeddings, the tied lm_head and the final LayerNorm.
        common.shard_model(model, device_type)  # on a mesh for this device type, not the machine's accelerator
    optimizer = build_optimizer(model, c, device_type)
    iter_num, best_val_loss = 0, 1e9
    if ckpt is not None:
        load_optimizer_state(optimizer, ckpt['optimizer'], ckpt_path, c.optimizer, raw_model if sharded else None)
        iter_num, best_val_loss = ckpt['iter_num'], float(ckpt['best_val_loss'])
        if scaler is not None and ckpt.get('scaler'):
            scaler.load_state_dict(ckpt['scaler'])
    if c.compile:
        if compiled is None:
            print("compiling the model... (the first iterations are slow)")
        model = compiled or common.compile_model(model)  # falls back to eager, with one warning, if compiling fails
    if ddp and not c.fsdp:
        from torch.nn.parallel import DistributedDataParallel as DDP
        model = DDP(model, device_ids=[int(os.environ['LOCAL_RANK'])] if device_type == 'cuda' else None)
    # rank 0 evaluates alone under DDP, so not through the wrapper, whose forward may talk to the other ranks
    eval_model = model.module if ddp and not sharded else model
    peak, peak_src = common.peak_flops(c.device, c.dtype, c.peak_flops)
    print(f"mfu is measured against {peak / 1e12:.3g} TFLOP/s ({peak_src})")

    batches = Batches(data, c, c.device, device_type)

    # inference mode also skips autograd's bookkeeping; FSDP writes gathered parameters during
    # forward, which inference mode forbids, so sharded runs keep no_grad
    @(torch.no_grad() if sharded else torch.inference_mode())
    def estimate_loss():
        """Mean train and val loss over eval_iters batches, the same numbers on every rank: under
        DDP rank 0 evaluates and sends its result, under FSDP (whose forward is collective) every
        rank evaluates its own batches and the means are averaged. Equal numbers mean equal save
        decisions, and saving is collective under torchrun (see checkpoint_state)."""
        means = torch.zeros(2)
        if master or sharded:
            eval_model.eval()
            for i, split in enumerate(('train', 'val')):
                losses = torch.zeros(c.eval_iters)
                for k in range(c.eval_iters):
                    X, Y = batches.get(split)
                    with ctx:
                        _, loss = eval_model(X, Y)
                    losses[k] = loss.item()
                means[i] = losses.mean()
            eval_model.train()
        if ddp:
            means = means.to(c.device)
            if sharded:
                dist.all_reduce(means)  # a sum: gloo has no average
                means /= world_size
            else:
                dist.broadcast(means, src=0)
        return {'train': means[0].item(), 'val': means[1].item()}

    def checkpoint_state():
        """What ckpt.pt / last.pt hold. Under torchrun every rank calls this at the same points:
        FSDP gathers the full weights and optimizer state (collectives that leave the result on
        rank 0 only, on the CPU), and every rank's RNG state is collected for an exact resume."""
        if sharded:
            model_sd, optim_sd = full_sharded_state(raw_model, optimizer)
        else:
            model_sd, optim_sd = raw_model.state_dict(), optimizer.state_dict()
        state = {'model': model_sd, 'optimizer': optim_sd, 'model_args': model_args,
                 'iter_num': iter_num, 'best_val_loss': best_val_loss, 'config': config,
                 'rng': dict(rng_state(batches, device_type, c.device), dropout=raw_model.dropout_masks.state()),
                 'scaler': scaler.state_dict() if scaler is not None else None,
                 'gelu_approximate': raw_model.gelu_approximate}
        if budget is not None:
            state['time'] = budget.state()  # a resumed budgeted run continues its clock and schedule
        if ddp:
            state['rng_ranks'] = [None] * world_size
            dist.all_gather_object(state['rng_ranks'], state['rng'])
        return state

    def save(name, state):
        if master:
            path = os.path.join(c.out_dir, name)
            # the loss is checked only every log_interval on CUDA and a signal can arrive at any
            # iteration, so the weights themselves are checked: a diverged model is never saved
            floats = {k: v for k, v in state['model'].items() if v.is_floating_point()}
            if floats and not torch.stack([torch.isfinite(v).all() for v in floats.values()]).all():  # one sync
                bad = next(k for k, v in floats.items() if not torch.isfinite(v).all())
                raise UserError(f"the weights are not finite at iter {iter_num} ({bad}): training diverged; "
                                f"{name} was not written and earlier checkpoints are untouched (try a lower "
                                f"--learning_rate)")
            print(f"saving checkpoint to {path}")
            t_save = time.time()
            save_checkpoint(state, path)
            if budget is not None:
                budget.save_s = time.time() - t_save

    # a new run starts a new metrics file; a resumed run appends to it
    metrics = open(os.path.join(c.out_dir, 'metrics.jsonl'), 'a' if c.init_from == 'resume' else 'w') \
        if master else None

    def log_metrics(**event):
        if metrics:
            metrics.write(json.dumps(event) + '\n')
            metrics.flush()  # one line per event, on disk before the next: a crash loses nothing

    if c.wandb_log and master:
        import wandb
        wandb.init(project=c.wandb_project, name=c.wandb_run_name, config=config)

    # Ctrl-C and SIGTERM (schedulers, torchrun) stop at the next iteration boundary and save the
    # training state to last.pt; a second signal interrupts at once.
    stop = {'signal': None}

    def on_signal(signum, frame):
        if stop['signal'] is None:
            stop['signal'], stop['at'] = signum, time.monotonic()
        elif not (ddp and time.monotonic() - stop['at'] < 1.0):
            # under torchrun a terminal's Ctrl-C reaches every rank and torchrun forwards it again:
            # a repeat within a second is that echo, not a request to abort the save
            raise KeyboardInterrupt

    old_handlers = {}
    import threading
    if threading.current_thread() is threading.main_thread():
        for s in (signal.SIGINT, signal.SIGTERM):
            old_handlers[s] = signal.signal(s, on_signal)

    resume_rng = ckpt.get('rng') if ckpt is not None else None
    if ckpt is not None and ddp:
        # every rank takes back its own random stream, when the checkpoint was saved by as many
        # processes; otherwise rank 0 continues the saved one and the others keep seed + rank
        ranks_rng = ckpt.get('rng_ranks') or []
        resume_rng = ranks_rng[rank] if len(ranks_rng) == world_size else resume_rng if master else None
        if len(ranks_rng) != world_size:
            print(f"note: {ckpt_path} was not saved by {world_size} processes: ranks other than 0 draw new "
                  f"batches, so the run will differ from an uninterrupted one")
    raw_model.dropout_masks.seed(c.seed + rank)  # CPU dropout masks (model.MaskSource)
    if resume_rng:
        set_rng_state(resume_rng, device_type, c.device)  # replays the batch that was fetched before saving
        if resume_rng.get('dropout'):
            raw_model.dropout_masks.set_state(resume_rng['dropout'])
    ckpt = None  # free the loaded tensors
    X, Y = batches.next_train()
    t_start = t0 = time.time()
    start_iter, local_iter_num, running_mfu = iter_num, 0, -1.0
    losses_log, evals_log = {}, {}
    try:
        while True:
            eval_due = iter_num % c.eval_interval == 0 or c.eval_only
            # with a time budget: close (evaluate, save, stop) when the next iteration would not fit
            closing = budget is not None and (iter_num >= c.max_iters or budget.must_close(
                eval_due, c.eval_iters, c.gradient_accumulation_steps))
            progress = budget.progress(c.eval_iters, c.gradient_accumulation_steps) if budget else 0.0
            want_stop = stop['signal'] is not None
            if ddp:
                # every rank must stop, close and set the learning rate alike: rank 0's signal flag
                # and clock decide. Without a budget they agree at log_interval boundaries only, so a
                # CUDA run does not pay a host sync for this every iteration.
                want_stop = False
                if budget is not None or iter_num % c.log_interval == 0:
                    flag = torch.tensor([float(stop['signal'] is not None), float(closing and master),
                                         progress if master else 0.0], dtype=torch.float64, device=c.device)
                    dist.all_reduce(flag)
                    sig, close, prog = flag.tolist()
                    want_stop, closing, progress = sig > 0, close > 0, prog
            if c.decay_lr:
                lr = get_lr(progress * c.lr_decay_iters if budget else iter_num, c)
            else:
                lr = c.learning_rate
            set_lr(optimizer, lr, c.learning_rate)
            if want_stop:
                save('last.pt', checkpoint_state())  # every rank takes part; rank 0 writes
                print(f"stopped by signal at iter {iter_num}: training state saved to "
                      f"{os.path.join(c.out_dir, 'last.pt')}; continue with --init_from=resume")
                break
            if eval_due or closing:  # all ranks: they save together
                t_eval = time.time()
                losses = estimate_loss()
                if budget is not None:
                    budget.eval_s = time.time() - t_eval
                elapsed = time.time() - t_start
                print(f"step {iter_num}: train loss {losses['train']:.4f}, val loss {losses['val']:.4f}, "
                      f"elapsed {elapsed:.1f}s")
                evals_log[iter_num] = (losses['train'], losses['val'])
                log_metrics(event='eval', iter=iter_num, train_loss=losses['train'],
                            val_loss=losses['val'], lr=lr, elapsed=elapsed)
                if c.wandb_log and master:
                    wandb.log({"iter": iter_num, "train/loss": losses['train'], "val/loss": losses['val'],
                               "lr": lr, "mfu": running_mfu * 100})
                if not math.isfinite(losses['val']):
                    raise UserError(f"validation loss is {losses['val']} at iter {iter_num}: training diverged; "
                                    f"checkpoints were left untouched (try a lower --learning_rate)")
                if losses['val'] < best_val_loss or c.always_save_checkpoint:
                    best_val_loss = losses['val']
                    if iter_num > 0 and not c.eval_only:
                        save('ckpt.pt', checkpoint_state())
                        last = os.path.join(c.out_dir, 'last.pt')
                        if master and os.path.exists(last):
                            os.remove(last)  # ckpt.pt is now the latest state too
                elif local_iter_num > 0 and not c.eval_only:  # a run's first state is the one it loaded
                    save('last.pt', checkpoint_state())
            if c.eval_only or closing:
                break
            if budget is not None:
                budget.loop_started()
                t_iter = time.time()
            # ---- one optimizer step, gradient_accumulation_steps micro-steps ----
            for micro_step in range(c.gradient_accumulation_steps):
                # FSDP reduce-scatters every micro-step: its gradients stay sharded, which is
                # the memory it exists to save; DDP all-reduces only on the last micro-step
                if ddp and not c.fsdp:
                    model.require_backward_grad_sync = (micro_step == c.gradient_accumulation_steps - 1)
                with ctx:
                    _, loss = model(X, Y)
                    loss = loss / c.gradient_accumulation_steps
                X, Y = batches.next_train()  # fetch the next batch while the GPU works
                (scaler.scale(loss) if scaler else loss).backward()
            if c.grad_clip != 0.0:
                if scaler:
                    scaler.unscale_(optimizer)
                torch.nn.utils.clip_grad_norm_(model.parameters(), c.grad_clip)
            if scaler:
                scaler.step(optimizer)
                scaler.update()
            else:
                optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            t1 = time.time()
            dt, t0 = t1 - t0, t1
            if budget is not None:
                budget.iter_done(t1 - t_iter)  # the iteration alone, without an evaluation before it
            check_now = device_type != 'cuda' or iter_num % c.log_interval == 0
            if check_now:
                lossf = loss.item() * c.gradient_accumulation_steps  # the last micro-step's loss
                if not math.isfinite(lossf):
                    raise UserError(f"loss is {lossf} at iter {iter_num}: training diverged; checkpoints "
                                    f"were left untouched (try a lower --learning_rate or --dtype=float32)")
                losses_log[iter_num] = lossf
            if iter_num % c.log_interval == 0 and master:
                if local_iter_num >= 5:  # the first iterations include compilation and warm-up
                    mfu = raw_model.estimate_mfu(c.batch_size * c.gradient_accumulation_steps, dt, peak)
                    running_mfu = mfu if running_mfu == -1.0 else 0.9 * running_mfu + 0.1 * mfu
                tok_s = tokens_per_iter / dt
                left = (f"{format_duration(budget.left())} of budget left" if budget is not None
                        else f"eta {format_duration(dt * (c.max_iters - iter_num))}")
                print(f"iter {iter_num}: loss {lossf:.4f}, time {dt * 1000:.2f}ms, mfu {running_mfu * 100:.2f}%, "
                      f"{tok_s:,.0f} tok/s, {left}")
                log_metrics(event='iter', iter=iter_num, loss=lossf, lr=lr, time_ms=dt * 1000,
                            mfu=running_mfu * 100, tok_s=tok_s, elapsed=time.time() - t_start)
            iter_num += 1
            local_iter_num += 1
            if iter_num > c.max_iters and budget is None:
                break
    finally:
        for s, h in old_handlers.items():
            signal.signal(s, h)
        if metrics:
            metrics.close()
        # the process group outlives this frame: main() destroys it once the DDP/FSDP model is freed
    ckpt_file = os.path.join(c.out_dir, 'ckpt.pt')
    if master and not c.eval_only and stop['signal'] is None:
        if budget is not None:
            print(f"done: {iter_num - start_iter} iterations fitted in the {format_duration(c.time_budget)} budget "
                  f"({format_duration(budget.spent())} used, {iter_num} in all), best val loss {best_val_loss:.4f}")
        else:
            print(f"done: {iter_num} iterations in {format_duration(time.time() - t_start)}, "
                  f"best val loss {best_val_loss:.4f}")
        if os.path.exists(ckpt_file):
            print(f"best model: {ckpt_file}; sample from it with: python sample.py --out_dir={c.out_dir}")
    return {'iter_num': iter_num, 'best_val_loss': best_val_loss, 'losses': losses_log,
            'evals': evals_log, 'interrupted': stop['signal'], 'config': config}


def main(argv=None):
    if int(os.environ.get('RANK', 0)) != 0:
        sys.stdout = open(os.devnull, 'w')  # under torchrun rank 0 alone prints, settings included
    own_command = argv is None
    argv = sys.argv[1:] if own_command else argv
    c = SimpleNamespace(**apply_overrides(DEFAULTS, argv))
    c._given = given_settings(argv, DEFAULTS)  # what a resume keeps instead of the checkpoint's config
    c._t0 = T_IMPORT if own_command else time.time()  # a time budget's clock: the command's start
    try:
        summary = train(c)
    except BaseException as e:
        # the traceback keeps train()'s locals (the DDP/FSDP model, which holds the process group)
        # alive: clear them so that the group is freed below, not later by the model (see
        # common.shutdown_distributed); the message and line numbers stay
        import traceback
        traceback.clear_frames(e.__traceback__)
        raise
    finally:
        common.shutdown_distributed()  # after train() has returned: nothing holds the group but torch
    if summary['interrupted'] is not None:
        sys.exit(128 + summary['interrupted'])
    return summary


if __name__ == '__main__':
    common.run_cli(main)
