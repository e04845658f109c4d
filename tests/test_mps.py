"""Apple silicon, simulated on Linux (docs/platforms.md): MPS's answers are monkeypatched
(torch.backends.mps.is_available, torch.mps's memory figures, an operation that raises
NotImplementedError as a torch build lacking it on MPS does), never torch's arithmetic. The key/value
cache without index_copy_ or index_put_, the five-minute recipe on a Mac, the memory check against
torch's MPS limit, the loss read at log_interval on MPS, and the divergence line on MPS."""

import sys
from types import SimpleNamespace

import pytest
import torch

import train
from conftest import run_script
from configurator import apply_overrides
from model import GPT, GPTConfig
from nanogpt import control, devices, engine, errors, memory
from nanogpt.errors import UserError
from nanogpt.settings import Run

ONE_THREAD = {'OMP_NUM_THREADS': '1'}


@pytest.fixture(autouse=True)
def one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture
def fresh_warnings(monkeypatch):
    monkeypatch.setattr(errors, '_warned', set())


def tiny_model(vocab=40, block_size=16):
    torch.manual_seed(0)
    return GPT(GPTConfig(n_layer=2, n_head=2, n_embd=32, block_size=block_size, vocab_size=vocab, bias=False)).eval()


def lacking_index_copy(monkeypatch):
    def index_copy_(self, *args, **kwargs):
        raise NotImplementedError("The operator 'aten::index_copy.out' is not currently implemented for the MPS device")
    monkeypatch.setattr(torch.Tensor, 'index_copy_', index_copy_)


def lacking_index_put(monkeypatch):
    """Writes through a tensor index (index_put_) raise, as on a device without the kernel; plain
    slices still work."""
    setitem = torch.Tensor.__setitem__

    def no_index_put(self, key, value):
        if any(isinstance(k, torch.Tensor) for k in (key if isinstance(key, tuple) else (key,))):
            raise NotImplementedError("The operator 'aten::index_put_' is not currently implemented for the MPS device")
        return setitem(self, key, value)
    monkeypatch.setattr(torch.Tensor, '__setitem__', no_index_put)


def generate(m, **kw):
    torch.manual_seed(1)
    prompt = torch.tensor([[1, 2, 3, 4, 5]])
    return engine.Engine(m).generate(prompt, 30, temperature=0.9, top_k=10, **kw)  # 5 + 30 > block_size 16


# ---- 1. the key/value cache ------------------------------------------------------------------

def test_the_cache_needs_no_index_copy(monkeypatch, fresh_warnings, capsys):
    """A torch whose MPS lacks index_copy_ samples the plain algorithm's tokens, with no warning."""
    m = tiny_model()
    plain = generate(m, use_cache=False)
    lacking_index_copy(monkeypatch)
    assert torch.equal(generate(m), plain)
    assert capsys.readouterr().err == ''


def test_a_device_lacking_index_put_and_index_copy_falls_back_once_with_one_line(monkeypatch, fresh_warnings, capsys):
    m = tiny_model()
    plain = generate(m, use_cache=False)
    lacking_index_copy(monkeypatch)
    lacking_index_put(monkeypatch)
    assert torch.equal(generate(m), plain)
    assert torch.equal(generate(m), plain)  # a second generate: the same, and no second line
    err = capsys.readouterr().err.splitlines()
    assert err == [err[0]] and err[0].startswith('warning: the key/value cache on cpu is written with copy_: this '
                                                 'torch lacks index_put_ and index_copy_ there (NotImplementedError: ')
    assert err[0].endswith('the same tokens')


def test_sample_py_without_index_copy_prints_the_same_text(char_checkpoint):
    """The issue's target: sample.py itself, in a Python whose torch lacks index_copy_."""
    args = [f'--out_dir={char_checkpoint[0]}', '--device=cpu', '--dtype=float32', '--top_k=1', '--start=ROMEO:',
            '--num_samples=2', '--max_new_tokens=40']
    plain = run_script('sample.py', *args, env=ONE_THREAD)
    code = ("import runpy, sys, torch\n"
            "def index_copy_(self, *a, **k):\n"
            "    raise NotImplementedError(\"The operator 'aten::index_copy.out' is not currently implemented for the MPS device\")\n"
            "torch.Tensor.index_copy_ = index_copy_\n"
            f"sys.argv = {['sample.py', *args]!r}\n"
            "runpy.run_path('sample.py', run_name='__main__')\n")
    lacking = run_script('-c', code, env=ONE_THREAD)
    assert plain.returncode == 0 and lacking.returncode == 0, lacking.stderr[-2000:]
    assert lacking.stdout == plain.stdout and 'ROMEO:' in plain.stdout
    assert 'Traceback' not in lacking.stderr


