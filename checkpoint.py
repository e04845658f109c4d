"""
Checkpoints: crash-safe save, safe load (weights_only), the resume choice between ckpt.pt (best by
val loss) and last.pt (latest state), RNG state for exact resume, and full state dicts of FSDP
models. Used by train.py, sample.py and export_hf.py. For train.py also the training state both
ways: what a checkpoint holds (Saver), and what a resumed run takes back from it: its settings
(resolve_resume_config), its optimizer state (load_optimizer_state) and its random streams
(restore_rng).
"""

import os
import pickle
import re
import time

import torch

from configurator import _check_type
from errors import UserError, warn_once

ARCH_KEYS = ('n_layer', 'n_head', 'n_embd', 'block_size', 'bias', 'vocab_size')


def _temp_prefix(path):
    """Temporary files of a save to `path` are `.<name>.tmp<pid>` beside it: hidden, and never
    ending in .pt, so nothing takes one for a checkpoint."""
    d, name = os.path.split(os.path.abspath(path))
    return d, f".{name}.tmp"


def _pid_alive(pid):
    if pid == os.getpid():
        return False  # a save in this process removes its own temporary file when it ends
    try:
        os.kill(pid, 0)  # signal 0 only asks whether the process exists
    except ProcessLookupError:
        return False
    except OSError:
        return True
    return True


def remove_stale_temp_files(path):
    """Delete temporary files that a killed process (SIGKILL, out of memory, power loss) left
    while saving `path`: nothing reads them, but each is as large as a checkpoint."""
    if os.name == 'nt':
        return  # os.kill(pid, 0) would terminate the process on Windows
    d, prefix = _temp_prefix(path)
    try:
        names = os.listdir(d)
    except OSError:
        return
    for name in names:
        pid = name[len(prefix):]
        if name.startswith(prefix) and pid.isdigit() and not _pid_alive(int(pid)):
            try:
                os.remove(os.path.join(d, name))
            except OSError:
                pass


def save_checkpoint(obj, path):
    """torch.save that never leaves a half-written file: write a temporary file in the same
    directory, fsync it, then rename over `path` (atomic on POSIX). Killed at any instant, the
    previous file at `path` stays complete."""
    d, prefix = _temp_prefix(path)
    tmp = os.path.join(d, f"{prefix}{os.getpid()}")
    remove_stale_temp_files(path)
    try:
        with open(tmp, 'wb') as f:
            torch.save(obj, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except (OSError, RuntimeError) as e:  # torch.save reports a full disk as a RuntimeError
        reason = getattr(e, 'strerror', None) or f"the write failed, is the disk full? ({str(e).splitlines()[0][:120]})"
        raise UserError(f"cannot write checkpoint {path}: {reason}; the previous "
                        f"{os.path.basename(path)} (if any) is intact; free disk space or "
                        f"choose another --out_dir") from None
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)
    try:  # make the rename itself durable
        fd = os.open(d, os.O_RDONLY)
        os.fsync(fd)
        os.close(fd)
    except OSError:
        pass


def _unreadable(path, e):
    """The one line for a file torch.load cannot read that names no code: text, random bytes, an
    empty file (not a checkpoint at all) or a damaged zip archive (torch.save's format)."""
    detail = re.search(r'WeightsUnpickler error:\s*(.+)', str(e))  # past torch's generic preamble
    detail = detail.group(1) if detail else (str(e).strip().splitlines() or [''])[0]
    reason = f"{type(e).__name__}: {detail[:200]}" if detail else type(e).__name__
    try:
        with open(path, 'rb') as f:
            head = f.read(16)
    except OSError:
        return f"{path} cannot be read: {reason}"
    if head.startswith(b'PK'):
        return f"{path} is not a loadable checkpoint (truncated or corrupt?): {reason}"
    what = 'the file is empty' if not head else f"it starts with {head!r}, not the b'PK' of torch.save's zip archive"
    return f"{path} is not a checkpoint ({what}): {reason}"


