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

import json
import math
import os
import signal
import sys
import time
from types import SimpleNamespace

import numpy as np
import torch

import common
from common import UserError
from configurator import apply_overrides
from model import GPT, GPTConfig

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
# AdamW
learning_rate = 6e-4
max_iters = 600000
weight_decay = 1e-1
beta1 = 0.9
beta2 = 0.95
grad_clip = 1.0  # 0 disables clipping
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
ARCH_KEYS = ('n_layer', 'n_head', 'n_embd', 'block_size', 'bias', 'vocab_size')


def check_config(c):
    """Range checks with messages that say how to fix the value."""
    positive = ('batch_size', 'block_size', 'eval_iters', 'eval_interval', 'log_interval',
                'gradient_accumulation_steps', 'n_layer', 'n_head', 'n_embd')
    for k in positive:
        if getattr(c, k) < 1:
            raise UserError(f"{k} must be at least 1, got {getattr(c, k)} (e.g. --{k}={DEFAULTS[k]})")
    if c.max_iters < 0:
        raise UserError(f"max_iters must be 0 or more, got {c.max_iters}")
    if c.n_embd % c.n_head:
        raise UserError(f"n_embd ({c.n_embd}) must be divisible by n_head ({c.n_head}): "
                        f"each head gets n_embd/n_head channels")
    if not 0.0 <= c.dropout < 1.0:
        raise UserError(f"dropout must be in [0, 1), got {c.dropout}")
    if c.learning_rate <= 0 or c.min_lr < 0:
        raise UserError(f"learning_rate must be > 0 and min_lr >= 0, got {c.learning_rate} and {c.min_lr}")
    if not (c.init_from in ('scratch', 'resume') or c.init_from.startswith('gpt2')
            or os.path.isdir(c.init_from)):
        raise UserError(f"unknown init_from {c.init_from!r}: use scratch, resume, gpt2, gpt2-medium, "
                        f"gpt2-large, gpt2-xl or a Hugging Face GPT-2 directory")


def get_lr(it, c):
    """Linear warmup, then cosine decay to min_lr at lr_decay_iters, then min_lr."""
    if it < c.warmup_iters:
        return c.learning_rate * (it + 1) / (c.warmup_iters + 1)
    if it > c.lr_decay_iters:
        return c.min_lr
    decay_ratio = (it - c.warmup_iters) / (c.lr_decay_iters - c.warmup_iters)
    coeff = 0.5 * (1.0 + math.cos(math.pi * decay_ratio))  # from 1 down to 0
    return c.min_lr + coeff * (c.learning_rate - c.min_lr)


def prepare_hint(dataset):
    script = os.path.join(common.dataset_dir(dataset), 'prepare.py')
    if os.path.exists(script):
        return f"python {os.path.relpath(script)}"
    return f"python data/prepare_text.py <your text file> --name={dataset}"


def open_split(data_dir, split, dataset, block_size, vocab_size):
    """Memory-map data/<dataset>/<split>.bin (uint16 token ids) after checking it is usable."""
    path = os.path.join(data_dir, f'{split}.bin')
    if not os.path.exists(path):
        raise UserError(f"missing {path}: prepare the dataset first with: {prepare_hint(dataset)}")
    size = os.path.getsize(path)
    if size % 2:
        raise UserError(f"{path} has an odd length ({size} bytes): it is not uint16 tokens "
                        f"(truncated?); re-run {prepare_hint(dataset)}")
    data = np.memmap(path, dtype=np.uint16, mode='r')
    if len(data) < block_size + 1:
        raise UserError(f"{path} holds {len(data)} tokens, fewer than block_size+1 = {block_size + 1}: "
                        f"use a smaller --block_size or more data")
    # full scan for small files, a strided sample for huge ones (openwebtext is 9B tokens)
    top = int(data.max()) if len(data) <= 200_000_000 else int(data[::997].max())
    if top >= vocab_size:
        raise UserError(f"{path} contains token id {top}, not below the model's vocab_size {vocab_size}: "
                        f"the data and meta.pkl / vocab_size do not match; re-run {prepare_hint(dataset)}")
    return data


