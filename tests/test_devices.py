"""GPU and MPS code paths, checked on a CPU: the device queries (compute capability, device name,
current device, accelerator) are monkeypatched, or the property itself is asserted (contiguity,
explicit device arguments, finite probabilities, host syncs). torch's math is never replaced."""

import math
import os
import sys
from types import SimpleNamespace

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from nanogpt import devices
from nanogpt import distributed
from nanogpt import engine
from nanogpt.checkpoint import random_state_to_save
from nanogpt.errors import UserError
from train import get_batch
from model import GPT, GPTConfig
from nanogpt.engine import NonFiniteLogitsError, next_token_probs, sample_next


def tiny_model(seed=0, block_size=16, vocab_size=20):
    torch.manual_seed(seed)
    return GPT(GPTConfig(n_layer=2, n_head=2, n_embd=32, block_size=block_size, vocab_size=vocab_size,
                         dropout=0.0, bias=False)).eval()


# ---- 1. bfloat16 only where the chosen GPU computes it natively ------------------------------------

def fake_gpus(monkeypatch, capabilities, current=0):
    """CUDA GPUs with these compute capabilities, as torch's queries report them. The emulation
    check says yes everywhere, as torch 2.13's is_bf16_supported() does on a T4 or V100."""
    def capability(device=None):
        index = current if device is None or str(device) == 'cuda' else torch.device(device).index
        return capabilities[index]
    monkeypatch.setattr(torch.cuda, 'get_device_capability', capability)
    monkeypatch.setattr(torch.cuda, 'is_bf16_supported', lambda including_emulation=True: True)
    monkeypatch.setattr(torch.version, 'hip', None)


def test_auto_dtype_is_float16_on_gpus_that_only_emulate_bf16(monkeypatch, capsys):
    fake_gpus(monkeypatch, {0: (7, 5)})  # Tesla T4
    assert devices.resolve_dtype('auto', 'cuda', device='cuda') == 'float16'
    assert 'gradient scaler' in capsys.readouterr().out
    with pytest.raises(UserError, match='--dtype=float16'):
        devices.resolve_dtype('bfloat16', 'cuda')
    fake_gpus(monkeypatch, {0: (7, 0)})  # V100
    assert devices.resolve_dtype('auto', 'cuda') == 'float16'
    fake_gpus(monkeypatch, {0: (8, 0)})  # A100
    assert devices.resolve_dtype('auto', 'cuda') == 'bfloat16'
    assert devices.resolve_dtype('bfloat16', 'cuda') == 'bfloat16'


def test_bf16_support_is_that_of_the_chosen_gpu_not_the_current_one(monkeypatch):
    fake_gpus(monkeypatch, {0: (7, 5), 1: (9, 0)}, current=0)
    assert devices.resolve_dtype('auto', 'cuda', device='cuda:1') == 'bfloat16'
    assert devices.resolve_dtype('bfloat16', 'cuda', device='cuda:1') == 'bfloat16'
    assert devices.resolve_dtype('auto', 'cuda', device='cuda:0') == 'float16'
    fake_gpus(monkeypatch, {0: (9, 0), 1: (7, 5)}, current=0)
    assert devices.resolve_dtype('auto', 'cuda', device='cuda:1') == 'float16'
    with pytest.raises(UserError):
        devices.resolve_dtype('bfloat16', 'cuda', device='cuda:1')


# ---- 5. the chosen GPU, not the current one ----------------------------------------------------------

def test_resolve_device_makes_an_indexed_gpu_current(monkeypatch):
    made_current = []
    monkeypatch.setattr(torch.cuda, 'is_available', lambda: True)
    monkeypatch.setattr(torch.cuda, 'device_count', lambda: 2)
    monkeypatch.setattr(torch.cuda, 'set_device', made_current.append)
    assert devices.resolve_device('cuda:1') == 'cuda:1'
    assert made_current == ['cuda:1']
    assert devices.resolve_device('cuda') == 'cuda'  # the current device, whichever it is
    assert made_current == ['cuda:1']


