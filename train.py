"""
Train a GPT, on one device or on several (torchrun).

    python data/shakespeare_char/prepare.py
    python train.py config/train_shakespeare_char.py              # the 10.65M model, sized for a GPU
    python train.py config/train_shakespeare_char_cpu.py          # five minutes on a CPU
    python train.py config/train_shakespeare_char.py --init_from=resume   # continue a run
    python train.py config/train_shakespeare_char_cpu.py --init_from=out-shakespeare-char-cpu \
        --dataset=mine --out_dir=out-mine      # finetune that model on data/mine (a fresh optimizer)
    torchrun --standalone --nproc_per_node=4 train.py config/train_gpt2.py

The settings are the module-level variables below; config files and --key=value override them
(configurator.py). out_dir/ckpt.pt is the model sample.py reads, written at every evaluation (with
always_save_checkpoint=False only when the validation loss improves); out_dir/last.pt is the latest
training state while it is newer, written when the run is stopped (Ctrl-C, SIGTERM) and, with
always_save_checkpoint=False, when an evaluation does not improve. init_from='resume' continues
from the newer of the two, and computes what the run would have computed had it never stopped.

Read train() from the top: the settings and what they resolve to, the data and the model, the
optimizer, then the training loop. What 'auto' chooses, torchrun, the CPU fast paths, checkpoint
files, the time budget, signals and the console lines live in the nanogpt/ package, each behind a
one-line call (docs/layout.md draws the map).
"""

import time

_T_IMPORT = time.time()  # a time budget counts from here: importing torch is part of the run

import math
import sys
from types import SimpleNamespace

import numpy as np
import torch

from configurator import apply_overrides, given_settings, resumed_settings, settings_of
from model import GPT, GPTConfig
from nanogpt import autotune, checkpoint, cpu, distributed, memory, outdir, runs, settings
from nanogpt.budget import start_budget
from nanogpt.control import RunControl, watched
from nanogpt.data import GPT2_PADDED_VOCAB, GPT2_VOCAB, dataset_dir, meta_vocab_size, open_split
from nanogpt.devices import autocast_ctx, check_torch_version
from nanogpt.errors import UserError, run_cli
from nanogpt.optim import build_optimizer, clip_gradients, set_lr
from nanogpt.signals import abandonable

# -----------------------------------------------------------------------------------------------
# default settings: GPT-2 (124M) on OpenWebText, as in nanoGPT
# I/O
out_dir = 'out'
eval_interval = 2000
log_interval = 1
eval_iters = 200
eval_only = False  # evaluate once and exit
always_save_checkpoint = True  # write ckpt.pt at every evaluation, not only when val loss improves
init_from = 'scratch'  # 'scratch', 'resume', a checkpoint to finetune (out_dir or ckpt.pt), a GPT-2 name or HF directory
sample_every_eval = False  # print a short sample after each evaluation but the first (watch it learn)
sample_start = '\n'  # its prompt (sample.py's start)
sample_max_new_tokens = 200  # its length in tokens
loss_plot = True  # draw out_dir/loss.png when the run ends (where matplotlib is installed)
keep_previous_runs = True  # a new run moves an earlier run's files in out_dir to out_dir/previous/run-N/
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
optimizer = 'adamw'  # 'adamw'; 'muon': Muon for the blocks' matrices, AdamW for the rest; 'auto' (see nanogpt/optim.py)
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
backend = 'auto'  # 'nccl' on CUDA, 'gloo' on CPU and on Windows
fsdp = False  # shard parameters, gradients and optimizer state across ranks (FSDP2)
# system: 'auto' picks the best for this machine and says why
device = 'auto'  # 'cpu', 'cuda', 'cuda:0', 'mps'
dtype = 'auto'  # 'float32', 'bfloat16', 'float16'
compile = 'auto'  # torch.compile
seed = 1337  # each DDP rank uses seed + rank
peak_flops = 0.0  # FLOP/s that MFU compares against; 0 = GPU table or a measured matmul peak
# -----------------------------------------------------------------------------------------------
DEFAULTS = settings_of(globals())