def load_checkpoint(path, device='cpu'):
    """Load a ckpt.pt with weights_only=True, with one-line errors. weights_only rebuilds only
    tensors and plain Python values: a checkpoint naming any other class or function (the way a
    pickle runs code) is refused instead of trusted."""
    if not os.path.exists(path):
        d = os.path.dirname(path) or '.'
        if os.path.basename(path) == 'ckpt.pt' and os.path.exists(os.path.join(d, 'last.pt')):
            raise UserError(f"no checkpoint at {path} yet: {d} holds only last.pt, the state of a run stopped "
                            f"before its first evaluation; continue it with: "
                            f"python train.py --init_from=resume --out_dir={d}")
        raise UserError(f"no checkpoint at {path}: train one first, e.g. "
                        f"python train.py config/train_shakespeare_char.py")
    try:
        ckpt = torch.load(path, map_location=device, weights_only=True)
    except Exception as e:
        named = re.search(r'GLOBAL (\S+)', str(e))  # weights_only refused a class or function the file names
        if isinstance(e, pickle.UnpicklingError) and named:
            raise UserError(f"refusing to load {path}: it holds a pickled Python object ({named.group(1)}) that "
                            f"could run code when loaded; only checkpoints of tensors and plain values are "
                            f"accepted") from None
        raise UserError(_unreadable(path, e)) from None
    if not isinstance(ckpt, dict) or not {'model', 'model_args'} <= set(ckpt):
        raise UserError(f"{path} is not a nanoGPT checkpoint: it lacks the 'model' and 'model_args' keys")
    return ckpt


def clean_state_dict(state_dict):
    """Strip the prefixes that torch.compile ('_orig_mod.') and DDP ('module.') add to keys, in
    any nesting (DDP around a compiled model gives 'module._orig_mod.')."""
    out = {}
    for k, v in state_dict.items():
        stripped = True
        while stripped:
            stripped = False
            for prefix in ('_orig_mod.', 'module.'):
                if k.startswith(prefix):
                    k, stripped = k[len(prefix):], True
        out[k] = v
    return out


MODEL_ARG_KEYS = ('n_layer', 'n_head', 'n_embd', 'block_size', 'vocab_size')


def model_from_checkpoint(ckpt, **override):
    """A GPT with the checkpoint's architecture and weights."""
    from model import GPT, GPTConfig
    args = dict(ckpt['model_args'])
    missing = [k for k in MODEL_ARG_KEYS if k not in args]
    if missing:
        raise UserError(f"the checkpoint's model_args lack {missing}: it was not written by nanoGPT")
    args.update(override)
    try:
        model = GPT(GPTConfig(**args))
    except TypeError as e:
        raise UserError(f"the checkpoint's model_args do not fit this GPTConfig: {e}") from None
    if ckpt.get('gelu_approximate', 'none') != 'none':  # finetuned GPT-2 keeps its tanh GELU
        model.set_gelu_approximate(ckpt['gelu_approximate'])
    try:
        model.load_state_dict(clean_state_dict(ckpt['model']))
    except RuntimeError as e:
        detail = next((line.strip() for line in str(e).splitlines()[1:] if line.strip()), str(e))
        raise UserError(f"checkpoint weights do not fit its model_args: {detail[:300]}") from None
    return model


def rng_state(batches, device_type, device='cuda'):
    """The random streams a resume restores. The CUDA one is that of `device` (cuda:N), named
    explicitly: torch.cuda.get_rng_state() alone reads the current device's."""
    state = {'cpu': batches.rng_before_train}
    if device_type == 'cuda':
        state['cuda'] = torch.cuda.get_rng_state(device)
    elif device_type == 'mps':
        state['mps'] = torch.mps.get_rng_state()
    return state


def set_rng_state(state, device_type, device='cuda'):
    torch.set_rng_state(state['cpu'])
    if device_type == 'cuda' and 'cuda' in state:
        torch.cuda.set_rng_state(state['cuda'], device)
    elif device_type == 'mps' and 'mps' in state:
        torch.mps.set_rng_state(state['mps'])


