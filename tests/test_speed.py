"""Speed features: the compile decision, torch.compile's eager fallback (and a compiled training
step that computes what eager computes), fused AdamW, and bench.py's settings. The dtype decision is
tested in tests/test_devices.py (by rule) and tests/test_autotune.py (by measurement); MFU and its
peak rates in tests/test_mfu.py. No timing is asserted: this machine is shared and slow."""

import os
import stat
import sys

import pytest
import torch

from nanogpt import devices
from nanogpt import errors
from nanogpt.errors import UserError
from conftest import PROJECT, run_script, tiny_args, tiny_model

ONE_LAYER = dict(n_layer=1, vocab_size=20, bias=False, training=True)  # a training model that compiles quickly


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
    model = tiny_model(**ONE_LAYER)
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
    model = tiny_model(**ONE_LAYER)
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
    models = [tiny_model(seed=3, **ONE_LAYER) for _ in range(2)]
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
    opt = tiny_model(**ONE_LAYER).configure_optimizers(0.1, 1e-3, (0.9, 0.95), 'cpu')
    fused = opt.defaults.get('fused') is True
    assert f"using fused AdamW: {fused}" in capsys.readouterr().out
    major, minor = (int(v) for v in torch.__version__.split('.')[:2])
    assert fused == ((major, minor) >= (2, 4))


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
    assert 'using optimizer: ' in r.stdout, r.stdout
    if devices.cpu_has_bf16_units():  # float32 and bfloat16 are measured: the table of candidates
        assert 'auto dtype/compile: ' in r.stdout and '<- chosen' in r.stdout, r.stdout
    else:  # an AVX2-only CPU (or a torch that cannot tell): float32 alone, nothing to measure
        assert 'dtype auto: the only candidate' in r.stdout, r.stdout


def test_bench_refuses_a_negative_seed():
    import bench
    with pytest.raises(UserError, match=r'seed must be an integer from 0 to 2\*\*63-1, got -1'):
        bench.main(['--seed=-1', '--device=cpu'])