# ---- 2. the five-minute recipe on a Mac --------------------------------------------------------

def apple_silicon(monkeypatch):
    """A Mac with Apple silicon: no CUDA, MPS available, a CPU without x86 bf16 units."""
    monkeypatch.setattr(torch.cuda, 'is_available', lambda: False)
    monkeypatch.setattr(torch.backends.mps, 'is_available', lambda: True)
    monkeypatch.setattr(devices, 'cpu_has_bf16_units', lambda: False)


@pytest.mark.parametrize('argv, width, where', [
    (['config/train_shakespeare_char_cpu.py'], 256, 'mps'),
    (['config/train_shakespeare_char_cpu.py', '--device=cpu'], 128, 'cpu'),  # a --device after the file
    (['--device=cpu', 'config/train_shakespeare_char_cpu.py'], 128, 'cpu'),
])
def test_the_recipe_follows_the_device_the_run_uses(monkeypatch, capsys, argv, width, where):
    apple_silicon(monkeypatch)
    monkeypatch.setattr(sys, 'argv', ['train.py', *argv])
    c = apply_overrides(train.DEFAULTS, argv)
    out = capsys.readouterr().out
    assert c['n_embd'] == width
    assert f"five-minute recipe: 4x{width} on {where} (" in out
    assert 'no bf16 units' not in out
    if where == 'cpu':
        assert 'float32 here, as bfloat16 is fast only with AMX or AVX512-BF16' in out


# ---- 3. the memory check on MPS -----------------------------------------------------------------

GB = 10 ** 9
MPS_RUN = Run(device='mps', device_type='mps', optimizer='adamw', grad_accum=1, tokens_per_iter=0)


def mac_memory(monkeypatch, recommended, allocated=0):
    monkeypatch.setattr(torch.mps, 'recommended_max_memory', lambda: recommended, raising=False)
    monkeypatch.setattr(torch.mps, 'current_allocated_memory', lambda: allocated, raising=False)
    monkeypatch.setattr(torch.mps, 'driver_allocated_memory', lambda: allocated + GB, raising=False)
    monkeypatch.setattr(memory, 'host_available', lambda: 64 * GB)
    monkeypatch.delenv('PYTORCH_MPS_HIGH_WATERMARK_RATIO', raising=False)


def settings(**kw):
    base = dict(train.DEFAULTS, dataset='shakespeare_char', n_layer=6, n_head=6, n_embd=384, block_size=256,
                dtype='float32', dropout=0.0)
    return SimpleNamespace(**dict(base, **kw))


def need(c, written_out):
    shape = memory.Shape(c.n_layer, c.n_head, c.n_embd, c.block_size, 65)
    return memory.estimate(shape, c.batch_size, c.dtype, 'adamw', written_out, c.dropout).total


def test_mps_free_memory_is_torchs_own_limit(monkeypatch):
    """torch's MPS allocator allows PYTORCH_MPS_HIGH_WATERMARK_RATIO (1.7) x the recommended maximum,
    less what tensors hold; 0.0 means no limit, and then no check."""
    mac_memory(monkeypatch, recommended=10 * GB, allocated=GB)
    assert memory.device_free(MPS_RUN)[0] == 17 * GB - GB
    monkeypatch.setenv('PYTORCH_MPS_HIGH_WATERMARK_RATIO', '1.0')
    assert memory.device_free(MPS_RUN)[0] == 9 * GB
    monkeypatch.setenv('PYTORCH_MPS_HIGH_WATERMARK_RATIO', '0.0')
    assert memory.device_free(MPS_RUN)[0] is None


