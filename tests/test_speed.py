"""Speed features: the dtype / compile decisions, the torch.compile fallback, fused AdamW, MFU and
its peak rates, and bench.py's settings. No timing is asserted: this machine is shared and slow."""

import os
import stat
import sys

import pytest
import torch

from nanogpt import devices
from nanogpt import errors
from nanogpt.errors import UserError
from conftest import PROJECT, run_script, tiny_args
from model import GPT, GPTConfig


def tiny_model(seed=0, **kw):
    torch.manual_seed(seed)
    cfg = dict(n_layer=1, n_head=2, n_embd=32, block_size=16, vocab_size=20, dropout=0.0, bias=False)
    cfg.update(kw)
    return GPT(GPTConfig(**cfg))


# ---- dtype ----

@pytest.mark.parametrize('units', [False, True])
def test_cpu_dtype_without_measurement_is_float32(monkeypatch, capsys, units):
    """Sampling and FSDP use the rule; training measures instead (tests/test_autotune.py)."""
    monkeypatch.setattr(devices, 'cpu_has_bf16_units', lambda: units)
    assert devices.resolve_dtype('auto', 'cpu') == 'float32'
    line = capsys.readouterr().out.strip()
    assert line.startswith("using dtype: float32 (auto: ") and '\n' not in line


def test_cuda_and_mps_dtype_choice(monkeypatch, capsys):
    # bf16 needs compute capability 8.0 (tests/test_devices.py: GPUs that only emulate it)
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


def test_explicit_emulated_bf16_warns_once(monkeypatch, capsys):
    monkeypatch.setattr(devices, 'cpu_has_bf16_units', lambda: False)
    monkeypatch.setattr(errors, '_warned', set())
    for _ in range(2):
        assert devices.resolve_dtype('bfloat16', 'cpu') == 'bfloat16'
    err = capsys.readouterr().err.splitlines()
    assert len(err) == 1 and err[0].startswith('warning:') and 'emulated' in err[0]


# ---- compile ----

def test_compile_choice(monkeypatch, capsys):
    monkeypatch.setattr(errors, '_warned', set())
    monkeypatch.setattr(devices, 'has_cxx_compiler', lambda: True)
    monkeypatch.setattr(devices, 'compile_unavailable', lambda device_type: '')
    assert devices.resolve_compile('auto', 'cuda') is True
    assert devices.resolve_compile('auto', 'cpu') is False  # on a CPU only a measurement decides
    assert devices.resolve_compile(True, 'cpu') is True  # asked for
    assert devices.resolve_compile(False, 'cuda') is False
    out = capsys.readouterr()
    assert out.err == ''
    assert 'compile: True (auto: GPU)' in out.out and 'compile: False (auto:' in out.out
    monkeypatch.undo()
    monkeypatch.setattr(errors, '_warned', set())
    monkeypatch.setattr(devices, 'has_cxx_compiler', lambda: False)
    assert devices.resolve_compile(True, 'cpu') is False
    assert devices.resolve_compile(True, 'cpu') is False
    assert devices.resolve_compile('auto', 'mps') is False
    err = capsys.readouterr().err.splitlines()
    assert len(err) == 1 and 'no C++ compiler' in err[0]  # one warning, not one per call
    with pytest.raises(UserError):
        devices.resolve_compile('yes', 'cpu')


def test_compiled_model_falls_back_once(monkeypatch, capsys):
    """A compile failure at the first call runs the model eagerly from then on, with one warning;
    an error of the model itself is raised as it is, without blaming the compiler."""
    calls = []

    def broken_compile(module):
        def run(*args, **kwargs):
            calls.append(1)
            raise RuntimeError("InvalidCxxCompiler: No working C++ compiler found\nmore detail")
        return run
    monkeypatch.setattr(errors, '_warned', set())
    monkeypatch.setattr(torch, 'compile', broken_compile)
    model = tiny_model()
    x = torch.randint(20, (2, 16))
    compiled = devices.compile_model(model)
    assert list(compiled.state_dict()) == ['_orig_mod.' + k for k in model.state_dict()]
    expected = model(x, x)[1]
    for _ in range(3):
        assert torch.equal(compiled(x, x)[1], expected)
    assert len(calls) == 1  # never retried
    err = capsys.readouterr().err.splitlines()
    assert len(err) == 1 and err[0].startswith('warning: torch.compile failed') and 'C++' in err[0]

    monkeypatch.setattr(errors, '_warned', set())
    too_long = torch.randint(20, (1, 17))
    with pytest.raises(ValueError, match='block_size'):
        devices.compile_model(model)(too_long)
    assert capsys.readouterr().err == ''