def find_resume_checkpoint(out_dir, best=False):
    """The latest training state, loaded on the CPU: whichever of out_dir/last.pt and
    out_dir/ckpt.pt has the higher iter_num (a run deletes last.pt whenever it writes ckpt.pt,
    so last.pt is there only while it is the newer of the two). best=True (eval_only) takes
    ckpt.pt where there is one: the model that sample.py reads."""
    names = [n for n in ('last.pt', 'ckpt.pt') if os.path.exists(os.path.join(out_dir, n))]
    if best and 'ckpt.pt' in names:
        names = ['ckpt.pt']
    if not names:
        raise UserError(f"cannot resume: no ckpt.pt or last.pt in {out_dir}; start with "
                        f"--init_from=scratch or pass the run's --out_dir")
    found = []
    for name in names:
        path = os.path.join(out_dir, name)
        try:
            ckpt = load_checkpoint(path)
        except UserError as e:
            if len(names) > 1:  # say how to fall back, without silently losing the newer state
                other = [n for n in names if n != name][0]
                raise UserError(f"{e} (delete it to resume from {other} instead)") from None
            raise
        missing = [k for k in ('optimizer', 'iter_num', 'best_val_loss') if k not in ckpt]
        missing += [f"model_args[{k!r}]" for k in ARCH_KEYS if k not in ckpt['model_args']]
        if missing:
            raise UserError(f"cannot resume from {path}: it lacks {', '.join(missing)}; it can still be "
                            f"sampled from, but training needs a full checkpoint (or --init_from=scratch)")
        found.append((ckpt, path))
    return max(found, key=lambda f: int(f[0]['iter_num']))


def fit_optimizer_state(optim_sd, params):
    """AdamW's moments are shaped like their parameters, and a resume with a smaller block_size
    crops the position table: crop its moments the same way. Without this the fused update would
    run over mismatched tensors without a word. Any other mismatch raises ValueError."""
    for i, p in enumerate(params):
        state = optim_sd['state'].get(i, {})
        for k, v in state.items():
            if not torch.is_tensor(v) or v.dim() == 0 or v.shape == p.shape:
                continue
            if v.dim() == p.dim() and v.shape[1:] == p.shape[1:] and v.shape[0] > p.shape[0]:
                state[k] = v[:p.shape[0]].clone()
            else:
                raise ValueError(f"state {k} of parameter {i} has shape {tuple(v.shape)}, the parameter "
                                 f"{tuple(p.shape)}")


def optimizer_param_names(model, optimizer):
    """The optimizer's parameters by name, in its own order: the order in which a plain
    optimizer.state_dict() numbers them 0, 1, 2, ..."""
    names = {id(p): n for n, p in model.named_parameters()}
    return [names[id(p)] for group in optimizer.param_groups for p in group['params']]


def full_sharded_state(model, optimizer):
    """Full (unsharded) model and optimizer state dicts of an FSDP model, in the plain format a
    single process saves (optimizer state numbered, not named), so any reader can load them.
    Collective: every rank must call it; only rank 0 gets the tensors, the others empty dicts."""
    from torch.distributed.checkpoint.state_dict import (StateDictOptions, get_model_state_dict,
                                                         get_optimizer_state_dict)
    opts = StateDictOptions(full_state_dict=True, cpu_offload=True)
    model_sd = get_model_state_dict(model, options=opts)
    optim_sd = get_optimizer_state_dict(model, optimizer, options=opts)
    if not optim_sd:
        return model_sd, optim_sd
    index = {n: i for i, n in enumerate(optimizer_param_names(model, optimizer))}
    return model_sd, {'state': {index[k]: v for k, v in optim_sd['state'].items()},
                      'param_groups': [dict(g, params=[index[n] for n in g['params']])
                                       for g in optim_sd['param_groups']]}


