"""The core: configurator rules, the model's basic contract, and the three user commands end to end."""

import contextlib
import math
import os

import pytest
import torch

from conftest import run_script, tiny_args
from nanogpt.errors import UserError
from configurator import apply_overrides
from model import GPT, GPTConfig

DEFAULTS = {'batch_size': 12, 'learning_rate': 6e-4, 'compile': 'auto', 'bias': False, 'out_dir': 'out',
            'start': '\n'}


def test_overrides_types_and_equals_in_value():
    c = apply_overrides(DEFAULTS, ['--batch_size=32', '--learning_rate=1', '--compile=False', '--bias=True',
                                   '--out_dir=out-x', '--start=a=b'], verbose=False)
    assert c == {'batch_size': 32, 'learning_rate': 1.0, 'compile': False, 'bias': True,
                 'out_dir': 'out-x', 'start': 'a=b'}
    assert isinstance(c['learning_rate'], float)


@pytest.mark.parametrize('arg, msg', [
    (['--batch_sise=3'], 'did you mean batch_size'),
    (['--batch_size=3.5'], 'batch_size must be int'),
    (['--bias=1'], 'bias must be bool'),
    (['--batch_size'], 'malformed argument'),
    (['config/nope.py'], 'config file not found'),
])
def test_override_errors(arg, msg):
    with pytest.raises(UserError, match=msg):
        apply_overrides(DEFAULTS, arg, verbose=False)


def test_config_file_applies_and_rejects_unknown(tmp_path):
    good = tmp_path / 'a.py'
    good.write_text("import math\nbatch_size = 4 * 2\nlearning_rate = 1e-3\n")
    assert apply_overrides(DEFAULTS, [str(good)], verbose=False)['batch_size'] == 8
    bad = tmp_path / 'b.py'
    bad.write_text("batchsize = 4\n")
    with pytest.raises(UserError, match="unknown setting 'batchsize'"):
        apply_overrides(DEFAULTS, [str(bad)], verbose=False)


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
    from types import SimpleNamespace
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
    from types import SimpleNamespace
    from nanogpt.devices import eval_batches
    c = SimpleNamespace(batch_size=batch, block_size=block, eval_iters=iters)
    assert eval_batches(c, vocab, device_type) == expected
