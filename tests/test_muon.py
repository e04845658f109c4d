"""optimizer='muon': torch.optim.Muon for the blocks' matrices and AdamW for the rest, each with
its own peak learning rate on one schedule; checkpoints the original reads; exact resume."""

import os
from types import SimpleNamespace

import pytest
import torch

from nanogpt import optim
import train
from nanogpt.errors import UserError
from conftest import needs_muon, ORIGINAL_GPTCONFIG_FIELDS, assert_plain, tiny_args, tiny_model
from model import GPT, GPTConfig

MUON = dict(optimizer='muon', muon_lr=0.02)


def settings(**kw):
    c = dict(optimizer='muon', learning_rate=1e-3, muon_lr=0.02, muon_momentum=0.95, weight_decay=0.1,
             beta1=0.9, beta2=0.95)
    c.update(kw)
    return SimpleNamespace(**c)


@needs_muon
def test_muon_takes_the_block_matrices_and_adamw_the_rest():
    model = tiny_model(vocab_size=30, training=True)
    opt = optim.build_optimizer(model, settings(), 'muon', 'cpu')
    names = {id(p): n for n, p in model.named_parameters()}
    muon = {names[id(p)] for g in opt.muon.param_groups for p in g['params']}
    adamw = {names[id(p)] for g in opt.adamw.param_groups for p in g['params']}
    assert muon == {f'transformer.h.{i}.{m}.weight' for i in range(2)
                    for m in ('attn.c_attn', 'attn.c_proj', 'mlp.c_fc', 'mlp.c_proj')}
    assert 'transformer.wte.weight' in adamw and 'transformer.wpe.weight' in adamw  # wte is lm_head too
    assert muon.isdisjoint(adamw) and muon | adamw == set(names.values())
    decay = {names[id(p)] for p in opt.adamw.param_groups[0]['params']}
    assert decay == {'transformer.wte.weight', 'transformer.wpe.weight'}  # 1-D gains and biases do not decay
    assert isinstance(opt.muon, torch.optim.Muon)  # StackedMuon is one


@needs_muon
def test_each_group_follows_the_schedule_from_its_own_peak():
    opt = optim.build_optimizer(tiny_model(vocab_size=30, training=True), settings(), 'muon', 'cpu')
    optim.set_lr(opt, 5e-4, 1e-3)  # half way down from the peak
    lrs = sorted({g['lr'] for g in opt.param_groups})
    assert lrs == [5e-4, pytest.approx(0.01)]
    adamw = optim.build_optimizer(tiny_model(vocab_size=30, training=True), settings(optimizer='adamw'), 'adamw', 'cpu')
    optim.set_lr(adamw, 3.3e-4, 1e-3)
    assert {g['lr'] for g in adamw.param_groups} == {3.3e-4}  # exactly the original's value


@needs_muon
def test_muon_trains_resumes_exactly_and_the_original_reads_its_checkpoint(char_dataset, tmp_path):
    kw = dict(MUON, max_iters=8, eval_interval=4, lr_decay_iters=8, dropout=0.1, always_save_checkpoint=True)
    whole = train.main(tiny_args(str(tmp_path / 'whole'), char_dataset, **kw))
    assert whole['losses'][8] < whole['losses'][0] - 0.15
    out = str(tmp_path / 'parts')
    train.main(tiny_args(out, char_dataset, **dict(kw, max_iters=4)))
    rest = train.main(tiny_args(out, char_dataset, init_from='resume', **kw))
    assert rest['losses'] == {i: whole['losses'][i] for i in range(4, 9)}  # bit for bit, float32 CPU

    ckpt = torch.load(os.path.join(out, 'ckpt.pt'), map_location='cpu')
    assert_plain(ckpt)
    assert ckpt['optimizer']['kind'] == 'muon' and ckpt['config']['optimizer'] == 'muon'
    assert set(ckpt['model_args']) <= ORIGINAL_GPTCONFIG_FIELDS
    model = GPT(GPTConfig(**ckpt['model_args']))  # what the original's sample.py does
    model.load_state_dict(ckpt['model'])

    with pytest.raises(UserError, match='trained with optimizer=muon.*--optimizer=muon'):
        train.main(tiny_args(out, char_dataset, init_from='resume', optimizer='adamw', max_iters=12))


def test_muon_errors_are_one_line(char_dataset, tmp_path, monkeypatch):
    with pytest.raises(UserError, match='unknown optimizer'):
        train.main(tiny_args(str(tmp_path / 'a'), char_dataset, optimizer='sgd'))
    with pytest.raises(UserError, match='muon_lr'):
        train.main(tiny_args(str(tmp_path / 'b'), char_dataset, optimizer='muon', muon_lr=0))
    monkeypatch.setenv('RANK', '0')  # as under torchrun: refused before any process group exists
    with pytest.raises(UserError, match='fsdp'):
        train.main(tiny_args(str(tmp_path / 'c'), char_dataset, optimizer='muon', fsdp=True))
    monkeypatch.delenv('RANK')
    monkeypatch.setattr(torch, '__version__', '2.8.1+cpu')
    with pytest.raises(UserError, match=r'torch 2\.9 and later.*2\.8\.1'):
        optim.build_optimizer(tiny_model(vocab_size=30, training=True), settings(), 'muon', 'cpu')