def test_rng_state_reads_and_restores_the_chosen_gpu(monkeypatch):
    calls = []

    def cuda_get_rng_state(device='cuda'):
        calls.append(('get', str(device)))
        return torch.zeros(16, dtype=torch.uint8)

    def cuda_set_rng_state(new_state, device='cuda'):
        calls.append(('set', str(device)))
    monkeypatch.setattr(torch.cuda, 'get_rng_state', cuda_get_rng_state)
    monkeypatch.setattr(torch.cuda, 'set_rng_state', cuda_set_rng_state)
    cpu = torch.get_rng_state()
    masks = SimpleNamespace(state=lambda: None)
    state = random_state_to_save(cpu, SimpleNamespace(device_type='cuda', device='cuda:1'), masks)
    devices.set_random_state(state, 'cuda:1')
    assert calls == [('get', 'cuda:1'), ('set', 'cuda:1')]
    assert torch.equal(state['cpu'], cpu)


# ---- 4. pinned batches are contiguous ------------------------------------------------------------------

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


# ---- 2. tiny temperatures ------------------------------------------------------------------------------

def plain_probs(logits, temperature, top_k=None, top_p=None):
    """nanoGPT's arithmetic, as sample_next did it before: divide, top_k, (top_p), softmax."""
    logits = logits.float() / temperature
    if top_k is not None and top_k < logits.size(-1):
        v, _ = torch.topk(logits, top_k)
        logits = logits.masked_fill(logits < v[:, [-1]], -float('Inf'))
    if top_p is not None and top_p < 1.0:
        sorted_logits, sorted_idx = torch.sort(logits, descending=True)
        sorted_probs = F.softmax(sorted_logits, dim=-1)
        drop = torch.cumsum(sorted_probs, dim=-1) - sorted_probs >= top_p
        logits = logits.scatter(1, sorted_idx, sorted_logits.masked_fill(drop, -float('Inf')))
    return F.softmax(logits, dim=-1)


@pytest.mark.parametrize('top_k', [None, 2])
def test_tiny_temperature_gives_finite_probabilities_that_draw_the_argmax(top_k):
    # row 0 overflows at 1e-30 (3e9 / 1e-30 > 3.4e38); row 1 does not (5e29), row 2 overflows
    # to -inf everywhere, row 3 only at 1e-45
    logits = torch.tensor([[1e9, 3e9, -2e9, 2.9e9],
                           [0.5, -1.0, 0.25, 0.0],
                           [-1e9, -2e9, -3e9, -1.5e9],
                           [0.3, 0.2, 0.9, 0.1]])
    for t in (1e-30, 1e-45):
        assert not torch.isfinite(plain_probs(logits, t, top_k)).all()  # what nanoGPT's arithmetic gives
        probs = next_token_probs(logits, t, top_k)
        assert torch.isfinite(probs).all()
        assert torch.equal(probs, F.one_hot(logits.argmax(-1), 4).float())
        for seed in range(5):
            torch.manual_seed(seed)
            assert sample_next(logits, t, top_k).flatten().tolist() == [1, 0, 0, 2]
    # where the plain arithmetic is finite, the result is the plain one, bit for bit
    assert torch.equal(next_token_probs(logits[1:2], 1e-30), plain_probs(logits[1:2], 1e-30))


@pytest.mark.parametrize('temperature', [0.05, 0.3, 0.8, 1.0, 1.7])
@pytest.mark.parametrize('top_k, top_p', [(None, None), (50, None), (None, 0.9), (200, 0.5)])
def test_normal_temperatures_are_bit_identical_to_the_plain_formula(temperature, top_k, top_p):
    g = torch.Generator().manual_seed(1)
    logits = torch.randn(4, 1000, generator=g) * 6
    probs = next_token_probs(logits, temperature, top_k, top_p)
    assert torch.equal(probs, plain_probs(logits, temperature, top_k, top_p))
    torch.manual_seed(7)
    drawn = sample_next(logits, temperature, top_k, top_p)
    torch.manual_seed(7)
    assert torch.equal(drawn, torch.multinomial(plain_probs(logits, temperature, top_k, top_p), 1))


