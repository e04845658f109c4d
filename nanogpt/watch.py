"""
Watching a run learn: a short sample after each evaluation (sample_every_eval), so the text can be
seen turning from noise into the dataset's style, and the loss plot drawn into out_dir when the
run ends (where matplotlib is installed; plot.py draws it again on demand). control.RunControl
calls both.

The sample takes nothing from training: it draws with its own seed inside torch.random.fork_rng,
which puts the random streams (CPU and the run's device) back as they were, and the model runs in
eval mode, where no dropout mask is drawn. So a run's losses are the same, bit for bit, with
samples on and off (tests/test_watch.py).
"""

import json
import os
import time

import torch

from . import devices
from .data import tokenizer_for
from .engine import Engine, NonFiniteLogitsError
from .errors import UserError, warn_once

__all__ = ['EvalSample', 'LossPlot', 'NoMatplotlib', 'plot_losses', 'pyplot', 'read_metrics']


def _forked_rng(device):
    """torch.random.fork_rng for the CPU's stream and `device`'s own, if it has one."""
    d = torch.device(device)
    if d.type == 'cpu':
        return torch.random.fork_rng(devices=[])
    index = d.index if d.index is not None else (torch.cuda.current_device() if d.type == 'cuda' else 0)
    return torch.random.fork_rng(devices=[index], device_type=d.type)


class EvalSample:
    """The sample after each evaluation but a run's first (the untrained model's noise, or for a
    resumed run the model the previous run's last sample showed): sample_max_new_tokens tokens
    after sample_start, drawn as sample.py draws by default (temperature 0.8, top_k 200) through
    its engine (the key/value cache), with the run's seed every time so that one evaluation's
    sample compares with the next. On rank 0 alone; off under FSDP, where the model is sharded
    and every process would have to take part. `model`: the unwrapped GPT; `metrics`: the
    metrics.Metrics that prints it and writes it to metrics.jsonl."""

    TEMPERATURE, TOP_K = 0.8, 200  # sample.py's defaults
    GUESS_S = 1.0  # seconds the time budget keeps for a sample before one is measured

    def __init__(self, c, run, model, metrics):
        self.c, self.run, self.model, self.metrics = c, run, model, metrics
        self.on = bool(c.sample_every_eval) and run.master
        self.evaluations = 0
        if not self.on:
            return
        if c.sample_max_new_tokens < 1:
            raise UserError(f"sample_max_new_tokens={c.sample_max_new_tokens} must be 1 or more: the "
                            f"length of the sample after each evaluation, e.g. --sample_max_new_tokens=200")
        if run.fsdp:
            warn_once("sample_every_eval is off under FSDP (the sharded model cannot sample on one process): "
                      "sample from the checkpoint with sample.py")
            self.on = False
            return
        try:
            self.tok = tokenizer_for(c.dataset, model.config.vocab_size)
        except UserError as e:  # e.g. tiktoken's files offline: the run goes on without samples
            warn_once(f"no samples at evaluations: {e}")
            self.on = False
            return
        try:
            ids = self.tok.encode(c.sample_start)
        except UserError as e:
            raise UserError(f"sample_start={c.sample_start!r}: {e}; give another --sample_start=") from None
        if not ids and self.tok.eot is None:
            raise UserError("sample_start is empty and this vocabulary has no start token: give at least one "
                            "character, e.g. --sample_start='\\n'")
        ids = ids or [self.tok.eot]
        self.idx = torch.tensor([ids], dtype=torch.long, device=run.device)
        self.engine = Engine(model)
        self.ctx = devices.autocast_ctx(run.device_type, run.dtype)

    def __call__(self, iter_num):
        """After the evaluation at iter_num: print and record the sample (rank 0). Returns the
        seconds it took (0 where none is drawn)."""
        self.evaluations += 1
        if not self.on or self.evaluations == 1:
            return 0.0
        t0 = time.time()
        model, was_training = self.model, self.model.training
        with _forked_rng(self.run.device), self.ctx:
            torch.manual_seed(self.c.seed)
            model.eval()
            try:
                out = self.engine.generate(self.idx, self.c.sample_max_new_tokens, temperature=self.TEMPERATURE,
                                           top_k=self.TOP_K)
            except NonFiniteLogitsError:  # an overflow in reduced precision; a finite val loss went before
                warn_once(f"no sample at step {iter_num}: the model's logits are not finite")
                return time.time() - t0
            finally:
                model.train(was_training)
        text = self.tok.decode(out[0, self.idx.size(1):].tolist())
        seconds = time.time() - t0
        self.metrics.sample(iter_num, self.c.sample_start, text, seconds)
        return seconds


class LossPlot:
    """out_dir/loss.png, drawn from metrics.jsonl when a run ends by itself (loss_plot=True; rank 0;
    not for eval_only, which adds no curve; not after a stop signal, whose grace period is for
    the checkpoint): the path in the closing lines, or where matplotlib is missing one line that
    says how to get it. A plot that fails says so in one line: the run's results are saved.
    With a time budget matplotlib is imported as the run starts (the better part of a second), so
    that the run's end, which the budget must reserve, is the drawing alone."""

    GUESS_S = 0.5  # seconds the time budget keeps for the drawing after the last save

    def __init__(self, c, run):
        self.c = c
        self.on = run.master and not c.eval_only and c.loss_plot
        self.drawable = False
        if self.on and c.time_budget:  # the budget keeps time for the drawing alone
            self._import()

    def _import(self):
        try:
            pyplot()
            self.drawable = True
        except NoMatplotlib:
            pass

    def draw(self):
        if not self.on:
            return None
        png = os.path.join(self.c.out_dir, 'loss.png')
        if not self.drawable:
            self._import()
        try:
            if not self.drawable:
                raise NoMatplotlib()
            path = plot_losses(os.path.join(self.c.out_dir, 'metrics.jsonl'), png)
        except NoMatplotlib:
            line = (f"loss plot: not drawn, matplotlib is not installed: pip install matplotlib to have "
                    f"{png} drawn when a run ends (or run python plot.py --out_dir={self.c.out_dir} then)")
        except Exception as e:  # UserError, a full disk, a matplotlib backend error
            line = f"loss plot: not drawn ({type(e).__name__}: {str(e).strip()[:160]})"
        else:
            line = f"loss plot: {path}"
        print(line)
        return line


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
    """matplotlib is not installed (LossPlot says so in its own words)."""


def pyplot():
    """matplotlib.pyplot, drawing to files only (no display needed); NoMatplotlib without it."""
    try:
        import matplotlib
        matplotlib.use('Agg')
        import matplotlib.pyplot as plt
    except ImportError:
        raise NoMatplotlib("plotting needs matplotlib: pip install matplotlib") from None
    return plt


def plot_losses(metrics_path, png_path):
    """Draw the run of metrics_path (a metrics.jsonl) into png_path: train and val loss, and the
    learning rate: plot.py's command and the plot a run draws when it ends (LossPlot)."""
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