def get_batch(data, c, run, batches=1):
    """A batch of batch_size random windows of `data` (a split's uint16 memmap): inputs x (B, T)
    and targets y (B, T), the same windows shifted by one token, on run.device. batches=k draws k
    such batches, one after the other, as one (k * B, T) batch."""
    ix = torch.cat([torch.randint(len(data) - c.block_size, (c.batch_size,)) for _ in range(batches)])
    rows = torch.from_numpy(data[ix.numpy()[:, None] + np.arange(c.block_size + 1)].astype(np.int64))  # (B, T+1)
    # contiguous copies: pin_memory keeps strides, and a strided pinned tensor is copied through
    # a pageable temporary, which loses the asynchronous transfer
    x, y = rows[:, :-1].contiguous(), rows[:, 1:].contiguous()
    if run.device_type == 'cuda':
        # pinned memory: the copy to the GPU runs while the GPU computes
        return x.pin_memory().to(run.device, non_blocking=True), y.pin_memory().to(run.device, non_blocking=True)
    return x.to(run.device), y.to(run.device)


def get_lr(it, c):
    """The learning rate at iteration `it` (a fraction, in a time-budgeted run): linear warmup,
    cosine decay to min_lr at lr_decay_iters, then min_lr."""
    if it < c.warmup_iters:
        return c.learning_rate * (it + 1) / (c.warmup_iters + 1)
    if it > c.lr_decay_iters:
        return c.min_lr
    decay_ratio = (it - c.warmup_iters) / (c.lr_decay_iters - c.warmup_iters)
    coeff = 0.5 * (1.0 + math.cos(math.pi * decay_ratio))  # from 1 down to 0
    return c.min_lr + coeff * (c.learning_rate - c.min_lr)


