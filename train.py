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

train() reads top to bottom: setup, then the loop (learning rate, evaluate and save, micro-steps,
optimizer step, log). What the loop calls lives beside it: checkpoint.Saver writes the training
state, metrics.py prints and records, stopping.py decides when a signal or the time budget ends it.
"""

import time

_T_IMPORT = time.time()  # a time budget counts from here: importing torch is part of the run

import math
import os
import sys
from types import SimpleNamespace

import torch
import torch.distributed as dist

import autotune
import devices
import distributed
from checkpoint import (ARCH_KEYS, Saver, find_resume_checkpoint, load_optimizer_state, model_from_checkpoint,
                        resolve_resume_config, restore_rng)
from configurator import apply_overrides, given_settings
from dataset import Batches, dataset_dir, load_meta, open_split
from errors import UserError, run_cli
from metrics import Metrics
from model import GPT, GPTConfig
from optim import build_optimizer, resolve_optimizer, set_lr
from schedule import TimeBudget, get_lr
from stopping import StopSignals, stop_close_progress

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
optimizer = 'adamw'  # 'adamw'; 'muon': Muon for the blocks' matrices, AdamW for the rest; 'auto' (see optim.py)
learning_rate = 6e-4  # peak AdamW learning rate
max_iters = 600000
time_budget = 0.0  # seconds from start to the last checkpoint; 0 = off (max_iters alone ends the run)
weight_decay = 1e-1
beta1 = 0.9
beta2 = 0.95
grad_clip = 1.0  # 0 disables clipping
muon_lr = 0.02  # optimizer='muon': peak learning rate of the block matrices (same schedule)
muon_momentum = 0.95
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
    if c.optimizer not in ('adamw', 'muon', 'auto'):
        raise UserError(f"unknown optimizer {c.optimizer!r}: use adamw, muon or auto (e.g. --optimizer=muon)")
    if c.optimizer in ('muon', 'auto') and not (0 < c.muon_lr < math.inf and 0 <= c.muon_momentum < 1):
        raise UserError(f"optimizer=muon needs muon_lr > 0 and muon_momentum in [0, 1), got {c.muon_lr} "
                        f"and {c.muon_momentum} (e.g. --muon_lr=0.02 --muon_momentum=0.95)")
    if c.optimizer == 'muon' and c.fsdp and int(os.environ.get('RANK', -1)) != -1:
        # torch.optim.Muon orthogonalises each update as one matrix; FSDP holds only a shard of it
        raise UserError("optimizer=muon cannot run with fsdp=True (Muon needs each weight matrix whole, "
                        "FSDP shards it): use --fsdp=False (DDP) or --optimizer=adamw")
    if not 0 <= c.time_budget < math.inf:
        raise UserError(f"time_budget must be 0 (off) or a number of seconds, got {c.time_budget} "
                        f"(e.g. --time_budget=300)")
    if not (c.init_from in ('scratch', 'resume') or c.init_from.startswith('gpt2')
            or os.path.isdir(c.init_from)):
        raise UserError(f"unknown init_from {c.init_from!r}: use scratch, resume, gpt2, gpt2-medium, "
                        f"gpt2-large, gpt2-xl or a Hugging Face GPT-2 directory")


# ---- setup --------------------------------------------------------------------------------------

def start_processes(c):
    """Check the settings, join torchrun's process group (under torchrun) and choose the device
    (c.device). Returns (distributed.Procs, device type)."""
    check_config(c)
    procs = distributed.init_distributed(c)
    if not procs.master:
        sys.stdout = open(os.devnull, 'w')  # rank 0 alone prints
    c.device = devices.resolve_device(c.device)
    return procs, devices.device_type_of(c.device)


def load_resume_checkpoint(c):
    """With init_from='resume': (the latest checkpoint in out_dir, its path), and the settings it
    was trained with in c where none were given. Otherwise (None, None)."""
    if c.init_from != 'resume':
        return None, None
    ckpt, ckpt_path = find_resume_checkpoint(c.out_dir, best=c.eval_only)
    resolve_resume_config(c, ckpt, DEFAULTS, NOT_RESUMED)
    if c.eval_only:
        print(f"evaluating {ckpt_path} (iteration {ckpt['iter_num']}) on {c.eval_iters} batches per split")
    check_config(c)
    return ckpt, ckpt_path


def start_budget(c, ckpt):
    """The run's TimeBudget, None without one. A resumed run continues its clock and schedule;
    a budget already spent is refused before anything is built."""
    if not c.time_budget or c.eval_only:
        return None
    saved = (ckpt or {}).get('time') or {}
    budget = TimeBudget(c.time_budget, getattr(c, '_t0', None), saved.get('spent', 0.0), saved.get('start'))
    if budget.left() <= budget.reserve(c.eval_iters, c.gradient_accumulation_steps) or budget.spent_by(saved):
        raise UserError(f"the time budget is spent: {c.out_dir} has used {budget.spent():.0f}s of "
                        f"time_budget={c.time_budget:g}s; continue with a larger one, e.g. "
                        f"--time_budget={2 * c.time_budget:g}")
    return budget


def share_micro_steps(c, world_size):
    """gradient_accumulation_steps counts micro-steps of the whole job (stored so in checkpoints,
    so a resume on another number of processes keeps the tokens per iteration); each rank keeps
    its share in c. Returns the tokens per iteration."""
    if c.gradient_accumulation_steps % world_size:
        near = world_size * max(1, round(c.gradient_accumulation_steps / world_size))
        raise UserError(f"gradient_accumulation_steps ({c.gradient_accumulation_steps}) must be divisible by "
                        f"the number of processes ({world_size}), e.g. --gradient_accumulation_steps={near}")
    c.gradient_accumulation_steps //= world_size
    tokens_per_iter = c.gradient_accumulation_steps * world_size * c.batch_size * c.block_size
    print(f"tokens per iteration will be: {tokens_per_iter:,}"
          + (f" ({world_size} processes x {c.gradient_accumulation_steps} micro-steps x {c.batch_size} batch"
             f" x {c.block_size} tokens)" if world_size > 1 else ""))
    return tokens_per_iter


def check_out_dir(out_dir):
    """Make out_dir, and find out now, not at the first checkpoint, that it cannot be written."""
    try:
        os.makedirs(out_dir, exist_ok=True)
        probe = os.path.join(out_dir, f'.write_test{os.getpid()}')
        open(probe, 'w').close()
        os.remove(probe)
    except OSError as e:
        raise UserError(f"cannot write to out_dir {out_dir!r}: {e.strerror}; choose another --out_dir")


def init_model(c, ckpt, ckpt_path, data_dir):
    """The model to train, on the CPU: new (vocab_size from the dataset's meta.pkl, if it has
    one), the resumed checkpoint's, or GPT-2's; cropped to block_size. Returns (model,
    model_args), the arguments checkpoints store."""
    meta_path = os.path.join(data_dir, 'meta.pkl')
    meta_vocab_size = None
    if os.path.exists(meta_path):
        meta_vocab_size = load_meta(meta_path)['vocab_size']
        print(f"found vocab_size = {meta_vocab_size} (inside {meta_path})")
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
    return model, model_args


def compile_and_wrap(model, compiled, c, ddp, device_type):
    """(the model to train: compiled if c.compile, in DDP under torchrun without FSDP; the model
    to evaluate). `compiled`: the model autotune.py compiled already, or None."""
    if c.compile:
        if compiled is None:
            print("compiling the model... (the first iterations are slow)")
        model = compiled or devices.compile_model(model)  # falls back to eager, with one warning, if compiling fails
    if ddp and not c.fsdp:
        from torch.nn.parallel import DistributedDataParallel as DDP
        device_ids = [int(os.environ['LOCAL_RANK'])] if device_type == 'cuda' else None
        # rank 0 evaluates alone under DDP, so not through the wrapper, whose forward may talk to the other ranks
        return DDP(model, device_ids=device_ids), model
    return model, model


# ---- what the loop calls ------------------------------------------------------------------------

def estimate_loss(model, batches, ctx, c, procs):
    """Mean train and val loss over eval_iters batches, the same numbers on every rank: under
    DDP rank 0 evaluates and sends its result, under FSDP (whose forward is collective) every
    rank evaluates its own batches and the means are averaged. Equal numbers mean equal save
    decisions, and saving is collective under torchrun (see checkpoint.Saver)."""
    sharded = c.fsdp and procs.ddp
    # inference mode also skips autograd's bookkeeping; FSDP writes gathered parameters during
    # forward, which inference mode forbids, so sharded runs keep no_grad
    with torch.no_grad() if sharded else torch.inference_mode():
        means = torch.zeros(2)
        if procs.master or sharded:
            model.eval()
            for i, split in enumerate(('train', 'val')):
                losses = torch.zeros(c.eval_iters)
                for k in range(c.eval_iters):
                    X, Y = batches.get(split)
                    with ctx:
                        _, loss = model(X, Y)
                    losses[k] = loss.item()
                means[i] = losses.mean()
            model.train()
        if procs.ddp:
            means = means.to(c.device)
            if sharded:
                dist.all_reduce(means)  # a sum: gloo has no average
                means /= procs.world_size
            else:
                dist.broadcast(means, src=0)
        return {'train': means[0].item(), 'val': means[1].item()}


def optimizer_step(model, optimizer, scaler, grad_clip):
    """Clip the accumulated gradients (grad_clip 0: no clipping), step, and clear them."""
    if grad_clip != 0.0:
        if scaler:
            scaler.unscale_(optimizer)
        torch.nn.utils.clip_grad_norm_(model.parameters(), grad_clip)
    if scaler:
        scaler.step(optimizer)
        scaler.update()
    else:
        optimizer.step()
    optimizer.zero_grad(set_to_none=True)


# ---- training -----------------------------------------------------------------------------------

def train(c):
    """Run training with settings `c` (a namespace of DEFAULTS' keys); returns a summary dict."""
    procs, device_type = start_processes(c)
    ddp, rank, world_size, master = procs
    ckpt, ckpt_path = load_resume_checkpoint(c)
    c.optimizer = resolve_optimizer(c.optimizer, device_type, c.device, c.fsdp and ddp)
    config = {k: getattr(c, k) for k in DEFAULTS}  # stored in checkpoints
    budget = start_budget(c, ckpt)
    tokens_per_iter = share_micro_steps(c, world_size)
    if master:
        check_out_dir(c.out_dir)
    torch.manual_seed(c.seed + rank)
    torch.backends.cuda.matmul.allow_tf32 = True  # tf32 matmuls on Ampere+: much faster, fine for training
    torch.backends.cudnn.allow_tf32 = True

    # ---- data, model, dtype and compile ----
    data_dir = dataset_dir(c.dataset)
    model, model_args = init_model(c, ckpt, ckpt_path, data_dir)
    data = {s: open_split(data_dir, s, c.dataset, c.block_size, model_args['vocab_size']) for s in ('train', 'val')}
    model.to(c.device)
    compiled = autotune.choose_dtype_and_compile(model, c, device_type, ddp, ckpt['iter_num'] if ckpt else 0, budget)
    config.update(device=c.device, dtype=c.dtype, compile=c.compile)
    ctx = devices.autocast_ctx(device_type, c.dtype)
    # a gradient scaler only where float16 needs one (CUDA); never created on CPU or MPS
    scaler = torch.amp.GradScaler('cuda') if device_type == 'cuda' and c.dtype == 'float16' else None

    # ---- optimizer, resumed training state ----
    raw_model, sharded = model, c.fsdp and ddp
    if sharded:
        # FSDP2 swaps the parameters for sharded DTensors in place, so this comes before the
        # optimizer is made (it must hold the shards). Each block is one unit, gathered only while
        # it runs; the root unit holds the embeddings, the tied lm_head and the final LayerNorm.
        distributed.shard_model(model, device_type)  # on a mesh for this device type, not the machine's accelerator
    optimizer = build_optimizer(model, c, device_type)
    iter_num, best_val_loss = 0, 1e9
    if ckpt is not None:
        load_optimizer_state(optimizer, ckpt['optimizer'], ckpt_path, c.optimizer, raw_model if sharded else None)
        iter_num, best_val_loss = ckpt['iter_num'], float(ckpt['best_val_loss'])
        if scaler is not None and ckpt.get('scaler'):
            scaler.load_state_dict(ckpt['scaler'])
    model, eval_model = compile_and_wrap(model, compiled, c, ddp, device_type)
    peak, peak_src = devices.peak_flops(c.device, c.dtype, c.peak_flops)
    print(f"mfu is measured against {peak / 1e12:.3g} TFLOP/s ({peak_src})")
    batches = Batches(data, c, c.device, device_type)
    saver = Saver(c, procs, raw_model, optimizer, scaler, batches, model_args, config, budget, device_type)

    # ---- the loop ----
    with Metrics(c, config, master, raw_model, peak, tokens_per_iter, budget) as metrics, StopSignals(ddp) as stop:
        raw_model.dropout_masks.seed(c.seed + rank)  # CPU dropout masks (model.MaskSource)
        if ckpt is not None:
            restore_rng(ckpt, ckpt_path, procs, raw_model, device_type, c.device)
        ckpt = None  # free the loaded tensors
        X, Y = batches.next_train()
        t0 = metrics.start()  # elapsed times, and the first iteration's, count from here
        start_iter, local_iter_num = iter_num, 0
        losses_log, evals_log = {}, {}
        while True:
            # the learning rate; stop after a signal, or close (evaluate, save, stop) at the budget's end
            eval_due = iter_num % c.eval_interval == 0 or c.eval_only
            want_stop, closing, progress = stop_close_progress(c, procs, stop, budget, iter_num, eval_due)
            lr = get_lr(progress * c.lr_decay_iters if budget else iter_num, c) if c.decay_lr else c.learning_rate
            set_lr(optimizer, lr, c.learning_rate)
            if want_stop:
                saver.save('last.pt', iter_num, best_val_loss)
                print(f"stopped by signal at iter {iter_num}: training state saved to "
                      f"{os.path.join(c.out_dir, 'last.pt')}; continue with --init_from=resume")
                break

            # evaluate and save: all ranks, they save together
            if eval_due or closing:
                t_eval = time.time()
                losses = estimate_loss(eval_model, batches, ctx, c, procs)
                if budget is not None:
                    budget.eval_s = time.time() - t_eval
                metrics.eval(iter_num, losses, lr)  # prints 'step N: train loss ...'
                evals_log[iter_num] = (losses['train'], losses['val'])
                if not math.isfinite(losses['val']):
                    raise UserError(f"validation loss is {losses['val']} at iter {iter_num}: training diverged; "
                                    f"checkpoints were left untouched (try a lower --learning_rate)")
                if losses['val'] < best_val_loss or c.always_save_checkpoint:
                    best_val_loss = losses['val']
                    if iter_num > 0 and not c.eval_only:
                        saver.save('ckpt.pt', iter_num, best_val_loss)
                elif local_iter_num > 0 and not c.eval_only:  # a run's first state is the one it loaded
                    saver.save('last.pt', iter_num, best_val_loss)
            if c.eval_only or closing:
                break

            # one optimizer step: gradient_accumulation_steps micro-steps
            if budget is not None:
                budget.loop_started()
                t_iter = time.time()
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
            optimizer_step(model, optimizer, scaler, c.grad_clip)

            # timing and logging
            t1 = time.time()
            dt, t0 = t1 - t0, t1
            if budget is not None:
                budget.iter_done(t1 - t_iter)  # the iteration alone, without an evaluation before it
            if device_type != 'cuda' or iter_num % c.log_interval == 0:  # .item() waits for the GPU
                lossf = loss.item() * c.gradient_accumulation_steps  # the last micro-step's loss
                if not math.isfinite(lossf):
                    raise UserError(f"loss is {lossf} at iter {iter_num}: training diverged; checkpoints "
                                    f"were left untouched (try a lower --learning_rate or --dtype=float32)")
                losses_log[iter_num] = lossf
            if iter_num % c.log_interval == 0 and master:
                metrics.iteration(iter_num, local_iter_num, lossf, lr, dt)  # prints 'iter N: loss ...'
            iter_num += 1
            local_iter_num += 1
            if iter_num > c.max_iters and budget is None:
                break
    # the process group outlives this frame: main() destroys it once the DDP/FSDP model is freed
    if master and not c.eval_only and stop.received is None:
        metrics.summary(start_iter, iter_num, best_val_loss)
    return {'iter_num': iter_num, 'best_val_loss': best_val_loss, 'losses': losses_log,
            'evals': evals_log, 'interrupted': stop.received, 'config': config}


def main(argv=None):
    if int(os.environ.get('RANK', 0)) != 0:
        sys.stdout = open(os.devnull, 'w')  # under torchrun rank 0 alone prints, settings included
    own_command = argv is None
    argv = sys.argv[1:] if own_command else argv
    c = SimpleNamespace(**apply_overrides(DEFAULTS, argv))
    c._given = given_settings(argv, DEFAULTS)  # what a resume keeps instead of the checkpoint's config
    c._t0 = _T_IMPORT if own_command else time.time()  # a time budget's clock: the command's start
    try:
        summary = train(c)
    except BaseException as e:
        # the traceback keeps train()'s locals (the DDP/FSDP model, which holds the process group)
        # alive: clear them so that the group is freed below, not later by the model (see
        # distributed.shutdown_distributed); the message and line numbers stay
        import traceback
        traceback.clear_frames(e.__traceback__)
        raise
    finally:
        distributed.shutdown_distributed()  # after train() has returned: nothing holds the group but torch
    if summary['interrupted'] is not None:
        sys.exit(128 + summary['interrupted'])
    return summary


if __name__ == '__main__':
    run_cli(main)
