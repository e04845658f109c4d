"""
Checkpoint files: the crash-safe write (save_checkpoint, and write for train.py's training state),
the safe load (weights_only), the resume choice between ckpt.pt (written at each evaluation, or
only when the validation loss improves with always_save_checkpoint=False) and last.pt (the latest
state, when newer), what init_from names, and what a resumed run takes back: the model, the
optimizer state and the random streams. Files only: torchrun's side (gathering, FSDP shards) is in
distributed.py. train.py builds the checkpoint's contents itself, where it saves; sample.py and
export_hf.py read them through load_checkpoint and model_from_checkpoint.
"""

import os
import pickle
import re
import sys
import time

import torch

from . import devices, files
from .errors import UserError, warn_once
from .shell import command

__all__ = ['ARCH_KEYS', 'KEPT_ARCH_KEYS', 'save_checkpoint', 'load_checkpoint', 'init_checkpoint_path', 'init_source',
           'finetune_start', 'clean_state_dict', 'model_from_checkpoint', 'random_state_to_save',
           'restore_random_state', 'find_resume_checkpoint', 'NonFiniteWeights', 'write', 'load_optimizer_state',
           'remove_stale_temp_files', 'STALE_TEMP_SECONDS']

# model_args' keys that rebuild the architecture (GPTConfig's fields, dropout aside)
ARCH_KEYS = ('n_layer', 'n_head', 'n_embd', 'block_size', 'bias', 'vocab_size')
# those a trained model keeps, whatever the settings say (block_size may be cropped, and
# vocab_size comes with the data)
KEPT_ARCH_KEYS = tuple(k for k in ARCH_KEYS if k not in ('block_size', 'vocab_size'))


def _temp_prefix(path):
    """Temporary files of a save to `path` are `.<name>.tmp<pid>` beside it: hidden, and never
    ending in .pt, so nothing takes one for a checkpoint."""
    d, name = os.path.split(os.path.abspath(path))
    return d, f".{name}.tmp"


def _pid_alive(pid):
    """Whether process `pid` runs on this machine. POSIX only: on Windows os.kill(pid, 0) would
    end the process instead of asking about it."""
    try:
        os.kill(pid, 0)  # signal 0 only asks whether the process exists
    except ProcessLookupError:
        return False
    except OSError:
        return True
    return True


# A save writes its temporary file without pause and renames it at once, so one that has not been
# written to for this long belongs to a process that died while saving, wherever its pid cannot be
# asked about (Windows) or was taken by another process since
STALE_TEMP_SECONDS = 3600


def _left_over(temp, pid):
    """Whether temporary file `temp`, written by process `pid`, is one nothing will finish: this
    process's own (a save here removes its file when it ends), a dead process's (asked where that is
    safe: POSIX), or one not written to for STALE_TEMP_SECONDS."""
    if pid == os.getpid() or (sys.platform != 'win32' and not _pid_alive(pid)):
        return True
    try:
        return time.time() - os.path.getmtime(temp) > STALE_TEMP_SECONDS
    except OSError:
        return False


def remove_stale_temp_files(path):
    """Delete temporary files that a killed process (SIGKILL, out of memory, power loss) left
    while saving `path`: nothing reads them, but each is as large as a checkpoint."""
    d, prefix = _temp_prefix(path)
    try:
        names = os.listdir(d)
    except OSError:
        return
    for name in names:
        pid = name[len(prefix):]
        temp = os.path.join(d, name)
        if name.startswith(prefix) and pid.isdigit() and _left_over(temp, int(pid)):
            try:
                os.remove(temp)
            except OSError:
                pass


def save_checkpoint(obj, path):
    """torch.save that never leaves a half-written file: write a temporary file in the same
    directory, fsync it, then rename over `path` (atomic). Killed at any instant, the previous
    file at `path` stays complete. On Windows a program reading `path` blocks the rename: it is
    retried for a moment (files.replace), then the one line names that program as the cause."""
    d, prefix = _temp_prefix(path)
    tmp = os.path.join(d, f"{prefix}{os.getpid()}")
    name = os.path.basename(path)
    remove_stale_temp_files(path)
    try:
        with open(tmp, 'wb') as f:
            torch.save(obj, f)
            f.flush()
            os.fsync(f.fileno())
        files.replace(tmp, path)
    except files.HeldOpen as e:
        raise UserError(f"cannot write checkpoint {path}: {e.strerror}; the previous {name} is intact; close that "
                        f"program (or keep its scans out of {d}) and continue with --init_from=resume") from None
    except (OSError, RuntimeError) as e:  # torch.save reports a full disk as a RuntimeError
        reason = getattr(e, 'strerror', None) or f"the write failed, is the disk full? ({str(e).splitlines()[0][:120]})"
        raise UserError(f"cannot write checkpoint {path}: {reason}; the previous {name} (if any) is intact; "
                        f"free disk space or choose another --out_dir") from None
    finally:
        try:
            os.remove(tmp)
        except OSError:
            pass  # renamed into place, or never created
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