@torch.no_grad()
def estimate_loss(model, data, ctx, c, run, ctl):
    """The mean loss over eval_iters batches of each split. On a GPU several batches go through one
    forward (run.eval_batches of them: fewer, larger launches). Under torchrun every process
    evaluates its own batches and the means are averaged, so all take the same save decisions."""
    out = {}
    model.eval()
    for split in ('train', 'val'):
        losses = torch.zeros(c.eval_iters // run.eval_batches, device=run.device)
        for k in range(len(losses)):
            X, Y = get_batch(data[split], c, run, run.eval_batches)
            with ctx:
                logits, loss = model(X, Y)
            losses[k] = loss  # kept on the device: one host sync per evaluation, not one per batch
            # progress lines on a long evaluation; a signal ends it; the time budget's end cuts it short
            if ctl.eval_progress(split, k):
                losses = losses[:k + 1]
                break
        out[split] = losses.mean()
    model.train()
    return distributed.mean_over_processes(out, run)


def init_model(c, ckpt, vocab_size):
    """The model to train, on the CPU: a new one (vocab_size from the dataset's meta.pkl, or
    GPT-2's), the resumed checkpoint's, another run's checkpoint (its weights only: a fresh
    optimizer, iteration 0), or OpenAI's GPT-2; cropped to block_size. Returns the model and
    model_args, the arguments a checkpoint stores to rebuild it."""
    model_args = dict(n_layer=c.n_layer, n_head=c.n_head, n_embd=c.n_embd, block_size=c.block_size,
                      bias=c.bias, vocab_size=None, dropout=c.dropout)
    if c.init_from == 'scratch':
        print("Initializing a new model from scratch")
        if vocab_size is None:
            print(f"defaulting to vocab_size of GPT-2 to {GPT2_PADDED_VOCAB} ({GPT2_VOCAB} rounded up for efficiency)")
        model_args['vocab_size'] = vocab_size if vocab_size is not None else GPT2_PADDED_VOCAB
        model = GPT(GPTConfig(**model_args))
    elif c.init_from == 'resume':
        print(f"Resuming training from {ckpt['path']} (iter {ckpt['iter_num']})")
        model = checkpoint.model_from_checkpoint(ckpt, dropout=c.dropout)
    elif checkpoint.init_source(c.init_from) == 'checkpoint':
        model = checkpoint.finetune_start(c)  # checks that its vocabulary is the dataset's
    else:
        print(f"Initializing from OpenAI GPT-2 weights: {c.init_from}")
        try:
            model = GPT.from_pretrained(c.init_from, dict(dropout=c.dropout))
        except (ImportError, OSError, ValueError) as e:  # from_pretrained's one-line messages
            raise UserError(str(e)) from None
    model_args.update({k: getattr(model.config, k) for k in checkpoint.ARCH_KEYS})  # the model's own shape
    # crop down the model's block size, if asked for
    if c.block_size < model.config.block_size:
        model.crop_block_size(c.block_size)
        model_args['block_size'] = c.block_size
    elif c.block_size > model.config.block_size:
        raise UserError(f"block_size={c.block_size} is more than the {model.config.block_size} positions "
                        f"{c.init_from} was trained with: use --block_size={model.config.block_size} or less")
    if vocab_size is not None and vocab_size > model_args['vocab_size']:
        raise UserError(f"the dataset's meta.pkl has vocab_size {vocab_size} but the model has "
                        f"{model_args['vocab_size']}: the dataset does not belong to this model")
    return model, model_args


@watched  # signals handled from the first line, and a progress line in any silence (nanogpt/progress.py)
def train(c, given=None, t0=None):
    """Train with settings `c` (a namespace of DEFAULTS' keys) and return a summary. `given`: the
    settings the command line named (on resume they win over the checkpoint's); `t0`: when the
    command started (a time budget counts from there)."""
    # ---- settings: what was given, what a resumed run keeps, what 'auto' resolves to ----
    ckpt = checkpoint.find_resume_checkpoint(c.out_dir, best=c.eval_only) if c.init_from == 'resume' else None
    c = resumed_settings(c, ckpt, DEFAULTS, given)  # a resumed run keeps its settings, unless given again
    settings.check_settings(c, DEFAULTS)
    run = settings.resolve_run(c)  # torchrun's processes, the device, the optimizer, micro-steps per process
    budget = start_budget(c, ckpt, t0)  # None without a time budget
    if run.master:
        outdir.check_out_dir(c.out_dir, lock=not c.eval_only)  # and take it: one training run per out_dir
    torch.manual_seed(c.seed + run.rank)
    torch.backends.cuda.matmul.allow_tf32 = True  # tf32 matmuls on Ampere and later: much faster, fine for training
    torch.backends.cudnn.allow_tf32 = True

    # ---- data and model ----
    vocab_size = meta_vocab_size(data_dir := dataset_dir(c.dataset))  # None: no meta.pkl, GPT-2's vocabulary
    memory_plan = memory.check_fits(c, run, ckpt, vocab_size)  # before allocating: one line where the run cannot fit
    model, model_args = init_model(c, ckpt, vocab_size)
    data = {split: open_split(data_dir, split, c.dataset, c.block_size, model_args['vocab_size'])
            for split in ('train', 'val')}
    model.to(run.device)
    run, compiled = autotune.choose_for_training(model, c, run, ckpt, budget)  # dtype, compile: measured where auto
    masks = cpu.MaskSource()  # dropout masks for eager CPU training; seeded below
    cpu.prepare_training(model, run, masks)  # eager on a CPU: those masks, and the written-out attention if chosen
    ctx = autocast_ctx(run.device_type, run.dtype)
    # a gradient scaler only for float16 on CUDA; disabled, it passes everything through
    scaler = torch.amp.GradScaler('cuda', enabled=(run.dtype == 'float16' and run.device_type == 'cuda'))
    config = dict(vars(c), device=run.device, dtype=run.dtype, compile=run.compile, optimizer=run.optimizer)

    # ---- optimizer, and the training state a resumed run continues from ----
    raw_model = model
    distributed.shard(model, run)  # FSDP (fsdp=True under torchrun): before the optimizer, which must hold the shards
    optimizer = build_optimizer(model, c, run.optimizer, run.device_type)
    iter_num, best_val_loss = 0, 1e9
    if ckpt is not None:
        distributed.load_optimizer_state(model, optimizer, ckpt, run)  # FSDP: each process keeps its shards
        iter_num, best_val_loss = ckpt['iter_num'], float(ckpt['best_val_loss'])
        if scaler.is_enabled() and ckpt.get('scaler'):
            scaler.load_state_dict(ckpt['scaler'])
    model, eval_model = distributed.compile_and_wrap(model, compiled, run, c.batch_size)  # DDP under torchrun, without FSDP
    masks.seed(c.seed + run.rank)
    if ckpt is not None:
        checkpoint.restore_random_state(ckpt, run, masks)  # the resumed run draws the batches and masks it would have
    ckpt = None  # free the loaded tensors

    # ---- the training loop ----
    runs.keep_previous_run(c, run)  # a new run into an out_dir that holds one: the earlier files move aside
    with RunControl(c, run, raw_model, config, budget, memory_plan) as ctl:  # time budget, console, metrics.jsonl
        rng_batch = torch.get_rng_state()  # before each training batch: a resumed run draws it again from here
        X, Y = get_batch(data['train'], c, run)  # the very first batch

        def save(name):
            """Write out_dir/<name>: nanoGPT's keys, then what an exact resume needs besides."""
            model_sd, optim_sd = distributed.full_state_dicts(raw_model, optimizer, run)  # FSDP: gathered on rank 0
            ctl.save(name, {
                'model': model_sd,
                'optimizer': optim_sd,
                'model_args': model_args,
                'iter_num': iter_num,
                'best_val_loss': best_val_loss,
                'config': config,
                'rng': checkpoint.random_state_to_save(rng_batch, run, masks),  # as at the last batch draw
                'scaler': scaler.state_dict() if scaler.is_enabled() else None,
                'gelu_approximate': raw_model.gelu_approximate,  # a finetuned GPT-2 keeps its tanh GELU
            })
        while True:
            # the last iteration is an evaluation point too, so that every run ends with a saved model;
            # a signal stops the run; closing (eval_only, or the time budget's end) evaluates and ends it
            eval_due = iter_num % c.eval_interval == 0 or iter_num >= c.max_iters
            stop, closing = ctl.before_iteration(iter_num, eval_due)
            evaluate = eval_due or closing
            lr = get_lr(ctl.schedule_iter(iter_num), c) if c.decay_lr else c.learning_rate
            set_lr(optimizer, lr, c.learning_rate)
            # evaluate the loss on train and val; a signal abandons the evaluation (it changes no state)
            if evaluate and not stop:
                losses = abandonable(estimate_loss, eval_model, data, ctx, c, run, ctl)  # None: a signal came
                stop = losses is None
            if stop:
                save('last.pt')
                ctl.stopped(iter_num)
                break
            if evaluate:  # report the losses; write ckpt.pt, or last.pt when it did not improve
                ctl.evaluated(iter_num, losses, lr)  # prints 'step N: train loss ..., val loss ...'
                if losses['val'] < best_val_loss or c.always_save_checkpoint:
                    best_val_loss = losses['val']
                    if iter_num > 0:
                        save('ckpt.pt')
                elif ctl.local_iter_num > 0:  # a run's first state is the one it loaded
                    save('last.pt')
            if closing:
                break

            # forward, backward and update, with gradient accumulation over micro-steps
            for micro_step in range(run.grad_accum):
                if run.torchrun and not run.fsdp:
                    # DDP all-reduces the gradients on the last micro-step only; FSDP reduce-scatters
                    # each one, keeping its gradients sharded, which is the memory it exists to save
                    model.require_backward_grad_sync = (micro_step == run.grad_accum - 1)
                with ctx:
                    logits, loss = model(X, Y)
                    loss = loss / run.grad_accum  # the mean over the micro-steps
                # fetch the next batch while the GPU computes this one
                rng_batch = torch.get_rng_state()
                X, Y = get_batch(data['train'], c, run)
                scaler.scale(loss).backward()
            # clip the gradients, step the optimizer (and the scaler), free the gradients' memory
            scaler.unscale_(optimizer)  # float16: the true gradients, to measure and clip (a no-op otherwise)
            grad_norm = clip_gradients(model.parameters(), c.grad_clip)  # their norm before clipping
            scaler.step(optimizer)
            scaler.update()
            optimizer.zero_grad(set_to_none=True)

            # timing and logging: prints 'iter N: loss ..., time ...ms, mfu ...%, grad norm ...'
            ctl.iteration_done(iter_num, loss, lr, grad_norm)  # loss: the last micro-step's, divided by grad_accum
            iter_num += 1
            if iter_num > c.max_iters and budget is None:
                break
    return ctl.summary(iter_num, best_val_loss)


def main(argv=None):
    """train.py's command line: settings from config files and --key=value, then train()."""
    check_torch_version()
    distributed.quiet_other_ranks()  # under torchrun rank 0 alone prints, the settings included
    own_command = argv is None
    argv = sys.argv[1:] if own_command else argv
    c = SimpleNamespace(**apply_overrides(DEFAULTS, argv))
    try:
        summary = train(c, given=given_settings(argv, DEFAULTS), t0=_T_IMPORT if own_command else time.time())
    except BaseException as e:
        # the traceback holds train()'s locals, the DDP/FSDP model among them, which holds the
        # process group: clear them so the group is freed below (the message and lines stay)
        import traceback
        traceback.clear_frames(e.__traceback__)
        oom = memory.out_of_memory_error(e, memory.MemoryPlan(c))  # out of memory while setting up: one line
        if oom is not None:
            raise oom from None
        raise
    finally:
        distributed.shutdown_distributed()  # after train() returned: nothing but torch holds the group
        outdir.release_out_dir()  # out_dir/train.lock
    if summary['interrupted'] is not None:
        sys.exit(128 + summary['interrupted'])
    return summary


if __name__ == '__main__':
    run_cli(main, keep_going_without_reader=True)  # a closed pipe never ends a run (docs/training.md)
