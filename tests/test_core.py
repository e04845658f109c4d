"""The core: the model's basic contract; train.py's batches (get_batch), evaluation and training;
and the three user commands end to end. The configurator: tests/test_configurator.py."""

import contextlib
import math
import os
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from conftest import run_script, tiny_args
from model import GPT, GPTConfig
from train import get_batch


def shakespeare_char_model():
    return GPT(GPTConfig(n_layer=6, n_head=6, n_embd=384, block_size=256, vocab_size=65, bias=False))


def test_parameter_count_and_names(capsys):
    model = shakespeare_char_model()
    assert 'number of parameters: 10.65M' in capsys.readouterr().out
    names = set(model.state_dict())
    for n in ['transformer.wte.weight', 'transformer.wpe.weight', 'transformer.h.0.ln_1.weight',
              'transformer.h.5.attn.c_attn.weight', 'transformer.h.5.attn.c_proj.weight',
              'transformer.h.0.ln_2.weight', 'transformer.h.0.mlp.c_fc.weight',
              'transformer.h.0.mlp.c_proj.weight', 'transformer.ln_f.weight', 'lm_head.weight']:
        assert n in names
    assert model.lm_head.weight is model.transformer.wte.weight


def test_forward_shapes_initial_loss_and_causality():
    torch.manual_seed(0)
    model = GPT(GPTConfig(n_layer=2, n_head=2, n_embd=32, block_size=16, vocab_size=50, bias=True))
    x = torch.randint(50, (3, 16))
    logits, loss = model(x, torch.randint(50, (3, 16)))  # targets unrelated to the inputs
    assert logits.shape == (3, 16, 50)
    assert abs(loss.item() - math.log(50)) < 0.3  # near-uniform predictions at init
    logits, loss = model(x)
    assert logits.shape == (3, 1, 50) and loss is None
    # changing a later token never changes earlier positions' logits
    model.eval()
    full = model(x, x)[0]
    x2 = x.clone()
    x2[:, 10] = (x2[:, 10] + 1) % 50
    full2 = model(x2, x2)[0]
    assert torch.allclose(full[:, :10], full2[:, :10])
    assert not torch.allclose(full[:, 10:], full2[:, 10:])
    with pytest.raises(ValueError, match='block_size is only 16'):
        model(torch.zeros(1, 17, dtype=torch.long))


def test_init_is_seed_deterministic_and_scaled():
    torch.manual_seed(1337)
    a = GPT(GPTConfig(n_layer=3, n_head=2, n_embd=32, block_size=8, vocab_size=20))
    torch.manual_seed(1337)
    b = GPT(GPTConfig(n_layer=3, n_head=2, n_embd=32, block_size=8, vocab_size=20))
    for (n, p), q in zip(a.state_dict().items(), b.state_dict().values()):
        assert torch.equal(p, q), n
    std = a.transformer.h[0].mlp.c_proj.weight.std().item()
    assert abs(std - 0.02 / math.sqrt(6)) < 0.002
    assert a.transformer.h[0].attn.c_attn.bias.abs().sum() == 0


def test_user_commands_end_to_end(tmp_path):
    """prepare -> train -> sample, as a user types them (tiny model, short run)."""
    r = run_script('data/shakespeare_char/prepare.py')
    assert r.returncode == 0, r.stderr
    assert 'train has 1,003,854 tokens' in r.stdout and 'val has 111,540 tokens' in r.stdout
    out = str(tmp_path / 'out')
    args = ['train.py', 'config/train_shakespeare_char.py', f'--out_dir={out}', '--n_layer=2', '--n_head=2',
            '--n_embd=64', '--batch_size=8', '--block_size=64', '--max_iters=20', '--eval_interval=10',
            '--eval_iters=2', '--compile=False']
    r = run_script(*args)
    assert r.returncode == 0, r.stderr
    assert 'found vocab_size = 65' in r.stdout
    assert 'step 0: train loss 4.' in r.stdout and 'step 20: train loss' in r.stdout
    assert 'iter 10: loss ' in r.stdout and 'ms, mfu ' in r.stdout
    assert os.path.exists(os.path.join(out, 'ckpt.pt'))
    r = run_script('sample.py', f'--out_dir={out}', '--start=ROMEO:', '--num_samples=3', '--max_new_tokens=40')
    assert r.returncode == 0, r.stderr
    assert 'Loading meta from data/shakespeare_char/meta.pkl...' in r.stdout
    assert r.stdout.count('\n---------------\n') == 3
    assert r.stdout.count('ROMEO:') >= 3
    assert 'Traceback' not in r.stderr


