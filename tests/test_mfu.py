"""MFU and the peak FLOP/s it is measured against: model.py's estimate_mfu formula; devices.peak_flops
from an override, from the table of GPU datasheets (model names matched as whole words, the chosen
GPU's name), or from a short measured matmul (on a GPU a batch of large launches between two
syncs; cached; the random stream left alone). No timing is asserted."""

import pytest
import torch

from conftest import tiny_model
from nanogpt import devices
from nanogpt.errors import UserError


# ---- MFU ------------------------------------------------------------------------------------------

def test_estimate_mfu_formula():
    model = tiny_model(n_layer=2, n_head=4, n_embd=64, block_size=32)
    N = model.get_num_params()
    flops_per_token = 6 * N + 12 * 2 * 4 * 16 * 32  # 6N + 12 L H Q T
    expected = flops_per_token * 32 * 8 / 0.5 / 1e12  # 8 sequences of 32 tokens in 0.5 s, 1 TFLOP/s peak
    assert model.estimate_mfu(8, 0.5, 1e12) == pytest.approx(expected)
    assert model.estimate_mfu(8, 1.0, 1.0) == pytest.approx(flops_per_token * 32 * 8)


# ---- peak FLOP/s: the override and the table of GPU datasheets -------------------------------------

def test_peak_flops_override_and_table():
    assert devices.peak_flops('cpu', 'float32', 5e12) == (5e12, 'set by peak_flops')
    with pytest.raises(UserError):
        devices.peak_flops('cpu', 'float32', -1.0)
    t = devices.gpu_table_peak
    assert t('NVIDIA A100-SXM4-80GB', 'bfloat16') == 312e12
    assert t('NVIDIA A100-SXM4-80GB', 'float32') == 156e12  # tf32 tensor cores
    assert t('NVIDIA A100-SXM4-80GB', 'float32', tf32=False) == 19.5e12
    assert t('NVIDIA A10G', 'bfloat16') == 125e12  # not A100's
    assert t('NVIDIA H100 PCIe', 'bfloat16') == 756e12
    assert t('NVIDIA H100 80GB HBM3', 'bfloat16') == 989e12
    assert t('NVIDIA L40S', 'float16') == 362e12
    assert t('Tesla V100-SXM2-16GB', 'float32') == 15.7e12  # no tf32 units
    assert t('Some Future GPU', 'bfloat16') is None


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


# ---- peak FLOP/s measured: a batch of large matmuls on GPUs ----------------------------------------

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


def test_measured_peak_is_cached_and_leaves_rng_alone(monkeypatch):
    monkeypatch.setattr(devices, '_measured_peak', {})
    before = torch.get_rng_state()
    peak, src = devices.peak_flops('cpu', 'float32')
    assert peak > 0 and 'measured' in src
    assert torch.equal(before, torch.get_rng_state())
    assert devices.measure_matmul_peak('cpu', 'float32') == peak  # cached: same number, no re-run


def test_measured_cpu_peak_still_works(monkeypatch):
    monkeypatch.setattr(devices, '_measured_peak', {})
    peak, src = devices.peak_flops('cpu', 'float32')
    assert 1e8 < peak < 1e15 and src == 'measured float32 matmul on cpu'