@needs_muon
def test_auto_takes_muon_and_float32_orthogonalisation_where_bfloat16_is_emulated(monkeypatch, capsys):
    from nanogpt import devices
    monkeypatch.setattr(devices, 'cpu_has_bf16_units', lambda: True)
    assert optim.resolve_optimizer('auto', 'cpu') == 'muon'
    assert optim.build_optimizer(tiny_model(vocab_size=30, training=True), settings(), 'muon', 'cpu').muon.ns_dtype == torch.bfloat16
    monkeypatch.setattr(devices, 'cpu_has_bf16_units', lambda: False)
    assert optim.resolve_optimizer('auto', 'cpu') == 'muon'  # measured ahead of AdamW at equal time
    assert optim.build_optimizer(tiny_model(vocab_size=30, training=True), settings(), 'muon', 'cpu').muon.ns_dtype == torch.float32
    monkeypatch.setattr(torch.cuda, 'get_device_capability', lambda device=None: (7, 5))
    assert optim.resolve_optimizer('auto', 'cuda', 'cuda') == 'muon'
    monkeypatch.setattr(torch.cuda, 'get_device_capability', lambda device=None: (9, 0))
    assert optim.resolve_optimizer('auto', 'cuda', 'cuda') == 'muon'
    assert optim.resolve_optimizer('auto', 'cuda', 'cuda', sharded=True) == 'adamw'  # FSDP
    assert optim.resolve_optimizer('muon', 'cpu') == 'muon'  # asked for: kept
    out = [line for line in capsys.readouterr().out.splitlines() if line.startswith('using optimizer: ')]
    assert len(out) == 5 and all('(auto: ' in line for line in out)


def test_auto_optimizer_is_stored_resolved(char_dataset, tmp_path):
    s = train.main(tiny_args(str(tmp_path / 'out'), char_dataset, optimizer='auto', max_iters=2, eval_interval=2))
    assert s['config']['optimizer'] in ('adamw', 'muon')


@needs_muon
@pytest.mark.parametrize('ns_dtype', [torch.bfloat16, torch.float32])
def test_stacked_muon_takes_torch_muons_step_and_state(ns_dtype):
    """StackedMuon orthogonalises the matrices of one shape as one stack: from the same weights and
    gradients (two shapes, three matrices, tall and wide) it lands where torch.optim.Muon does,
    within bfloat16's rounding of the update, and keeps the same state; in float32 its
    orthogonalisation matches a float64 run of the same iteration, matrix by matrix."""
    torch.manual_seed(0)
    ws = [torch.randn(48, 16), torch.randn(48, 16), torch.randn(16, 40)]
    steps = [[torch.randn_like(w) for w in ws] for _ in range(3)]
    kw = dict(lr=0.05, momentum=0.95, weight_decay=0.1)
    results = {}
    for cls, extra in ((torch.optim.Muon, {}), (optim.StackedMuon, dict(ns_dtype=ns_dtype))):
        ps = [torch.nn.Parameter(w.clone()) for w in ws]
        opt = cls(ps, **kw, **extra)
        for grads in steps:
            for p, g in zip(ps, grads):
                p.grad = g.clone()
            opt.step()
        results[cls] = ([p.detach().clone() for p in ps], opt.state_dict())
    (ref, ref_sd), (ours, ours_sd) = results[torch.optim.Muon], results[optim.StackedMuon]
    for w, r, o in zip(ws, ref, ours):
        moved = (r - w).abs().max().item()
        assert (o - r).abs().max().item() <= 0.03 * moved  # bf16 rounding of the reference, no more
    for i in range(len(ws)):
        assert ours_sd['state'][i].keys() == ref_sd['state'][i].keys()
        torch.testing.assert_close(ours_sd['state'][i]['momentum_buffer'], ref_sd['state'][i]['momentum_buffer'])
    g = torch.randn(3, 16, 40, dtype=torch.float64)
    coeff, n, eps = (3.4445, -4.7750, 2.0315), 5, 1e-7
    stacked = optim.orthogonalize(g.float(), coeff, n, eps).double()
    for i in range(3):
        torch.testing.assert_close(stacked[i], optim.orthogonalize(g[i:i + 1], coeff, n, eps)[0], rtol=1e-4, atol=1e-5)


@needs_muon
def test_muon_orthogonalises_in_float32_where_bfloat16_is_emulated(monkeypatch, capsys):
    from nanogpt import devices
    monkeypatch.setattr(devices, 'cpu_has_bf16_units', lambda: False)
    opt = optim.build_optimizer(tiny_model(vocab_size=30, training=True), settings(), 'muon', 'cpu')
    assert opt.muon.ns_dtype == torch.float32 and 'float32 orthogonalisation' in capsys.readouterr().out
    monkeypatch.setattr(devices, 'cpu_has_bf16_units', lambda: True)
    assert optim.build_optimizer(tiny_model(vocab_size=30, training=True), settings(), 'muon', 'cpu').muon.ns_dtype == torch.bfloat16