def first_model_recipe():
    """The command that trains a first model on this machine: the GPU recipe where there is a CUDA
    GPU, the five-minute CPU recipe elsewhere (the GPU recipe takes hours on a CPU)."""
    if torch.cuda.is_available():
        return "python train.py config/train_shakespeare_char.py (writes out-shakespeare-char)"
    return "python train.py config/train_shakespeare_char_cpu.py (writes out-shakespeare-char-cpu, in five minutes)"


def load_checkpoint(path, device='cpu'):
    """Load a ckpt.pt with weights_only=True, with one-line errors. weights_only rebuilds only
    tensors and plain Python values: a checkpoint naming any other class or function (the way a
    pickle runs code) is refused instead of trusted."""
    if not os.path.exists(path):
        d = os.path.dirname(path) or '.'
        if os.path.basename(path) == 'ckpt.pt' and os.path.exists(os.path.join(d, 'last.pt')):
            raise UserError(f"no checkpoint at {path} yet: {d} holds only last.pt, the training state of a run "
                            f"stopped before its first evaluation or whose evaluations never beat the untrained "
                            f"model's; continue it with: "
                            + command('python', 'train.py', '--init_from=resume', f'--out_dir={d}'))
        raise UserError(f"no checkpoint at {path}: train one first, e.g. {first_model_recipe()}")
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


def init_checkpoint_path(init_from):
    """The checkpoint file that init_from names for a new run to start from: the file itself
    (out-x/ckpt.pt), or in a train.py out_dir its ckpt.pt, else its last.pt. None when init_from
    names no checkpoint (scratch, resume, a GPT-2 name or directory)."""
    if os.path.isfile(init_from):
        return init_from
    return next((p for p in (os.path.join(init_from, n) for n in ('ckpt.pt', 'last.pt')) if os.path.isfile(p)), None)


def init_source(init_from):
    """What init_from names: 'scratch', 'resume', 'checkpoint' (a file, or an out_dir holding
    one: init_checkpoint_path), 'hf' (any other directory: Hugging Face GPT-2 files), 'gpt2' (a
    name for model.GPT.from_pretrained) or None (nothing known)."""
    if init_from in ('scratch', 'resume'):
        return init_from
    if init_checkpoint_path(init_from):
        return 'checkpoint'
    if os.path.isdir(init_from):
        return 'hf'
    return 'gpt2' if init_from.startswith('gpt2') else None


def finetune_start(c):
    """train.py's init_from=<checkpoint or out_dir>: that model's weights, to train on c.dataset
    from iteration 0 with a fresh optimizer (finetuning your own model on new text). The model
    keeps its shape; its token ids must mean what the new dataset's mean (nanogpt/data.py)."""
    from .data import check_same_vocabulary
    path = init_checkpoint_path(c.init_from)
    ckpt = load_checkpoint(path)
    source = (ckpt.get('config') or {}).get('dataset')
    print(f"Initializing from {path} ({ckpt.get('iter_num', '?')} iterations on {source}): its weights, "
          f"a fresh optimizer, iteration 0")
    check_same_vocabulary(source, c.dataset, path)
    model = model_from_checkpoint(ckpt, dropout=c.dropout)
    differ = [k for k in KEPT_ARCH_KEYS if getattr(model.config, k) != getattr(c, k)]
    if differ:
        print(f"note: the model keeps the shape it was trained with "
              f"({', '.join(f'{k}={getattr(model.config, k)}' for k in differ)}), not the settings' "
              f"({', '.join(f'{k}={getattr(c, k)}' for k in differ)})")
    return model


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


def model_from_checkpoint(ckpt, **override):
    """A GPT with the checkpoint's architecture and weights."""
    from model import GPT, GPTConfig
    args = dict(ckpt['model_args'])
    missing = [k for k in ARCH_KEYS if k not in args and k != 'bias']  # bias: GPTConfig's default
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