def test_sample_py_at_a_vanishing_temperature_prints_the_greedy_text(tmp_path):
    """1e-45 (float32's smallest) overflows every logit of a random model: sample.py used to stop
    with an error there; now it draws the argmax, as temperature=0 does."""
    import pickle
    import sample
    from nanogpt.checkpoint import save_checkpoint
    from conftest import make_char_dataset
    dataset = make_char_dataset(tmp_path / 'toy', n_chars=3000)
    with open(tmp_path / 'toy' / 'meta.pkl', 'rb') as f:
        vocab = pickle.load(f)['vocab_size']
    m = tiny_model(vocab_size=vocab, block_size=32)
    cfg = m.config
    args = dict(n_layer=cfg.n_layer, n_head=cfg.n_head, n_embd=cfg.n_embd, block_size=cfg.block_size,
                bias=cfg.bias, vocab_size=cfg.vocab_size, dropout=0.0)
    save_checkpoint({'model': m.state_dict(), 'optimizer': {}, 'model_args': args, 'iter_num': 0,
                     'best_val_loss': 1e9, 'config': {'dataset': dataset}}, str(tmp_path / 'ckpt.pt'))
    common_args = [f'--out_dir={tmp_path}', '--device=cpu', '--dtype=float32', '--start=ROMEO:',
                   '--num_samples=2', '--max_new_tokens=40']
    greedy = sample.main(common_args + ['--temperature=0'])
    assert sample.main(common_args + ['--temperature=1e-45']) == greedy
    assert sample.main(common_args + ['--temperature=1e-45', '--batched=True', '--stop=xyz']) == greedy


def test_non_finite_logits_never_give_non_finite_probabilities():
    logits = torch.tensor([[float('nan'), 1.0, 2.0], [float('inf'), 0.0, float('inf')],
                           [-float('inf')] * 3, [1.0, -float('inf'), 0.0]])
    for t in (1e-30, 0.8, 5.0):
        for top_k in (None, 2):
            probs = next_token_probs(logits, t, top_k)
            assert torch.isfinite(probs).all() and torch.allclose(probs.sum(-1), torch.ones(4))
    assert torch.equal(next_token_probs(logits, 1.0)[1], torch.tensor([0.5, 0.0, 0.5]))  # the +inf ones
    # a row with -inf entries but a finite maximum is plain softmax
    assert torch.equal(next_token_probs(logits[3:], 0.8), plain_probs(logits[3:], 0.8))


# ---- 6. no host sync per generated token -----------------------------------------------------------------

def count_host_reads(monkeypatch):
    """Count every bool()/item() of a tensor, and generate()'s planned finiteness checks."""
    counts = {'bool': 0, 'item': 0, 'checks': 0}
    tensor_bool, tensor_item, check = torch.Tensor.__bool__, torch.Tensor.item, engine.check_logits_finite

    def counted_bool(self):
        counts['bool'] += 1
        return tensor_bool(self)

    def counted_item(self):
        counts['item'] += 1
        return tensor_item(self)

    def counted_check(finite):
        counts['checks'] += 1
        return check(finite)
    monkeypatch.setattr(torch.Tensor, '__bool__', counted_bool)
    monkeypatch.setattr(torch.Tensor, 'item', counted_item)
    monkeypatch.setattr(engine, 'check_logits_finite', counted_check)
    return counts


@pytest.mark.parametrize('use_cache', [True, False])
def test_generate_reads_the_finiteness_flag_only_at_planned_points(monkeypatch, use_cache):
    m = tiny_model()
    prompt = torch.tensor([[1, 2, 3], [4, 5, 6]])
    torch.manual_seed(0)
    expected = engine.Engine(m).generate(prompt, 150, temperature=0.8, top_k=5, use_cache=use_cache)
    counts = count_host_reads(monkeypatch)
    torch.manual_seed(0)
    got = engine.Engine(m).generate(prompt, 150, temperature=0.8, top_k=5, use_cache=use_cache)
    assert torch.equal(got, expected)
    every = engine.FINITE_CHECK_EVERY
    assert counts['checks'] == math.ceil(150 / every)  # every 64 tokens, and once at the end
    assert counts['bool'] == counts['checks'] and counts['item'] == 0  # nothing else reads the device


def test_generate_with_on_token_checks_before_each_callback(monkeypatch):
    m = tiny_model()
    counts = count_host_reads(monkeypatch)
    seen = []

    def on_token(nxt):
        seen.append(counts['checks'])
        return len(seen) == 10
    out = engine.Engine(m).generate(torch.tensor([[1, 2]]), 50, on_token=on_token)
    assert out.shape == (1, 12)
    assert seen == list(range(1, 11))  # the flag was looked at before every token was handed over
    assert counts['checks'] == 10  # and not again after the early stop