class Batches:
    """Random training windows as in nanoGPT: starts from torch.randint on the global RNG, targets
    shifted by one. Remembers the RNG state before each training draw so a checkpoint can
    replay the batch that was already fetched."""

    def __init__(self, data, c, device, device_type):
        self.data, self.c, self.device, self.device_type = data, c, device, device_type
        self.offsets = np.arange(c.block_size + 1)
        self.rng_before_train = None

    def next_train(self):
        self.rng_before_train = torch.get_rng_state()
        return self.get('train')

    def get(self, split):
        data = self.data[split]
        ix = torch.randint(len(data) - self.c.block_size, (self.c.batch_size,))
        rows = torch.from_numpy(data[ix.numpy()[:, None] + self.offsets].astype(np.int64))  # (B, T+1)
        x, y = rows[:, :-1], rows[:, 1:]
        if self.device_type == 'cuda':
            # pinned host memory lets the copy overlap with compute
            return (x.pin_memory().to(self.device, non_blocking=True),
                    y.pin_memory().to(self.device, non_blocking=True))
        return x.contiguous().to(self.device), y.contiguous().to(self.device)


def rng_state(batches, device_type):
    state = {'cpu': batches.rng_before_train}
    if device_type == 'cuda':
        state['cuda'] = torch.cuda.get_rng_state()
    elif device_type == 'mps':
        state['mps'] = torch.mps.get_rng_state()
    return state


def set_rng_state(state, device_type):
    torch.set_rng_state(state['cpu'])
    if device_type == 'cuda' and 'cuda' in state:
        torch.cuda.set_rng_state(state['cuda'])
    elif device_type == 'mps' and 'mps' in state:
        torch.mps.set_rng_state(state['mps'])


def find_resume_checkpoint(out_dir):
    """The newer of out_dir/last.pt and out_dir/ckpt.pt (by iteration), loaded on the CPU."""
    found = []
    for name in ('last.pt', 'ckpt.pt'):
        path = os.path.join(out_dir, name)
        if os.path.exists(path):
            found.append((common.load_checkpoint(path), path))
    if not found:
        raise UserError(f"cannot resume: no ckpt.pt or last.pt in {out_dir}; start with "
                        f"--init_from=scratch or pass the run's --out_dir")
    return max(found, key=lambda f: f[0]['iter_num'])


def resolve_resume_config(c, ckpt):
    """Settings not given on the command line come from the checkpoint; architecture settings
    given on the command line must agree with it."""
    stored = ckpt.get('config', {})
    for k, v in stored.items():
        if k in DEFAULTS and getattr(c, k) == DEFAULTS[k] and k not in NOT_RESUMED:
            setattr(c, k, v)
    margs = ckpt['model_args']
    for k in ('n_layer', 'n_head', 'n_embd', 'bias'):
        if getattr(c, k) != margs[k] and getattr(c, k) != DEFAULTS[k]:
            raise UserError(f"the checkpoint has {k}={margs[k]!r} but {k}={getattr(c, k)!r} was given: "
                            f"drop the override, or train a new model in another --out_dir")
        setattr(c, k, margs[k])
    if c.block_size > margs['block_size']:
        raise UserError(f"cannot resume with block_size={c.block_size}: the checkpoint was trained with "
                        f"block_size={margs['block_size']} and position embeddings cannot grow")


