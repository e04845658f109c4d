"""Memory: nanogpt/memory.py's estimate against exact byte counts (parameters, optimizer state)
and against every allocation of a real CPU training step (activations); a run that cannot fit
stops before the model is built, with one line giving the estimate, what is free and the fix; and
running out of memory during training anyway is one line too, checkpoints untouched."""

import os
import re
import weakref
from types import SimpleNamespace

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten

from conftest import needs_muon, ONE_THREAD, run_script, sha, tiny_args
from model import GPT, GPTConfig
from nanogpt import cpu, memory
from nanogpt.data import meta_vocab_size
from nanogpt.errors import UserError
from nanogpt.optim import build_optimizer
import train

pytestmark = pytest.mark.usefixtures('one_thread')


class LiveBytes(TorchDispatchMode):
    """The peak of the bytes held by tensors that ops create while it is active: each new storage
    counts from the op that made it until it is freed (views and in-place results of an op's
    inputs are not new). Exact and independent of timing, unlike the process's resident size."""

    def __init__(self):
        super().__init__()
        self.live, self.now, self.peak = {}, 0, 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        inputs = {t.untyped_storage().data_ptr() for t in tree_flatten((args, kwargs))[0]
                  if isinstance(t, torch.Tensor)}
        for t in tree_flatten(out)[0]:
            if not isinstance(t, torch.Tensor):
                continue
            storage = t.untyped_storage()
            key = storage.data_ptr()
            if key in inputs or key in self.live or storage.nbytes() == 0:
                continue
            self.live[key] = storage.nbytes()
            self.now += storage.nbytes()
            self.peak = max(self.peak, self.now)
            weakref.finalize(storage, self.free, key)
        return out

    def free(self, key):
        self.now -= self.live.pop(key, 0)


@pytest.mark.parametrize('bias', [False, True])
@pytest.mark.parametrize('kind', ['adamw', pytest.param('muon', marks=needs_muon)])
def test_parameter_and_optimizer_state_bytes_are_exact(bias, kind):
    shape = memory.Shape(n_layer=3, n_head=2, n_embd=32, block_size=16, vocab_size=50, bias=bias)
    model = GPT(GPTConfig(n_layer=3, n_head=2, n_embd=32, block_size=16, vocab_size=50, bias=bias))
    c = SimpleNamespace(weight_decay=0.1, learning_rate=1e-3, beta1=0.9, beta2=0.95, muon_lr=0.02, muon_momentum=0.95)
    optimizer = build_optimizer(model, c, kind, 'cpu')
    x = torch.randint(50, (2, 16))
    model(x, x)[1].backward()
    optimizer.step()
    assert shape.params == sum(p.numel() for p in model.parameters())
    assert shape.tensors == len(list(model.parameters()))
    state = sum(v.nbytes for s in optimizer.state.values() for v in s.values() if torch.is_tensor(v))
    assert memory.optimizer_bytes(shape, kind) == state
    est = memory.estimate(shape, 1, optimizer=kind)
    assert est.weights == est.gradients == 4 * shape.params and est.optimizer == state


@pytest.mark.parametrize('dims, dtype, dropout, written_out', [
    ((2, 4, 64, 64, 100, 8), 'float32', 0.0, False),  # (n_layer, n_head, n_embd, block_size, vocab_size, batch)
    ((3, 6, 192, 256, 65, 2), 'bfloat16', 0.0, True),  # autotune's written-out bfloat16 candidate
    ((2, 4, 128, 128, 65, 4), 'bfloat16', 0.1, True),  # CPU dropout: masks, attention written out
    ((2, 4, 256, 128, 50304, 2), 'float32', 0.0, False),  # GPT-2's vocabulary: the output layer dominates
])
def test_activation_estimate_bounds_a_real_cpu_step(dims, dtype, dropout, written_out):
    """A micro-step with gradient accumulation (.grad already there), as train.py runs it on a
    CPU: everything allocated from the forward pass to the end of backward, at its peak, is at
    most the estimate and at least 87% of it."""
    L, nh, C, T, V, B = dims
    torch.manual_seed(0)
    model = GPT(GPTConfig(n_layer=L, n_head=nh, n_embd=C, block_size=T, vocab_size=V, dropout=dropout))
    masks = cpu.MaskSource()
    masks.seed(0)
    if not cpu.use_dropout_masks(model, masks) and written_out:
        cpu.use_written_out_attention(model, True)
    ctx = torch.autocast('cpu', dtype=torch.bfloat16, enabled=dtype == 'bfloat16')
    x, y = torch.randint(V, (B, T)), torch.randint(V, (B, T))
    with ctx:
        model(x, y)[1].backward()  # the first micro-step makes .grad
    with LiveBytes() as live:
        with ctx:
            logits, loss = model(x, y)
        x2, y2 = torch.randint(V, (B, T)), torch.randint(V, (B, T))  # the next batch, fetched meanwhile
        loss.backward()
        del logits, loss
    shape = memory.Shape(L, nh, C, T, V)
    est = memory.activation_bytes(shape, B, dtype, written_out, dropout, cpu_masks=True)  # a CPU step
    assert live.peak <= est <= live.peak / 0.87, (live.peak, est)