@pytest.mark.parametrize('use_cache', [True, False])
def test_non_finite_logits_still_raise_and_never_reach_multinomial(monkeypatch, use_cache):
    m = tiny_model()
    with torch.no_grad():
        m.lm_head.weight[3, 0] = float('nan')  # one vocabulary entry's logit is nan
    multinomial = torch.multinomial
    inputs = []

    def checked_multinomial(probs, *args, **kwargs):
        inputs.append(bool(torch.isfinite(probs).all()))
        return multinomial(probs, *args, **kwargs)
    monkeypatch.setattr(torch, 'multinomial', checked_multinomial)
    with pytest.raises(NonFiniteLogitsError):
        engine.Engine(m).generate(torch.tensor([[1, 2]]), 5, use_cache=use_cache)
    assert inputs and all(inputs)
    handed = []
    with pytest.raises(NonFiniteLogitsError):  # and on_token never sees a token drawn from them
        engine.Engine(m).generate(torch.tensor([[1, 2]]), 5, use_cache=use_cache, on_token=handed.append)
    assert handed == []


# ---- 7. measured peak: a batch of large matmuls on GPUs ---------------------------------------------------

def test_matmul_peak_plan_per_device():
    for device in ('cuda', 'cuda:1', 'mps'):
        n, launches = devices.matmul_peak_plan(device)
        assert n >= 4096 and launches >= 20, device
    assert devices.matmul_peak_plan('cpu') == (1024, 1)


def test_measured_peak_times_the_planned_launches_between_two_syncs(monkeypatch):
    monkeypatch.setattr(devices, '_measured_peak', {})
    monkeypatch.setattr(devices, 'matmul_peak_plan', lambda device: (64, 5))
    events = []
    matmul, sync = torch.matmul, devices.sync

    def counted_matmul(*args, **kwargs):
        events.append('matmul')
        return matmul(*args, **kwargs)

    def counted_sync(device):
        events.append('sync')
        return sync(device)
    monkeypatch.setattr(torch, 'matmul', counted_matmul)
    monkeypatch.setattr(devices, 'sync', counted_sync)
    peak = devices.measure_matmul_peak('cpu', 'float32', seconds=0.05)
    assert peak > 0
    batches = ''.join('m' if e == 'matmul' else 's' for e in events).split('s')[:-1]
    assert len(batches) >= 2 and set(batches) == {'m' * 5}


def test_measured_cpu_peak_still_works(monkeypatch):
    monkeypatch.setattr(devices, '_measured_peak', {})
    peak, src = devices.peak_flops('cpu', 'float32')
    assert 1e8 < peak < 1e15 and src == 'measured float32 matmul on cpu'


# ---- 8. GPU names matched as whole words -------------------------------------------------------------------

@pytest.mark.parametrize('name, bf16, fp32', [
    ('NVIDIA A100-SXM4-80GB', 312e12, 156e12),
    ('NVIDIA H100 80GB HBM3', 989e12, 495e12),
    ('NVIDIA H100 PCIe', 756e12, 378e12),
    ('NVIDIA RTX A4000', None, None),  # not an A40
    ('NVIDIA GeForce RTX 4090 Laptop GPU', None, None),  # not the desktop card
    ('Tesla T4', 65e12, 8.1e12),
    ('Tesla V100-SXM2-16GB', 125e12, 15.7e12),
    ('NVIDIA A10G', 125e12, 62.5e12),
    ('NVIDIA L40S', 362e12, 183e12),
    ('NVIDIA H200', 989e12, 495e12),
    ('NVIDIA GeForce RTX 4090', 165e12, 82.6e12),
    ('NVIDIA L4', 121e12, 60e12),  # not an L40
    ('NVIDIA A40', 150e12, 74.8e12),
    ('NVIDIA RTX 6000 Ada Generation', None, None),
])
def test_gpu_table_matches_whole_model_names(name, bf16, fp32):
    assert devices.gpu_table_peak(name, 'bfloat16') == bf16
    assert devices.gpu_table_peak(name, 'float32') == fp32


def test_peak_flops_uses_the_name_of_the_chosen_gpu(monkeypatch):
    names = {'cuda:0': 'NVIDIA GeForce RTX 4090 Laptop GPU', 'cuda:1': 'NVIDIA H100 PCIe'}
    monkeypatch.setattr(torch.cuda, 'get_device_name', lambda device=None: names[str(device)])
    peak, src = devices.peak_flops('cuda:1', 'bfloat16')
    assert peak == 756e12 and 'H100 PCIe' in src