def test_training_learns_and_is_deterministic(char_dataset, tmp_path):
    import train
    s1 = train.main(tiny_args(str(tmp_path / 'a'), char_dataset, max_iters=30, eval_interval=30, lr_decay_iters=30))
    s2 = train.main(tiny_args(str(tmp_path / 'b'), char_dataset, max_iters=30, eval_interval=30, lr_decay_iters=30))
    assert s1['losses'] == s2['losses']
    assert s1['evals'][30][1] < s1['evals'][0][1] - 0.3


def test_evaluation_draws_the_same_batches_however_many_go_through_one_forward(char_dataset):
    """On a GPU several of an evaluation's batches share a forward (devices.eval_batches): the same
    windows, the same random draws, and a mean equal to the one-batch-at-a-time mean."""
    import train
    from nanogpt.data import open_split
    c = SimpleNamespace(block_size=16, batch_size=3, eval_iters=6)
    data = {s: open_split(char_dataset, s, char_dataset, 16, 30) for s in ('train', 'val')}
    torch.manual_seed(0)
    model = GPT(GPTConfig(n_layer=1, n_head=2, n_embd=16, block_size=16, vocab_size=30))
    ctl = SimpleNamespace(eval_progress=lambda split, k: None)
    results, states = [], []
    for k in (1, 2, 3, 6):
        run = SimpleNamespace(device='cpu', device_type='cpu', eval_batches=k, torchrun=False)
        torch.manual_seed(1)
        results.append(train.estimate_loss(model, data, contextlib.nullcontext(), c, run, ctl))
        states.append(torch.get_rng_state())
    for r, s in zip(results[1:], states[1:]):
        assert torch.equal(s, states[0])
        assert r == pytest.approx(results[0], rel=1e-6)
    assert model.training


@pytest.mark.parametrize('device_type, batch, block, vocab, iters, expected', [
    ('cpu', 64, 256, 65, 200, 1),  # a CPU keeps one batch per forward
    ('cuda', 64, 256, 65, 200, 10),  # 16,384 tokens a batch: 10 divide 200 within 2**18 tokens
    ('cuda', 12, 1024, 50304, 200, 1),  # GPT-2's logits: one batch is already large
    ('cuda', 4, 64, 65, 7, 7)])  # a prime eval_iters: all of them at once, when they fit
def test_batches_per_evaluation_forward(device_type, batch, block, vocab, iters, expected):
    from nanogpt.devices import eval_batches
    c = SimpleNamespace(batch_size=batch, block_size=block, eval_iters=iters)
    assert eval_batches(c, vocab, device_type) == expected


# ---- train.py's batches -----------------------------------------------------------------------------

def test_batches_pin_contiguous_tensors(monkeypatch):
    """pin_memory needs CUDA, so the device type says cuda while the copies go to the CPU: what
    matters is what pin_memory is called on."""
    data = {'train': (np.arange(5000) % 61).astype(np.uint16)}
    c = SimpleNamespace(block_size=16, batch_size=6)
    pinned = []

    def pin_memory(self, *args, **kwargs):
        pinned.append((tuple(self.shape), self.is_contiguous()))
        return self
    monkeypatch.setattr(torch.Tensor, 'pin_memory', pin_memory)
    torch.manual_seed(0)
    x, y = get_batch(data['train'], c, SimpleNamespace(device='cpu', device_type='cuda'))
    assert pinned == [((6, 16), True), ((6, 16), True)]
    assert torch.equal(x[:, 1:], y[:, :-1])  # targets are the inputs shifted by one
    assert torch.equal((x[:, 1:] - x[:, :-1]) % 61, torch.ones(6, 15, dtype=torch.long))
    # the CPU path gets the same batch for the same RNG state
    torch.manual_seed(0)
    x2, y2 = get_batch(data['train'], c, SimpleNamespace(device='cpu', device_type='cpu'))
    assert torch.equal(x, x2) and torch.equal(y, y2)