def fake_compiler_path(tmp_path, working_g_plus_plus):
    """A PATH with no C++ compiler, or with a g++ that always fails: inductor cannot compile."""
    d = tmp_path / 'bin'
    d.mkdir()
    if working_g_plus_plus:
        g = d / 'g++'
        g.write_text('#!/bin/sh\nexit 1\n')
        g.chmod(g.stat().st_mode | stat.S_IEXEC)
    env = {'PATH': str(d), 'TORCHINDUCTOR_CACHE_DIR': str(tmp_path / 'inductor')}
    if 'CXX' in os.environ:
        env['CXX'] = 'g++'  # resolved on the PATH above
    return env


@pytest.mark.skipif(sys.platform == 'win32', reason='uses a POSIX shell script as the fake compiler')
# train.py with no compiler at all; the failing-compiler case runs through bench.py below (the
# fallback is the same devices.compile_model), which keeps this suite's subprocess count down
@pytest.mark.parametrize('broken_gxx', [False], ids=['no-compiler'])
def test_train_runs_eager_when_compile_impossible(tmp_path, char_dataset, broken_gxx):
    env = fake_compiler_path(tmp_path, broken_gxx)
    r = run_script('train.py', *tiny_args(str(tmp_path / 'out'), char_dataset, compile=True, max_iters=2,
                                          eval_interval=2, n_layer=1), env=env)
    assert r.returncode == 0, r.stderr[-2000:]
    warnings = [line for line in r.stderr.splitlines() if line.strip()]
    assert len(warnings) == 1 and warnings[0].startswith('warning: torch.compile'), r.stderr[-2000:]
    assert 'iter 2:' in r.stdout


@pytest.mark.skipif(sys.platform == 'win32', reason='uses a POSIX shell script as the fake compiler')
def test_bench_runs_eager_when_compile_fails(tmp_path):
    env = fake_compiler_path(tmp_path, True)
    r = run_script('bench.py', '--n_layer=1', '--n_head=2', '--n_embd=32', '--block_size=16', '--batch_size=2',
                   '--device=cpu', '--dtype=float32', '--compile=True', '--warmup=1', '--iters=1', env=env)
    assert r.returncode == 0, r.stderr[-2000:]
    warnings = [line for line in r.stderr.splitlines() if line.strip()]
    assert len(warnings) == 1 and warnings[0].startswith('warning: torch.compile failed'), r.stderr
    assert 'float32 eager fused' in r.stdout and 'ms/iter' in r.stdout  # ran, uncompiled


def test_compiled_training_step_matches_eager(tmp_path, monkeypatch):
    """torch.compile as compile=True runs it on a CPU (inductor's generated C++ kernels, compiled
    for real into a fresh cache) computes the loss and every gradient that eager float32 computes,
    to rounding. A 1-layer GPT: about a dozen kernels, forward and backward, so that CI's 2 cores
    compile it in the suite's time."""
    monkeypatch.setenv('TORCHINDUCTOR_CACHE_DIR', str(tmp_path / 'inductor'))
    model = tiny_model()
    g = torch.Generator().manual_seed(1)
    x, y = torch.randint(20, (4, 16), generator=g), torch.randint(20, (4, 16), generator=g)
    eager_loss = model(x, y)[1]
    eager_loss.backward()
    eager_grads = {n: p.grad.clone() for n, p in model.named_parameters()}
    model.zero_grad(set_to_none=True)
    compiled = devices.compile_model(model)
    loss = compiled(x, y)[1]
    loss.backward()
    assert not compiled.fell_back
    assert list((tmp_path / 'inductor').rglob('*.so')), "no kernel was compiled"
    assert loss.item() == pytest.approx(eager_loss.item(), rel=1e-6)
    for n, p in model.named_parameters():
        torch.testing.assert_close(p.grad, eager_grads[n], rtol=1e-5, atol=1e-7, msg=lambda m: f"{n}: {m}")


# ---- fused AdamW ----

def test_fused_adamw_matches_foreach():
    models = [tiny_model(seed=3) for _ in range(2)]
    opts = [m.configure_optimizers(0.1, 1e-2, (0.9, 0.99), 'cpu', fused=f) for m, f in zip(models, (True, False))]
    if opts[0].defaults.get('fused') is not True:
        pytest.skip(f'torch {torch.__version__} has no fused AdamW on CPU (needs 2.4+)')
    assert opts[1].defaults.get('fused') is not True
    x = torch.randint(20, (4, 16), generator=torch.Generator().manual_seed(2))
    for _ in range(3):
        for m, o in zip(models, opts):
            m(x, x)[1].backward()
            o.step()
            o.zero_grad(set_to_none=True)
    for (name, a), b in zip(models[0].named_parameters(), models[1].parameters()):
        assert torch.allclose(a, b, rtol=1e-5, atol=1e-6), name


