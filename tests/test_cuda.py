"""The CUDA paths, run where a GPU is present (skipped elsewhere, with the reason):

    python -m pytest -q tests/test_cuda.py -rs          # on a machine with one or more NVIDIA GPUs

bfloat16 + compile training steps, float16 with the gradient scaler, exact resume, cached against
uncached sampling, pinned-memory batches, the memory estimate against the allocator's peak, an
out-of-memory error as one line, DDP and FSDP on 2 GPUs, bench.py --compare=True."""

import os
import subprocess
import sys
from types import SimpleNamespace

import pytest
import torch

import train
from conftest import PROJECT, run_script, tiny_args

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason='no CUDA GPU on this machine')
two_gpus = pytest.mark.skipif(torch.cuda.device_count() < 2, reason='needs 2 CUDA GPUs')


def cuda_args(out, data, **kw):
    return tiny_args(out, data, **dict(dict(device='cuda', dtype='float32', compile=False), **kw))


def native_bf16():
    return torch.cuda.get_device_capability() >= (8, 0)


def test_bfloat16_compiled_training_steps(char_dataset, tmp_path):
    if not native_bf16():
        pytest.skip('this GPU has no native bfloat16 (compute capability < 8.0)')
    s = train.main(cuda_args(str(tmp_path / 'out'), char_dataset, dtype='bfloat16', compile=True, max_iters=6,
                             eval_interval=3, log_interval=1))
    assert s['config']['dtype'] == 'bfloat16' and s['config']['compile'] is True
    losses = [s['losses'][i] for i in sorted(s['losses'])]
    assert all(torch.isfinite(torch.tensor(losses))) and losses[-1] < losses[0]


def test_float16_uses_the_gradient_scaler(char_dataset, tmp_path):
    out = str(tmp_path / 'out')
    s = train.main(cuda_args(out, char_dataset, dtype='float16', max_iters=6, eval_interval=3,
                             always_save_checkpoint=True))
    ckpt = torch.load(os.path.join(out, 'ckpt.pt'), weights_only=True)
    assert ckpt['scaler'] and ckpt['scaler']['scale'] > 0
    assert s['losses'][6] < s['losses'][0]


def test_auto_dtype_on_this_gpu(char_dataset, tmp_path, capsys):
    s = train.main(cuda_args(str(tmp_path / 'out'), char_dataset, dtype='auto', max_iters=2, eval_interval=2))
    assert s['config']['dtype'] == ('bfloat16' if native_bf16() else 'float16')


def test_compile_auto_on_cuda_is_measured_against_the_run(char_dataset, tmp_path, monkeypatch, capsys):
    """A short run stays eager without compiling; where the guess says compiling repays, it is
    tried, its compile time and compiled step are measured and cached, and it is kept if faster."""
    import json
    from nanogpt import autotune
    monkeypatch.setenv('NANOGPT_CACHE_DIR', str(tmp_path / 'cache'))
    s = train.main(cuda_args(str(tmp_path / 'short'), char_dataset, compile='auto', max_iters=2, eval_interval=2))
    out = capsys.readouterr().out
    assert s['config']['compile'] is False and 'auto compile: not tried' in out
    monkeypatch.setitem(autotune.COMPILE_GUESS_S, 'cuda', 1e-3)  # any run repays a free compile: try it
    s = train.main(cuda_args(str(tmp_path / 'long'), char_dataset, compile='auto', max_iters=4, eval_interval=2))
    out = capsys.readouterr().out
    assert 'auto compile: float32 compiled' in out, out
    with open(tmp_path / 'cache' / 'autotune.json') as f:
        (entry,) = json.load(f).values()
    assert entry['cpu'] == torch.cuda.get_device_name() and entry['compile_s'] > 0 and entry['compiled']['float32'] > 0
    # the compile time is spent by now: the compiled model is kept if its step is the faster
    assert s['config']['compile'] is (entry['compiled']['float32'] < entry['eager']['float32'])


def test_resume_on_cuda_continues_the_run(char_dataset, tmp_path):
    """Batches and dropout masks (the CUDA generator is in the checkpoint) are the same; CUDA
    kernels may differ in the last bits (atomics in the embedding backward)."""
    kw = dict(max_iters=8, eval_interval=4, lr_decay_iters=8, dropout=0.1, gradient_accumulation_steps=2)
    whole = train.main(cuda_args(str(tmp_path / 'whole'), char_dataset, **kw))
    out = str(tmp_path / 'parts')
    train.main(cuda_args(out, char_dataset, **dict(kw, max_iters=4)))
    rest = train.main(cuda_args(out, char_dataset, init_from='resume', **kw))
    for i in range(4, 9):
        assert rest['losses'][i] == pytest.approx(whole['losses'][i], rel=1e-4)


def test_cached_and_uncached_sampling_agree_on_cuda():
    """The decode and window steps replayed from CUDA graphs draw the plain steps' tokens."""
    from model import GPT, GPTConfig
    from nanogpt.engine import Engine
    torch.manual_seed(0)
    model = GPT(GPTConfig(n_layer=2, n_head=2, n_embd=64, block_size=32, vocab_size=50, dropout=0.0)).cuda().eval()
    x = torch.randint(50, (2, 5), device='cuda')
    out = {}
    for use_cache in (False, True):
        torch.manual_seed(1)
        engine = Engine(model)
        out[use_cache] = engine.generate(x, 40, temperature=0, use_cache=use_cache)  # greedy: past block_size too
    assert torch.equal(out[False], out[True])
    assert not engine.decode.failed and not engine.window.failed  # steps replayed from CUDA graphs (CapturedStep)
    for dtype in (torch.float32, torch.bfloat16):  # sampled tokens too, graph against plain steps
        with torch.autocast('cuda', dtype=dtype, enabled=dtype != torch.float32):
            torch.manual_seed(2)
            graphed = engine.generate(x, 20, temperature=0.8, top_k=10)
            torch.manual_seed(2)
            plain = Engine(model, compile=False).generate(x, 20, temperature=0.8, top_k=10, use_cache=False)
        assert not engine.decode.failed and engine.decode.graph is None  # dropped with the cache
        assert not engine.window.failed and engine.window.graph is None
        if dtype == torch.float32:
            assert torch.equal(graphed, plain)