def train(c):
    """Run training with settings `c` (a namespace of DEFAULTS' keys); returns a summary dict."""
    check_config(c)
    # ---- distributed setup (torchrun sets RANK, LOCAL_RANK, WORLD_SIZE) ----
    ddp = int(os.environ.get('RANK', -1)) != -1
    if ddp:
        from torch.distributed import init_process_group
        rank, local_rank = int(os.environ['RANK']), int(os.environ['LOCAL_RANK'])
        world_size = int(os.environ['WORLD_SIZE'])
        local_world = int(os.environ.get('LOCAL_WORLD_SIZE', world_size))
        if c.device == 'auto':
            c.device = 'cuda' if torch.cuda.is_available() else 'cpu'
        if c.device.startswith('cuda'):
            c.device = f'cuda:{local_rank}'
            torch.cuda.set_device(c.device)
        else:
            torch.set_num_threads(max(1, (os.cpu_count() or 1) // local_world))  # share the cores
        be = c.backend if c.backend != 'auto' else ('nccl' if c.device.startswith('cuda') else 'gloo')
        init_process_group(backend=be)
        master = rank == 0
        if c.gradient_accumulation_steps % world_size:
            raise UserError(f"gradient_accumulation_steps ({c.gradient_accumulation_steps}) must be divisible "
                            f"by the number of processes ({world_size})")
        c.gradient_accumulation_steps //= world_size
    else:
        rank, world_size, master = 0, 1, True
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

    tokens_per_iter = c.gradient_accumulation_steps * world_size * c.batch_size * c.block_size
    print(f"tokens per iteration will be: {tokens_per_iter:,}")
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
    data_dir = common.dataset_dir(c.dataset)
    meta_path = os.path.join(data_dir, 'meta.pkl')
    meta_vocab_size = None
    if os.path.exists(meta_path):
        meta_vocab_size = common.load_meta(meta_path)['vocab_size']
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
        model = common.model_from_checkpoint(ckpt, dropout=c.dropout)
    else:
        print(f"Initializing from OpenAI GPT-2 weights: {c.init_from}")
        model = GPT.from_pretrained(c.init_from, dict(dropout=c.dropout))
        for k in ARCH_KEYS:
            model_args[k] = getattr(model.config, k)
    if c.block_size < model.config.block_size:
        model.crop_block_size(c.block_size)
        model_args['block_size'] = c.block_size
    if meta_vocab_size is not None and meta_vocab_size > model_args['vocab_size']:
        raise UserError(f"{meta_path} has vocab_size {meta_vocab_size} but the model has "
                        f"{model_args['vocab_size']}: the dataset does not belong to this model")
    data = {s: open_split(data_dir, s, c.dataset, c.block_size, model_args['vocab_size'])
            for s in ('train', 'val')}
    model.to(c.device)
    c.dtype = common.resolve_dtype(c.dtype, device_type, model_args['n_embd'])
    c.compile = common.resolve_compile(c.compile, device_type)
    config.update(device=c.device, dtype=c.dtype, compile=c.compile)
    ctx = common.autocast_ctx(device_type, c.dtype)
    # a gradient scaler only where float16 needs one (CUDA); never created on CPU or MPS
    scaler = torch.amp.GradScaler('cuda') if device_type == 'cuda' and c.dtype == 'float16' else None

    optimizer = model.configure_optimizers(c.weight_decay, c.learning_rate, (c.beta1, c.beta2), device_type)
    iter_num, best_val_loss = 0, 1e9
    if ckpt is not None:
        optimizer.load_state_dict(ckpt['optimizer'])
        iter_num, best_val_loss = ckpt['iter_num'], float(ckpt['best_val_loss'])
        if scaler is not None and ckpt.get('scaler'):
            scaler.load_state_dict(ckpt['scaler'])
    raw_model = model
    if c.fsdp and ddp:
        from torch.distributed.fsdp import fully_shard
        for block in model.transformer.h:
            fully_shard(block)
        fully_shard(model)
    if c.compile:
        print("compiling the model... (the first iterations are slow)")
        model = torch.compile(model)
    if ddp and not c.fsdp:
        from torch.nn.parallel import DistributedDataParallel as DDP
        model = DDP(model, device_ids=[int(os.environ['LOCAL_RANK'])] if device_type == 'cuda' else None)
    peak, peak_src = common.peak_flops(c.device, c.dtype, c.peak_flops)
    print(f"mfu is measured against {peak / 1e12:.3g} TFLOP/s ({peak_src})")

    batches = Batches(data, c, c.device, device_type)

    @torch.no_grad()
    def estimate_loss():
        out = {}
        model.eval()
        for split in ('train', 'val'):
            losses = torch.zeros(c.eval_iters)
            for k in range(c.eval_iters):
                X, Y = batches.get(split)
                with ctx:
                    _, loss = model(X, Y)
                losses[k] = loss.item()
            out[split] = losses.mean().item()
        model.train()
        return out

    def checkpoint_state():
        def full(sd_owner):
            if c.fsdp and ddp:
                from torch.distributed.checkpoint.state_dict import get_model_state_dict, \
                    get_optimizer_state_dict, StateDictOptions
                opts = StateDictOptions(full_state_dict=True, cpu_offload=True)
                return get_model_state_dict(raw_model, options=opts), \
                    get_optimizer_state_dict(raw_model, optimizer, options=opts)
            return raw_model.state_dict(), optimizer.state_dict()
        model_sd, optim_sd = full(raw_model)
        return {'model': model_sd, 'optimizer': optim_sd, 'model_args': model_args,
                'iter_num': iter_num, 'best_val_loss': best_val_loss, 'config': config,
                'rng': rng_state(batches, device_type),
                'scaler': scaler.state_dict() if scaler is not None else None}

    def save(name, state):
        if master:
            path = os.path.join(c.out_dir, name)
            print(f"saving checkpoint to {path}")
            common.save_checkpoint(state, path)

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
        if stop['signal'] is not None:
            raise KeyboardInterrupt
        stop['signal'] = signum

    old_handlers = {}
    import threading
    if threading.current_thread() is threading.main_thread():
        for s in (signal.SIGINT, signal.SIGTERM):
            old_handlers[s] = signal.signal(s, on_signal)

    if ckpt is not None and ckpt.get('rng'):
        set_rng_state(ckpt['rng'], device_type)  # replays the batch that was fetched before saving
    ckpt = None  # free the loaded tensors
    X, Y = batches.next_train()
    t_start = t0 = time.time()
    local_iter_num, running_mfu = 0, -1.0
    losses_log, evals_log = {}, {}
    try:
        while True:
            lr = get_lr(iter_num, c) if c.decay_lr else c.learning_rate
            for group in optimizer.param_groups:
                group['lr'] = lr
            want_stop = stop['signal'] is not None
            if ddp:  # every rank must stop at the same iteration
                import torch.distributed as dist
                flag = torch.tensor([float(want_stop)], device=c.device)
                dist.all_reduce(flag)
                want_stop = flag.item() > 0
            if want_stop:
                if master:
                    state = checkpoint_state()
                    save('last.pt', state)
                print(f"stopped by signal at iter {iter_num}: training state saved to "
                      f"{os.path.join(c.out_dir, 'last.pt')}; continue with --init_from=resume")
                break
            if (iter_num % c.eval_interval == 0 or c.eval_only) and master:
                losses = estimate_loss()
                elapsed = time.time() - t_start
                print(f"step {iter_num}: train loss {losses['train']:.4f}, val loss {losses['val']:.4f}, "
                      f"elapsed {elapsed:.1f}s")
                evals_log[iter_num] = (losses['train'], losses['val'])
                log_metrics(event='eval', iter=iter_num, train_loss=losses['train'],
                            val_loss=losses['val'], lr=lr, elapsed=elapsed)
                if c.wandb_log:
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
                elif iter_num > 0 and not c.eval_only:
                    save('last.pt', checkpoint_state())
            if c.eval_only:
                break
            # ---- one optimizer step, gradient_accumulation_steps micro-steps ----
            for micro_step in range(c.gradient_accumulation_steps):
                if ddp and not c.fsdp:
                    # gradients are all-reduced only on the last micro-step
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
                eta = dt * (c.max_iters - iter_num)
                print(f"iter {iter_num}: loss {lossf:.4f}, time {dt * 1000:.2f}ms, mfu {running_mfu * 100:.2f}%, "
                      f"{tok_s:,.0f} tok/s, eta {format_duration(eta)}")
                log_metrics(event='iter', iter=iter_num, loss=lossf, lr=lr, time_ms=dt * 1000,
                            mfu=running_mfu * 100, tok_s=tok_s, elapsed=time.time() - t_start)
            iter_num += 1
            local_iter_num += 1
            if iter_num > c.max_iters:
                break
    finally:
        for s, h in old_handlers.items():
            signal.signal(s, h)
        if metrics:
            metrics.close()
        if ddp:
            from torch.distributed import destroy_process_group
            destroy_process_group()
    ckpt_file = os.path.join(c.out_dir, 'ckpt.pt')
    if master and not c.eval_only and stop['signal'] is None:
        print(f"done: {iter_num} iterations in {format_duration(time.time() - t_start)}, "
              f"best val loss {best_val_loss:.4f}")
        if os.path.exists(ckpt_file):
            print(f"best model: {ckpt_file}; sample from it with: python sample.py --out_dir={c.out_dir}")
    return {'iter_num': iter_num, 'best_val_loss': best_val_loss, 'losses': losses_log,
            'evals': evals_log, 'interrupted': stop['signal'], 'config': config}


def format_duration(s):
    s = max(0, int(s))
    return f"{s // 3600}h{s % 3600 // 60:02d}m" if s >= 3600 else f"{s // 60}m{s % 60:02d}s"


def main(argv=None):
    c = SimpleNamespace(**apply_overrides(DEFAULTS, sys.argv[1:] if argv is None else argv))
    summary = train(c)
    if summary['interrupted'] is not None:
        sys.exit(128 + summary['interrupted'])
    return summary


if __name__ == '__main__':
    common.run_cli(main)
