"""
Earlier runs in an out_dir: a new run (init_from=scratch, a finetune, a GPT-2 start) into an
out_dir that holds another run's files moves them aside, to out_dir/previous/run-N/ (N = 1, 2, ...
the oldest first), instead of writing over its model. The new run then owns out_dir/ckpt.pt,
which sample.py, init_from=resume and eval_only read: the newest run, as before. One line says
what was kept (its iteration and validation loss) and how to delete it; keep_previous_runs=False
writes over it, as nanoGPT does.

Called on rank 0 alone, with out_dir's lock held (outdir.check_out_dir), once the run has built
its model and is about to write: a run that stops during setup leaves out_dir as it found it.
"""

import os
import re

import torch

from .outdir import HOLDER_NAME, LOCK_NAME
from .shell import remove_folder

PREVIOUS = 'previous'  # out_dir/previous/run-N/
RUN_FILES = ('ckpt.pt', 'last.pt', 'metrics.jsonl')  # what makes an out_dir hold a run
_KEEP_IN_PLACE = {PREVIOUS, LOCK_NAME, HOLDER_NAME}


def keep_previous_run(c, run):
    """Before a new run writes into c.out_dir: move the files of the run already there to
    out_dir/previous/run-N/ and say so (nothing with keep_previous_runs=False, init_from=resume,
    eval_only, or on a process other than rank 0). Returns the folder, or None."""
    if not run.master or c.init_from == 'resume' or c.eval_only or not c.keep_previous_runs:
        return None
    if not any(os.path.exists(os.path.join(c.out_dir, name)) for name in RUN_FILES):
        return None
    what = describe_run(c.out_dir)
    kept = os.path.join(c.out_dir, PREVIOUS, f"run-{_next_number(c.out_dir)}")
    os.makedirs(kept)
    for name in sorted(os.listdir(c.out_dir)):
        if name not in _KEEP_IN_PLACE and not name.startswith('.write_test'):
            os.replace(os.path.join(c.out_dir, name), os.path.join(kept, name))  # the same filesystem: a rename
    print(f"kept the previous run in {c.out_dir} ({what}) in {kept}; delete it with: {remove_folder(kept)} "
          f"(--keep_previous_runs=False writes over a previous run)")
    return kept


def describe_run(out_dir):
    """'iteration N, val loss X' of the run in out_dir, read from its newest checkpoint's header
    (memory-mapped: the weights are not read), or what it holds instead."""
    for name in ('last.pt', 'ckpt.pt'):  # last.pt exists only while it is the newer
        path = os.path.join(out_dir, name)
        if not os.path.exists(path):
            continue
        try:
            ckpt = torch.load(path, map_location='cpu', weights_only=True, mmap=True)
            loss = float(ckpt['best_val_loss'])
            return f"{name} at iteration {ckpt['iter_num']}, best val loss " + (
                f"{loss:.4f}" if loss < 1e9 else "not measured")
        except Exception:  # a damaged file is kept all the same, and named so
            return f"{name}, which cannot be read"
    return "metrics.jsonl only, no checkpoint"


def _next_number(out_dir):
    folder = os.path.join(out_dir, PREVIOUS)
    taken = [int(m.group(1)) for m in map(re.compile(r'run-(\d+)$').match,
                                          os.listdir(folder) if os.path.isdir(folder) else []) if m]
    return max(taken, default=0) + 1