def test_a_model_too_big_stops_before_it_is_built(char_dataset, tmp_path):
    """The issue's --n_layer=24 --n_embd=16384 (killed by the kernel after 'Initializing a new
    model from scratch'): one line, before anything is allocated."""
    out = str(tmp_path / 'out')
    r = run_script('train.py', *tiny_args(out, char_dataset, n_layer=24, n_embd=16384, n_head=16, block_size=256,
                                          batch_size=64), env=ONE_THREAD)
    assert r.returncode == 2 and 'Traceback' not in r.stderr and r.stderr.count('\n') == 1
    assert re.match(r"error: this run needs about [\d.]+ GB \(weights 309\.3, gradients 309\.3, optimizer state "
                    r"618\.5, activations of one micro-batch [\d.]+\) on cpu, which has [\d.]+ GB free: the weights, "
                    r"gradients and optimizer state alone do not fit: use a smaller model", r.stderr), r.stderr
    assert 'Initializing a new model' not in r.stdout
    assert os.listdir(out) == ['train.lock']  # nothing written, and the out_dir lock released (its file stays)


def test_a_batch_too_big_gets_a_batch_size_that_fits(char_dataset, tmp_path):
    """Activations that cannot fit: the fix keeps the tokens per step (batch_size * accumulation)
    with the largest micro-batch the estimate lets fit."""
    batch, accum = 10 ** 8, 3
    with pytest.raises(UserError) as e:
        train.main(tiny_args(str(tmp_path / 'out'), char_dataset, batch_size=batch, gradient_accumulation_steps=accum))
    m = re.search(r"activations of one micro-batch [\d.]+\) on cpu, which has ([\d.]+) GB free: use "
                  r"--batch_size=(\d+) --gradient_accumulation_steps=(\d+) \(the same tokens per step\), or a "
                  r"smaller --block_size or model$", str(e.value))
    assert m, str(e.value)
    b, g = int(m.group(2)), int(m.group(3))
    assert b * g == batch * accum and 1 <= b < batch
    shape = memory.Shape(2, 2, 32, 32, meta_vocab_size(char_dataset), False)  # tiny_args' model
    need = memory.estimate(shape, b).total
    assert need <= memory.host_available() * 1.05  # fits (the machine's free memory moves a little)


def test_out_of_memory_during_training_is_one_line(char_dataset, tmp_path):
    """The CPU allocator fails in the middle of training (an address-space limit stands in for a
    full machine): one line naming the iteration, the fix, and the checkpoint that is untouched."""
    out = str(tmp_path / 'out')
    train.main(tiny_args(out, char_dataset, max_iters=4, eval_interval=2))
    before = sha(os.path.join(out, 'ckpt.pt'))
    limited = ("import resource, runpy, sys\n"
               "import torch\n"
               "vm = int(next(l.split()[1] for l in open('/proc/self/status') if l.startswith('VmSize:'))) * 1024\n"
               "resource.setrlimit(resource.RLIMIT_AS, (vm + 300 * 2 ** 20,) * 2)\n"
               "sys.argv = ['train.py'] + sys.argv[1:]\n"
               "runpy.run_path('train.py', run_name='__main__')\n")
    # about 2 GB for a training micro-step, far below what the machine has free
    r = run_script('-c', limited, *tiny_args(out, char_dataset, init_from='resume', max_iters=8, eval_interval=2,
                                              batch_size=12000, peak_flops=1e12), env=ONE_THREAD)
    assert r.returncode == 2 and 'Traceback' not in r.stderr and r.stderr.count('\n') == 1, r.stderr
    assert re.match(r"error: out of memory on cpu at iteration 4 \(.*\); the estimate was [\d.]+ GB of the "
                    r"[\d.]+ GB free at the start: use --batch_size=6000 --gradient_accumulation_steps=2 \(the "
                    r"same tokens per step\), or a smaller --block_size or model; the last checkpoint, "
                    rf"{re.escape(out)}/ckpt\.pt \(iteration 4\), is untouched$", r.stderr.strip()), r.stderr
    assert sha(os.path.join(out, 'ckpt.pt')) == before


def test_the_check_on_a_24_gib_gpu(monkeypatch):
    """config/eval_gpt2_xl.py evaluates gpt2-xl on a 24 GiB card (weights alone), while training it
    there with AdamW cannot fit (weights, gradients and moments, 24.9 GB, and a sequence), and gpt2 at nanoGPT's
    batch_size 32 (15 micro-steps) is told the largest micro-batch that fits, the same 480 sequences per step.
    (The free memory stands in for a GPU's; the formula is what is under test.)"""
    from nanogpt.settings import Run
    monkeypatch.setattr(memory, 'device_free', lambda run: (24 * 2 ** 30 - 2 ** 29, 'cuda:0 (a 24 GiB card)'))
    monkeypatch.setattr(memory, 'host_available', lambda: 64 * 2 ** 30)
    run = Run(device='cuda:0', device_type='cuda', optimizer='adamw', grad_accum=40, tokens_per_iter=491520)

    def settings(**kw):
        return SimpleNamespace(**dict(train.DEFAULTS, dtype='bfloat16', **kw))

    memory.check_fits(settings(init_from='gpt2-xl', eval_only=True, batch_size=8), run, None, None)
    with pytest.raises(UserError, match=r'even one sequence does not fit'):
        memory.check_fits(settings(init_from='gpt2-xl', batch_size=1), run, None, None)
    with pytest.raises(UserError, match=r'use --batch_size=20 --gradient_accumulation_steps=24 \(the same tokens'):
        memory.check_fits(settings(batch_size=32, gradient_accumulation_steps=15), run, None, None)
    memory.check_fits(settings(batch_size=20, gradient_accumulation_steps=24), run, None, None)