def test_fused_adamw_is_default_on_cpu(capsys):
    opt = tiny_model().configure_optimizers(0.1, 1e-3, (0.9, 0.95), 'cpu')
    fused = opt.defaults.get('fused') is True
    assert f"using fused AdamW: {fused}" in capsys.readouterr().out
    major, minor = (int(v) for v in torch.__version__.split('.')[:2])
    assert fused == ((major, minor) >= (2, 4))


# ---- MFU ----

def test_estimate_mfu_formula():
    model = tiny_model(n_layer=2, n_head=4, n_embd=64, block_size=32)
    N = model.get_num_params()
    flops_per_token = 6 * N + 12 * 2 * 4 * 16 * 32  # 6N + 12 L H Q T
    expected = flops_per_token * 32 * 8 / 0.5 / 1e12  # 8 sequences of 32 tokens in 0.5 s, 1 TFLOP/s peak
    assert model.estimate_mfu(8, 0.5, 1e12) == pytest.approx(expected)
    assert model.estimate_mfu(8, 1.0, 1.0) == pytest.approx(flops_per_token * 32 * 8)


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


def test_measured_peak_is_cached_and_leaves_rng_alone(monkeypatch):
    monkeypatch.setattr(devices, '_measured_peak', {})
    before = torch.get_rng_state()
    peak, src = devices.peak_flops('cpu', 'float32')
    assert peak > 0 and 'measured' in src
    assert torch.equal(before, torch.get_rng_state())
    assert devices.measure_matmul_peak('cpu', 'float32') == peak  # cached: same number, no re-run


# ---- bench.py settings ----

def test_bench_accepts_train_config_files():
    import bench
    c = bench.parse_settings([os.path.join(PROJECT, 'config', 'train_shakespeare_char.py'), '--iters=1'])
    assert (c.n_layer, c.n_embd, c.block_size, c.batch_size, c.dropout, c.iters) == (6, 384, 256, 64, 0.2, 1)
    assert not hasattr(c, 'max_iters')
    with pytest.raises(UserError, match='max_iters'):
        bench.parse_settings(['--max_iters=3'])  # a training-only setting typed on the command line
    with pytest.raises(UserError, match='fused'):
        bench.main(['--fused=maybe', '--device=cpu'])


TINY_BENCH = ['--n_layer=1', '--n_head=2', '--n_embd=32', '--block_size=16', '--batch_size=2',
              '--gradient_accumulation_steps=1', '--warmup=0', '--iters=1', '--device=cpu', '--peak_flops=1e12']
CONFIGS = sorted(f for f in os.listdir(os.path.join(PROJECT, 'config')) if f.endswith('.py'))


@pytest.mark.parametrize('config', CONFIGS)
def test_bench_runs_every_train_config(config, capsys):
    """Every config train.py accepts, bench.py accepts too, resolving what train.py resolves (the
    optimizer 'auto' included); tiny shapes on the command line keep each run to a fraction of a second."""
    import bench
    from nanogpt.optim import resolve_optimizer
    results = bench.main([f'config/{config}', *TINY_BENCH, '--dtype=float32', '--compile=False'])
    assert len(results) == 1 and results[0]['dt'] > 0 and '<- chosen' in capsys.readouterr().out
    c = bench.parse_settings([f'config/{config}'])
    assert results[0]['setup'].optimizer == resolve_optimizer(c.optimizer, 'cpu')


def test_bench_command_on_the_cpu_recipe():
    """The CPU recipe's config as typed, dtype measured as train.py measures it (compile off: a
    C++ compile would take this suite's budget)."""
    r = run_script('bench.py', 'config/train_shakespeare_char_cpu.py', *TINY_BENCH, '--compile=False',
                   env={'OMP_NUM_THREADS': '1'})
    assert r.returncode == 0, r.stderr[-2000:]
    assert 'Traceback' not in r.stderr
    assert 'using optimizer: ' in r.stdout and 'auto dtype/compile: ' in r.stdout, r.stdout
    assert '<- chosen' in r.stdout


def test_bench_refuses_a_negative_seed():
    import bench
    with pytest.raises(UserError, match=r'seed must be an integer from 0 to 2\*\*63-1, got -1'):
        bench.main(['--seed=-1', '--device=cpu'])