def test_a_run_that_fits_torchs_limit_is_not_refused(monkeypatch):
    """A run above the recommended maximum but within torch's limit: the old check (recommended
    maximum less the driver's allocations) refused it."""
    c = settings(batch_size=40)
    total = need(c, written_out=True)
    mac_memory(monkeypatch, recommended=int(total / 1.5))
    memory.check_fits(c, MPS_RUN, None, 65)


def test_mps_counts_the_attention_matrices_and_names_the_setting_past_the_check(monkeypatch):
    """Training on MPS keeps the (nh, T, T) attention (torch's math path); a refusal names the
    PYTORCH_MPS_HIGH_WATERMARK_RATIO that lets torch, and the check, allow the run."""
    c = settings(batch_size=64, block_size=1024)
    with_attention, fused = need(c, written_out=True), need(c, written_out=False)
    assert with_attention > 1.5 * fused
    recommended = int(with_attention / 1.9)  # torch's limit, 1.7 x that, lies between the two
    assert fused < 1.7 * recommended < with_attention
    mac_memory(monkeypatch, recommended=recommended)
    with pytest.raises(UserError) as e:
        memory.check_fits(c, MPS_RUN, None, 65)
    msg = str(e.value)
    assert '\n' not in msg and 'on mps (torch\'s limit' in msg and '--batch_size=' in msg
    ratio = float(msg.split('PYTORCH_MPS_HIGH_WATERMARK_RATIO=')[1].split()[0])
    assert 1.7 < ratio <= 2.0
    monkeypatch.setenv('PYTORCH_MPS_HIGH_WATERMARK_RATIO', f'{ratio}')
    memory.check_fits(c, MPS_RUN, None, 65)  # the named setting lets the run past the check


def test_beyond_torchs_largest_ratio_the_line_names_no_limit(monkeypatch):
    c = settings(batch_size=64, block_size=1024)
    mac_memory(monkeypatch, recommended=need(c, written_out=True) // 4)
    with pytest.raises(UserError, match=r'set PYTORCH_MPS_HIGH_WATERMARK_RATIO=0\.0 \(no limit\) in the environment'):
        memory.check_fits(c, MPS_RUN, None, 65)


# ---- 4. the loss read on MPS, 5. the divergence line on MPS -----------------------------------

class Loss:
    """A loss tensor that counts how often the loop reads it (each read is a host sync on a GPU)."""

    def __init__(self):
        self.reads = 0

    def item(self):
        self.reads += 1
        return 1.0


@pytest.mark.parametrize('device, reads', [('cpu', 10), ('mps', 2), ('cuda', 2)])
def test_the_loss_is_read_at_log_interval_on_a_gpu(device, reads):
    """iteration_done over 10 iterations with log_interval 5: a CPU reads every loss (and checks it
    for NaN), MPS and CUDA only the logged ones."""
    run = Run(device=device, device_type=device, optimizer='adamw', grad_accum=1, tokens_per_iter=0, master=False)
    ctl = control.RunControl.__new__(control.RunControl)  # only what iteration_done uses
    ctl.c, ctl.run, ctl.budget, ctl.local_iter_num = SimpleNamespace(log_interval=5), run, None, 0
    ctl.last_iter_end = ctl.work_began = 0.0
    ctl.estimate = SimpleNamespace(iteration_done=lambda *a: None)
    ctl.metrics = SimpleNamespace(t_start=0.0)
    ctl.record = control.RunRecord(None)
    loss = Loss()
    for it in range(10):
        ctl.iteration_done(it, loss, 1e-3, None)
    assert loss.reads == reads


@pytest.mark.parametrize('device', ['mps', 'cpu'])
def test_a_diverged_run_on_mps_names_the_gpu_reports(device, tmp_path):
    run = SimpleNamespace(device=device, dtype='float32', optimizer='adamw', torchrun=False, master=True)
    c = SimpleNamespace(out_dir=str(tmp_path), learning_rate=1e-3, muon_lr=0.02, init_from='scratch')
    msg = str(control.Checkpoints(c, run, None, None).diverged('loss is nan at iter 40'))
    assert 'lower learning rate, e.g. --learning_rate=0.0005' in msg
    assert ('Intel Macs with AMD GPUs' in msg and '--device=cpu' in msg) == (device == 'mps')
