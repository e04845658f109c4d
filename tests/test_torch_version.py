"""An unsupported torch (older than 2.4: an Intel Mac's last wheel is 2.2.2) is one line at each
script's start, exit 2, naming the version needed and for what, never an AttributeError later.
The scripts run in a Python whose torch says it is another version (torch.__version__ set)."""

import platform
import sys

import pytest
import torch
from torch.torch_version import TorchVersion

from conftest import run_script, tiny_args
from nanogpt import devices
from nanogpt.errors import UserError

NEEDED = "nanoGPT needs torch 2.4 or later (2.6 for --fsdp=True, 2.9 for optimizer=muon)"


def as_torch(version, script, *args):
    """`python script args` where torch reports `version`."""
    code = ("import runpy, sys, torch; from torch.torch_version import TorchVersion; "
            f"torch.__version__ = TorchVersion({version!r}); sys.argv = {[script, *args]!r}; "
            f"runpy.run_path({script!r}, run_name='__main__')")
    return run_script('-c', code, env={'OMP_NUM_THREADS': '1'})


@pytest.mark.parametrize('script, args', [
    ('train.py', ['config/train_shakespeare_char.py', '--max_iters=1']),
    ('sample.py', ['--out_dir=nowhere']),
    ('bench.py', ['--iters=1']),
    ('export_hf.py', ['--out_dir=nowhere']),
])
def test_an_old_torch_stops_each_script_with_one_line(script, args):
    r = as_torch('2.2.2', script, *args)
    assert r.returncode == 2, r.stderr[-2000:]
    assert r.stderr.strip() == f"error: this is torch 2.2.2, and {NEEDED}: pip install 'torch>=2.4'"
    assert 'Overriding' not in r.stdout  # before anything else


def test_train_py_on_the_oldest_supported_torch_passes_the_check(tmp_path):
    r = as_torch('2.4.1', 'train.py', *tiny_args(str(tmp_path / 'out'), 'no-such-dataset'))
    assert 'needs torch' not in r.stderr and 'no-such-dataset' in r.stderr


def test_an_intel_mac_is_told_where_to_turn(monkeypatch):
    monkeypatch.setattr(torch, '__version__', TorchVersion('2.2.2'))
    monkeypatch.setattr(sys, 'platform', 'darwin')
    monkeypatch.setattr(platform, 'machine', lambda: 'x86_64')
    with pytest.raises(UserError) as e:
        devices.check_torch_version()
    assert str(e.value) == (f"this is torch 2.2.2, and {NEEDED}: PyTorch's last release for Intel Macs is 2.2.2, "
                            "so run on Linux (or Colab), or build torch from source (README, \"Platforms\")")
