"""
Draw a run's loss curves (and learning rate) from out_dir/metrics.jsonl into a PNG.

    python plot.py --out_dir=out-shakespeare-char-cpu            # writes out_dir/loss.png
    python plot.py --out_dir=out-shakespeare-char --png=loss.png

train.py draws out_dir/loss.png itself when a run ends; this command draws it again: for a run
in progress, an older out_dir, or another file name. train.py appends one JSON line per logged
iteration ({"event": "iter", "iter", "loss", "lr", ...}), per evaluation ({"event": "eval",
"iter", "train_loss", "val_loss", ...}) and per sample printed at an evaluation ({"event":
"sample", ...}: not drawn). A resumed run appends to the same file; where iterations were
repeated after a resume, the latest line wins. Needs matplotlib (pip install matplotlib).
"""

import json
import os
import sys
from types import SimpleNamespace

from configurator import apply_overrides, settings_of
from nanogpt.errors import UserError, run_cli

out_dir = 'out'
png = ''  # default: out_dir/loss.png
DEFAULTS = settings_of(globals())


def read_metrics(path):
    """(iters, evals): dicts iteration -> event, the latest line for each iteration."""
    if not os.path.exists(path):
        raise UserError(f"no metrics at {path}: train.py writes it; run e.g. "
                        f"python train.py config/train_shakespeare_char_cpu.py")
    iters, evals = {}, {}
    with open(path) as f:
        for line in f:
            try:
                e = json.loads(line)
            except json.JSONDecodeError:
                continue  # a line cut short by a crash
            if e.get('event') == 'iter':
                iters[e['iter']] = e
            elif e.get('event') == 'eval':
                evals[e['iter']] = e
    if not iters and not evals:
        raise UserError(f"{path} holds no iteration or evaluation lines yet")
    return iters, evals


class NoMatplotlib(UserError):
    """matplotlib is not installed (train.py's end-of-run plot says so in its own words)."""


def pyplot():
    """matplotlib.pyplot, drawing to files only (no display needed); NoMatplotlib without it."""
    try:
        import matplotlib
        matplotlib.use('Agg')
        import matplotlib.pyplot as plt
    except ImportError:
        raise NoMatplotlib("plotting needs matplotlib: pip install matplotlib") from None
    return plt


def plot(metrics_path, png_path):
    """Draw the run of metrics_path (a metrics.jsonl) into png_path: train and val loss, and the
    learning rate. train.py's end-of-run plot draws with this too (nanogpt/watch.py)."""
    plt = pyplot()
    iters, evals = read_metrics(metrics_path)
    fig, (ax, ax_lr) = plt.subplots(2, 1, figsize=(8, 6), sharex=True, height_ratios=(3, 1))
    if iters:
        xs = sorted(iters)
        ax.plot(xs, [iters[i]['loss'] for i in xs], color='0.75', lw=0.8, label='train (batch)')
        ax_lr.plot(xs, [iters[i]['lr'] for i in xs], color='tab:green')
    if evals:
        xs = sorted(evals)
        ax.plot(xs, [evals[i]['train_loss'] for i in xs], 'o-', color='tab:blue', label='train (eval)')
        ax.plot(xs, [evals[i]['val_loss'] for i in xs], 'o-', color='tab:orange', label='val')
        # the last evaluation is of the model the run kept (and of a re-evaluation, when one was run
        # with --eval_only=True); the best of several small noisy evaluations flatters
        last, best = xs[-1], min(xs, key=lambda i: evals[i]['val_loss'])
        title = f"final val loss {evals[last]['val_loss']:.4f} at iter {last}"
        if best != last:
            title += f" (lowest {evals[best]['val_loss']:.4f} at iter {best})"
        ax.set_title(title)
    ax.set_ylabel('loss')
    ax.grid(alpha=0.3)
    ax.legend()
    ax_lr.set_ylabel('learning rate')
    ax_lr.set_xlabel('iteration')
    ax_lr.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(png_path, dpi=100)
    plt.close(fig)
    return png_path


def main(argv=None):
    c = SimpleNamespace(**apply_overrides(DEFAULTS, sys.argv[1:] if argv is None else argv, verbose=False))
    path = plot(os.path.join(c.out_dir, 'metrics.jsonl'), c.png or os.path.join(c.out_dir, 'loss.png'))
    print(f"wrote {path}")
    return path


if __name__ == '__main__':
    run_cli(main)