def random_state_to_save(rng_batch, run, masks):
    """The random streams a resume restores (a checkpoint's 'rng'): the CPU generator as it was
    before the batch last drawn (the resumed run draws that batch again), the device's
    (devices.random_state) and the CPU dropout masks' (nanogpt/cpu.py)."""
    state = devices.random_state(run.device)
    state['cpu'] = rng_batch
    state['dropout'] = masks.state()
    return state


def restore_random_state(ckpt, run, masks):
    """Take back the random streams the checkpoint saved (random_state_to_save): they replay the batch that
    was drawn before saving, and the dropout masks continue. Under torchrun each process takes its
    own, when the checkpoint was saved by as many processes; otherwise rank 0 continues the saved
    one and the others keep seed + rank."""
    rng = ckpt.get('rng')
    if run.torchrun:
        ranks_rng = ckpt.get('rng_ranks') or []
        rng = ranks_rng[run.rank] if len(ranks_rng) == run.world_size else rng if run.master else None
        if len(ranks_rng) != run.world_size:
            print(f"note: {ckpt['path']} was not saved by {run.world_size} processes: ranks other than 0 draw new "
                  f"batches, so the run will differ from an uninterrupted one")
    if rng:
        devices.set_random_state(rng, run.device)
        if rng.get('dropout'):
            masks.set_state(rng['dropout'])


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
    ckpt, path = max(found, key=lambda f: int(f[0]['iter_num']))
    ckpt['path'] = path  # for messages; never saved
    if best:
        print(f"evaluating {path} (iteration {ckpt['iter_num']})")
    return ckpt


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


class NonFiniteWeights(UserError):
    """write() refused to save weights that hold inf or nan (control.Checkpoints adds how to recover)."""

    def __init__(self, iter_num, bad, name):
        self.iter_num, self.bad, self.name = iter_num, bad, name
        super().__init__(f"the weights are not finite at iter {iter_num} ({bad}): training diverged; {name} "
                         f"was not written and earlier checkpoints are untouched (try a lower --learning_rate)")


def write(state, out_dir, name):
    """Write train.py's training state `state` as out_dir/<name>, unless its weights are not
    finite; a new ckpt.pt replaces last.pt as the latest state. Under torchrun rank 0 alone
    calls this."""
    path = os.path.join(out_dir, name)
    # the loss is checked only every log_interval on CUDA, and a signal can come at any
    # iteration, so the weights themselves are checked: a diverged model is never saved
    floats = {k: v for k, v in state['model'].items() if v.is_floating_point()}
    if floats and not torch.stack([torch.isfinite(v).all() for v in floats.values()]).all():  # one sync
        bad = next(k for k, v in floats.items() if not torch.isfinite(v).all())
        raise NonFiniteWeights(state['iter_num'], bad, name)
    print(f"saving checkpoint to {path}")
    save_checkpoint(state, path)
    last = os.path.join(out_dir, 'last.pt')
    if name == 'ckpt.pt' and os.path.exists(last):
        try:
            files.remove(last)  # ckpt.pt is now the latest state too
        except OSError as e:  # harmless: resume takes the newer of the two, now ckpt.pt
            warn_once(f"cannot delete {last} ({e.strerror}), older now than {path}, which resume takes")


def load_optimizer_state(optimizer, ckpt, kind, load=None):
    """Load a checkpoint's optimizer state, with one-line errors when it cannot belong here.
    `kind`: adamw or muon; `load(state_dict)`: how it goes in, where not optimizer.load_state_dict
    (distributed.load_optimizer_state, for FSDP's shards)."""
    sd, path = ckpt['optimizer'], ckpt['path']
    saved = sd.get('kind', 'adamw') if isinstance(sd, dict) else 'adamw'
    if saved != kind:
        raise UserError(f"{path} was trained with optimizer={saved}, whose state cannot continue as {kind}: "
                        f"resume with --optimizer={saved}, or start a new run in another --out_dir")
    try:
        parts = optimizer.inner_states(sd) if kind == 'muon' else [(optimizer, sd)]
        for opt, part in parts:
            fit_optimizer_state(part, [p for g in opt.param_groups for p in g['params']])
        (load or optimizer.load_state_dict)(sd)
    except (ValueError, KeyError, TypeError, RuntimeError) as e:
        raise UserError(f"{path}: its optimizer state does not fit this model's {kind} "
                        f"({type(e).__name__}: {str(e).splitlines()[0][:200]}); the file is damaged "
                        f"or not from this model") from None
