"""
Watching a run learn: a short sample after each evaluation (sample_every_eval), so the text can be
seen turning from noise into the dataset's style, and the loss plot drawn into out_dir when the
run ends (plot.py's drawing, where matplotlib is installed). control.RunControl calls both.

The sample takes nothing from training: it draws with its own seed inside torch.random.fork_rng,
which puts the random streams (CPU and the run's device) back as they were, and the model runs in
eval mode, where no dropout mask is drawn. So a run's losses are the same, bit for bit, with
samples on and off (tests/test_watch.py).
"""

import os
import time

import torch

from . import devices
from .data import tokenizer_for
from .engine import Engine, NonFiniteLogitsError
from .errors import UserError, warn_once

__all__ = ['EvalSample', 'LossPlot']


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
    """out_dir/loss.png, drawn from metrics.jsonl by plot.py when a run ends by itself (rank 0;
    not for eval_only, which adds no curve; not after a stop signal, whose grace period is for
    the checkpoint): the path in the closing lines, or where matplotlib is missing one line that
    says how to get it. A plot that fails says so in one line: the run's results are saved.
    matplotlib is imported as the run starts (the better part of a second), so that the run's end,
    which the time budget must reserve, is the drawing alone."""

    GUESS_S = 0.5  # seconds the time budget keeps for the drawing after the last save

    def __init__(self, c, run):
        self.c = c
        self.on = run.master and not c.eval_only
        self.drawable = False
        if self.on:
            import plot  # the root's plot.py: one drawing for this and for plot.py's command
            self.plot = plot
            try:
                plot.pyplot()
                self.drawable = True
            except plot.NoMatplotlib:
                pass

    def draw(self):
        if not self.on:
            return None
        png = os.path.join(self.c.out_dir, 'loss.png')
        try:
            if not self.drawable:
                raise self.plot.NoMatplotlib()
            path = self.plot.plot(os.path.join(self.c.out_dir, 'metrics.jsonl'), png)
        except self.plot.NoMatplotlib:
            line = (f"loss plot: not drawn, matplotlib is not installed: pip install matplotlib to have "
                    f"{png} drawn when a run ends (or run python plot.py --out_dir={self.c.out_dir} then)")
        except Exception as e:  # UserError, a full disk, a matplotlib backend error
            line = f"loss plot: not drawn ({type(e).__name__}: {str(e).strip()[:160]})"
        else:
            line = f"loss plot: {path}"
        print(line)
        return line
