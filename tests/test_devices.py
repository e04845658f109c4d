"""Which device and dtype a run computes in (nanogpt/devices.py's rules): an indexed GPU becomes
the current one; dtype=auto takes bfloat16 where the chosen GPU computes it natively and float16
(with a gradient scaler) where it only emulates it, bfloat16 on MPS where autocast supports it, and
float32 on a CPU unless training measures (tests/test_autotune.py); a PyTorch held below its bf16
instructions counts as a CPU without bf16 units; an explicit emulated bfloat16 warns once. The GPU
queries are monkeypatched on a CPU; torch's maths is never replaced."""

import os
import sys

import pytest
import torch

from nanogpt import devices
from nanogpt import errors
from nanogpt.errors import UserError


# ---- the device ----------------------------------------------------------------------------------

def test_resolve_device_makes_an_indexed_gpu_current(monkeypatch):
    made_current = []
    monkeypatch.setattr(torch.cuda, 'is_available', lambda: True)
    monkeypatch.setattr(torch.cuda, 'device_count', lambda: 2)
    monkeypatch.setattr(torch.cuda, 'set_device', made_current.append)
    assert devices.resolve_device('cuda:1') == 'cuda:1'
    assert made_current == ['cuda:1']
    assert devices.resolve_device('cuda') == 'cuda'  # the current device, whichever it is
    assert made_current == ['cuda:1']


# ---- dtype on GPUs and MPS: bfloat16 only where the chosen GPU computes it natively ----------------

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


def test_cuda_and_mps_dtype_choice(monkeypatch, capsys):
    # bf16 needs compute capability 8.0 (above: GPUs that only emulate it)
    monkeypatch.setattr(torch.cuda, 'get_device_capability', lambda device=None: (8, 0))
    assert devices.resolve_dtype('auto', 'cuda') == 'bfloat16'
    monkeypatch.setattr(torch.cuda, 'get_device_capability', lambda device=None: (7, 5))
    assert devices.resolve_dtype('auto', 'cuda') == 'float16'
    with pytest.raises(UserError, match='float16'):
        devices.resolve_dtype('bfloat16', 'cuda')
    monkeypatch.setattr(devices, 'mps_autocast_supported', lambda: True)
    assert devices.resolve_dtype('auto', 'mps') == 'bfloat16'
    monkeypatch.setattr(devices, 'mps_autocast_supported', lambda: False)
    assert devices.resolve_dtype('auto', 'mps') == 'float32'
    with pytest.raises(UserError, match='float32'):
        devices.resolve_dtype('bfloat16', 'mps')
    with pytest.raises(UserError, match='unknown dtype'):
        devices.resolve_dtype('fp8', 'cpu')
    assert 'auto: GPU lacks bf16' in capsys.readouterr().out


# ---- dtype on a CPU: bf16 units as this process may use them --------------------------------------

@pytest.mark.parametrize('units', [False, True])
def test_cpu_dtype_without_measurement_is_float32(monkeypatch, capsys, units):
    """Sampling and FSDP use the rule; training measures instead (tests/test_autotune.py)."""
    monkeypatch.setattr(devices, 'cpu_has_bf16_units', lambda: units)
    assert devices.resolve_dtype('auto', 'cpu') == 'float32'
    line = capsys.readouterr().out.strip()
    assert line.startswith("using dtype: float32 (auto: ") and '\n' not in line


def test_explicit_emulated_bf16_warns_once(monkeypatch, capsys):
    monkeypatch.setattr(devices, 'cpu_has_bf16_units', lambda: False)
    monkeypatch.setattr(errors, '_warned', set())
    for _ in range(2):
        assert devices.resolve_dtype('bfloat16', 'cpu') == 'bfloat16'
    err = capsys.readouterr().err.splitlines()
    assert len(err) == 1 and err[0].startswith('warning:') and 'emulated' in err[0]


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
    monkeypatch.setattr(torch.cpu, '_is_avx512_bf16_supported', lambda: True, raising=False)  # private, missing before torch 2.5
    monkeypatch.setenv('ONEDNN_MAX_CPU_ISA', 'avx2')
    assert not devices.cpu_has_bf16_units()
    monkeypatch.setenv('ONEDNN_MAX_CPU_ISA', 'AVX512_CORE_AMX')
    monkeypatch.setattr(torch.backends.cpu, 'get_cpu_capability', lambda: 'AVX512')
    assert devices.cpu_has_bf16_units()
    assert devices.resolve_dtype('auto', 'cpu', cpu_bf16=True) == 'bfloat16'
    assert devices.resolve_dtype('auto', 'cpu') == 'float32'  # training measures instead (autotune)
    monkeypatch.setattr(torch.backends.cpu, 'get_cpu_capability', lambda: 'AVX2')
    assert not devices.cpu_has_bf16_units()