def load_full_optimizer_state(model, optimizer, optim_sd):
    """Load a plain (numbered) optimizer state dict, as in any ckpt.pt, into the optimizer of an
    FSDP model: each rank keeps the shards of its own parameters."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, set_optimizer_state_dict
    names = optimizer_param_names(model, optimizer)

    def name(k):  # numbered by a plain optimizer, or already named
        return names[k] if isinstance(k, int) else k
    named = {'state': {name(k): v for k, v in optim_sd['state'].items()},
             'param_groups': [dict(g, params=[name(k) for k in g['params']]) for g in optim_sd['param_groups']]}
    set_optimizer_state_dict(model, optimizer, named, options=StateDictOptions(full_state_dict=True))


# ---- the training state: what train.py writes, and what a resumed run takes back --------------

class Saver:
    """Writes the training state to out_dir/ckpt.pt or last.pt. Under torchrun every rank calls
    save() at the same points (see state()); rank 0 alone writes. `procs` is the process's place
    in the job (distributed.Procs); `budget` a schedule.TimeBudget or None."""

    def __init__(self, c, procs, model, optimizer, scaler, batches, model_args, config, budget, device_type):
        self.c, self.procs, self.model, self.optimizer, self.scaler = c, procs, model, optimizer, scaler
        self.batches, self.model_args, self.config, self.budget = batches, model_args, config, budget
        self.device_type = device_type

    def state(self, iter_num, best_val_loss):
        """What ckpt.pt / last.pt hold. Under torchrun every rank calls this at the same points:
        FSDP gathers the full weights and optimizer state (collectives that leave the result on
        rank 0 only, on the CPU), and every rank's RNG state is collected for an exact resume."""
        if self.c.fsdp and self.procs.ddp:
            model_sd, optim_sd = full_sharded_state(self.model, self.optimizer)
        else:
            model_sd, optim_sd = self.model.state_dict(), self.optimizer.state_dict()
        rng = rng_state(self.batches, self.device_type, self.c.device)
        state = {'model': model_sd, 'optimizer': optim_sd, 'model_args': self.model_args,
                 'iter_num': iter_num, 'best_val_loss': best_val_loss, 'config': self.config,
                 'rng': dict(rng, dropout=self.model.dropout_masks.state()),
                 'scaler': self.scaler.state_dict() if self.scaler is not None else None,
                 'gelu_approximate': self.model.gelu_approximate}
        if self.budget is not None:
            state['time'] = self.budget.state()  # a resumed budgeted run continues its clock and schedule
        if self.procs.ddp:
            import torch.distributed as dist
            state['rng_ranks'] = [None] * self.procs.world_size
            dist.all_gather_object(state['rng_ranks'], state['rng'])
        return state

    def save(self, name, iter_num, best_val_loss):
        """Write the state as out_dir/<name>; a new ckpt.pt replaces last.pt as the latest state."""
        state = self.state(iter_num, best_val_loss)  # every rank takes part
        if not self.procs.master:
            return
        path = os.path.join(self.c.out_dir, name)
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
        if self.budget is not None:
            self.budget.save_s = time.time() - t_save
        last = os.path.join(self.c.out_dir, 'last.pt')
        if name == 'ckpt.pt' and os.path.exists(last):
            os.remove(last)  # ckpt.pt is now the latest state too


def restore_rng(ckpt, ckpt_path, procs, model, device_type, device):
    """Take back the random streams the checkpoint saved (see Saver.state): they replay the batch
    that was fetched before saving, and the model's CPU dropout masks continue."""
    rng = ckpt.get('rng')
    if procs.ddp:
        # every rank takes back its own random stream, when the checkpoint was saved by as many
        # processes; otherwise rank 0 continues the saved one and the others keep seed + rank
        ranks_rng = ckpt.get('rng_ranks') or []
        rng = ranks_rng[procs.rank] if len(ranks_rng) == procs.world_size else rng if procs.master else None
        if len(ranks_rng) != procs.world_size:
            print(f"note: {ckpt_path} was not saved by {procs.world_size} processes: ranks other than 0 draw new "
                  f"batches, so the run will differ from an uninterrupted one")
    if rng:
        set_rng_state(rng, device_type, device)
        if rng.get('dropout'):
            model.dropout_masks.set_state(rng['dropout'])


def resolve_resume_config(c, ckpt, defaults, not_resumed):
    """Settings not given on the command line (or in a config file) come from the checkpoint's
    stored config, except those in `not_resumed`; architecture settings that were given must
    agree with the checkpoint. `defaults`: train.py's DEFAULTS."""
    given = getattr(c, '_given', None)

    def was_given(k):
        # train(c) called without main(): a value other than the default counts as given
        return k in given if given is not None else getattr(c, k) != defaults[k]

    stored = ckpt.get('config') or {}
    for k, v in stored.items():
        if k in defaults and k not in not_resumed and not was_given(k):
            try:
                setattr(c, k, _check_type(k, v, defaults[k], f"{c.out_dir} checkpoint config"))
            except UserError as e:
                warn_once(f"{e}; using {getattr(c, k)!r}")
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