def test_pinned_batches_arrive_on_the_gpu(char_dataset):
    from nanogpt.data import open_split
    c = SimpleNamespace(block_size=16, batch_size=4)
    data = open_split(char_dataset, 'train', char_dataset, 16, 30)
    x, y = train.get_batch(data, c, SimpleNamespace(device='cuda', device_type='cuda'))
    torch.cuda.synchronize()
    assert x.is_cuda and y.is_cuda and x.is_contiguous() and y.is_contiguous()
    assert torch.equal(x[:, 1:], y[:, :-1])


def test_bench_compare_on_cuda():
    r = run_script('bench.py', '--device=cuda', '--compare=True', '--n_layer=2', '--n_head=2', '--n_embd=64',
                   '--block_size=64', '--batch_size=8', '--iters=3', '--warmup=1')
    assert r.returncode == 0, r.stderr[-2000:]
    assert 'speed-up of the chosen settings' in r.stdout


@pytest.mark.parametrize('dtype', ['float32', 'bfloat16'])
def test_activation_estimate_bounds_a_cuda_step(dtype):
    """nanogpt/memory.py's activations against torch.cuda.max_memory_allocated over a micro-step
    with .grad in place (eager, fused attention, GPT-2's vocabulary)."""
    from model import GPT, GPTConfig
    from nanogpt import memory
    if dtype == 'bfloat16' and not native_bf16():
        pytest.skip('this GPU has no native bfloat16 (compute capability < 8.0)')
    L, nh, C, T, V, B = 4, 8, 512, 512, 50304, 4
    torch.manual_seed(0)
    model = GPT(GPTConfig(n_layer=L, n_head=nh, n_embd=C, block_size=T, vocab_size=V, bias=False)).cuda()
    ctx = torch.autocast('cuda', dtype=torch.bfloat16, enabled=dtype == 'bfloat16')
    x, y = torch.randint(V, (B, T), device='cuda'), torch.randint(V, (B, T), device='cuda')
    with ctx:
        model(x, y)[1].backward()  # .grad, cuBLAS workspaces and kernels in place
    torch.cuda.synchronize()
    base = torch.cuda.memory_allocated()
    torch.cuda.reset_peak_memory_stats()
    with ctx:
        logits, loss = model(x, y)
    loss.backward()
    del logits, loss
    torch.cuda.synchronize()
    peak = torch.cuda.max_memory_allocated() - base
    est = memory.activation_bytes(memory.Shape(L, nh, C, T, V), B, dtype)
    assert 0.8 * est <= peak <= 1.05 * est, (peak, est)


def test_out_of_memory_on_cuda_is_one_line(char_dataset, tmp_path):
    """A GPU that runs out in the middle of training (a 2 GiB cap stands in for a small card):
    one line with the fix, the checkpoint untouched."""
    out = str(tmp_path / 'out')
    train.main(cuda_args(out, char_dataset, max_iters=4, eval_interval=2))
    with open(os.path.join(out, 'ckpt.pt'), 'rb') as f:
        before = f.read()
    capped = ("import runpy, sys, torch\n"
              "torch.cuda.set_per_process_memory_fraction(2 ** 31 / torch.cuda.get_device_properties(0).total_memory)\n"
              "sys.argv = ['train.py'] + sys.argv[1:]\n"
              "runpy.run_path('train.py', run_name='__main__')\n")
    # about 4 GB for a float32 training micro-step of the tiny model
    r = run_script('-c', capped, *cuda_args(out, char_dataset, init_from='resume', max_iters=8, eval_interval=2,
                                            batch_size=24000, peak_flops=1e12))
    assert r.returncode == 2 and 'Traceback' not in r.stderr and r.stderr.count('\n') == 1, r.stderr[-2000:]
    assert r.stderr.startswith('error: out of memory on cuda') and '(CUDA out of memory' in r.stderr
    assert '--batch_size=12000 --gradient_accumulation_steps=2' in r.stderr and 'is untouched' in r.stderr
    with open(os.path.join(out, 'ckpt.pt'), 'rb') as f:
        assert f.read() == before


@two_gpus
@pytest.mark.parametrize('fsdp', [False, True], ids=['ddp', 'fsdp'])
def test_two_gpus_under_torchrun(char_dataset, tmp_path, fsdp):
    out = tmp_path / 'out'
    r = subprocess.run([sys.executable, '-m', 'torch.distributed.run', '--standalone', '--nproc_per_node=2',
                        'train.py', *cuda_args(str(out), char_dataset, gradient_accumulation_steps=2, max_iters=4,
                                               eval_interval=4, always_save_checkpoint=True, fsdp=fsdp,
                                               dtype='bfloat16' if native_bf16() else 'float16')],
                       cwd=PROJECT, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-2000:]
    ckpt = torch.load(out / 'ckpt.pt', weights_only=True)
    assert ckpt['iter_num'] == 4 and len(ckpt['rng_ranks']) == 2
