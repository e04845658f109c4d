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

import os
import sys
from types import SimpleNamespace

from configurator import apply_overrides, settings_of
from nanogpt.errors import run_cli
from nanogpt.watch import plot_losses

out_dir = 'out'
png = ''  # default: out_dir/loss.png
DEFAULTS = settings_of(globals())


def main(argv=None):
    c = SimpleNamespace(**apply_overrides(DEFAULTS, sys.argv[1:] if argv is None else argv, verbose=False))
    path = plot_losses(os.path.join(c.out_dir, 'metrics.jsonl'), c.png or os.path.join(c.out_dir, 'loss.png'))
    print(f"wrote {path}")
    return path


if __name__ == '__main__':
    run_cli(main)