# ---- 3. FSDP's mesh follows the chosen device ---------------------------------------------------------------

def test_fsdp_mesh_is_built_for_the_chosen_device_type(monkeypatch):
    """A CUDA (or Mac) machine training with --device=cpu: fully_shard's default mesh would be
    built for the machine's accelerator; shard builds it for the run's device type."""
    import torch.distributed as dist
    from torch.distributed.tensor import DTensor
    if not dist.is_available():
        pytest.skip('torch.distributed is not available')
    monkeypatch.setattr(torch._C, '_get_accelerator', lambda: torch.device('cuda'))
    dist.init_process_group('gloo', store=dist.HashStore(), rank=0, world_size=1)
    m = params = mesh = None
    try:
        m = tiny_model()
        mesh = distributed.shard(m, SimpleNamespace(fsdp=True, device_type='cpu'))
        assert mesh.device_type == 'cpu'
        params = list(m.parameters())
        assert params and all(isinstance(p, DTensor) and p.device_mesh.device_type == 'cpu'
                              and p.device.type == 'cpu' for p in params)
        logits, loss = m(torch.tensor([[1, 2, 3]]), torch.tensor([[2, 3, 4]]))
        loss.backward()
        assert all(p.grad is not None and p.grad.device.type == 'cpu' for p in params)
    finally:
        m = params = mesh = None  # the sharded model holds the group: drop it first
        distributed.shutdown_distributed()


# ---- 9. the process group's timeout, and what is imported before it ---------------------------------------

def test_process_group_timeout_fits_checkpoint_writes(monkeypatch):
    import torch.distributed as dist
    seen = {}

    def init_process_group(**kwargs):
        seen.update(kwargs, binders_imported=all(m in sys.modules for m in distributed._GROUP_BINDING_MODULES))
    monkeypatch.setattr(dist, 'init_process_group', init_process_group)
    distributed.init_process_group('gloo')
    assert seen['backend'] == 'gloo'
    assert seen['timeout'].total_seconds() == distributed.PROCESS_GROUP_TIMEOUT_MINUTES * 60 >= 3600
    assert seen['binders_imported']  # imported first, they bind no live process group


# ---- 10. bf16 units as this process may use them ------------------------------------------------------

def test_pytorch_held_to_avx2_counts_as_a_cpu_without_bf16_units(monkeypatch, capsys):
    """ONEDNN_MAX_CPU_ISA / ATEN_CPU_CAPABILITY hold PyTorch below its bf16 instructions: the project
    then behaves as on an AVX2-only CPU (float32 candidates only, float32 sampling, AdamW)."""
    import subprocess
    from conftest import PROJECT
    code = ("import sys; sys.path.insert(0, '.'); from nanogpt import devices; "
            "print(devices.cpu_has_bf16_units(), devices.resolve_dtype('auto', 'cpu', cpu_bf16=True))")
    held = dict(os.environ, ATEN_CPU_CAPABILITY='avx2', ONEDNN_MAX_CPU_ISA='AVX2')
    r = subprocess.run([sys.executable, '-c', code], cwd=PROJECT, env=held, capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    assert r.stdout.split()[-2:] == ['False', 'float32']
    monkeypatch.setattr(torch.cpu, '_is_avx512_bf16_supported', lambda: True)
    monkeypatch.setenv('ONEDNN_MAX_CPU_ISA', 'avx2')
    assert not devices.cpu_has_bf16_units()
    monkeypatch.setenv('ONEDNN_MAX_CPU_ISA', 'AVX512_CORE_AMX')
    monkeypatch.setattr(torch.backends.cpu, 'get_cpu_capability', lambda: 'AVX512')
    assert devices.cpu_has_bf16_units()
    assert devices.resolve_dtype('auto', 'cpu', cpu_bf16=True) == 'bfloat16'
    assert devices.resolve_dtype('auto', 'cpu') == 'float32'  # training measures instead (autotune)
    monkeypatch.setattr(torch.backends.cpu, 'get_cpu_capability', lambda: 'AVX2')
    assert not devices.cpu_has_bf16_units()
