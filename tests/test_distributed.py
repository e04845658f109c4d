"""Training on several processes with torchrun: 2 CPU ranks talking over gloo on the loopback
interface, each test launching the real `python -m torch.distributed.run` with nothing mocked; and,
in this process, what a process group is given: FSDP's mesh built for the run's device type (not
the machine's accelerator) and a timeout that fits a checkpoint write.

Run as a script under torchrun, this file is also the worker of the DDP-equivalence test and of the
thread test (train.py's main() in-process; the equivalence worker also records the batches it drew,
for one process to replay)."""

import glob
import os
import signal
import subprocess
import sys
import time
from types import SimpleNamespace

import pytest
import torch

from conftest import needs_fsdp2, needs_muon, PROJECT, make_char_dataset, tiny_args, tiny_model
from nanogpt import distributed

TORCHRUN = [sys.executable, '-m', 'torch.distributed.run', '--standalone', '--nproc_per_node=2']
# one thread per rank (2 ranks share the 2 cores of CI), rendezvous and gloo on loopback only
# and no CUDA GPU: these are the CPU (gloo) paths, on any machine (tests/test_cuda.py has the GPU ones)
ENV = dict(os.environ, PYTHONUNBUFFERED='1', OMP_NUM_THREADS='1', CUDA_VISIBLE_DEVICES='',
           **({'GLOO_SOCKET_IFNAME': 'lo'} if os.path.exists('/sys/class/net/lo') else {}))


def torchrun(*args, timeout=120, log_dir=None):
    """`torchrun --standalone --nproc_per_node=2 <args>` from the project root, output captured.
    With log_dir, each rank's stdout and stderr go to files under it instead."""
    extra = [f'--log-dir={log_dir}', '--redirects=3'] if log_dir else []
    return subprocess.run([*TORCHRUN, *extra, *args], cwd=PROJECT, env=ENV, capture_output=True,
                          text=True, timeout=timeout)


def recording_batches(train, drawn):
    """Make train.py's get_batch also append each training batch it returns to `drawn` (the
    evaluation's batches, drawn in estimate_loss, are not recorded). The run is otherwise unchanged."""
    original = train.get_batch

    def get_batch(data, c, run, batches=1):
        x, y = original(data, c, run, batches)
        if sys._getframe(1).f_code.co_name != 'estimate_loss':
            drawn.append((x.clone(), y.clone()))
        return x, y
    train.get_batch = get_batch
    return original


def equivalence_worker(out_dir, data, optimizer, accum, record):
    """train.py's main() under torchrun, as process RANK, recording the training batches it drew
    and the losses it computed, for the single-process run to replay."""
    import train
    drawn = []
    recording_batches(train, drawn)
    summary = train.main(equivalence_args(out_dir, data, optimizer, int(accum)))
    torch.save({'batches': drawn, 'losses': summary['losses']}, f"{record}.rank{os.environ['RANK']}")


def equivalence_args(out_dir, data, optimizer, accum):
    # AdamW without clipping: its moment estimates hold the raw gradients, so a gradient averaged
    # wrongly (summed over processes, or divided by the wrong micro-step count) shows in the
    # checkpoint even though Adam's normalised steps would hide it in the weights. Muon keeps
    # train.py's default clipping, which the processes must then compute alike.
    extra = dict(grad_clip=0.0) if optimizer == 'adamw' else {}
    return tiny_args(out_dir, data, gradient_accumulation_steps=accum, max_iters=3, eval_interval=3,
                     always_save_checkpoint=True, optimizer=optimizer, muon_lr=0.05, **extra)


def tensors_of(state, prefix=''):
    """{path: tensor} of every tensor in a (nested) state dict."""
    if isinstance(state, torch.Tensor):
        return {prefix: state}
    if isinstance(state, dict):
        items = state.items()
    elif isinstance(state, (list, tuple)):
        items = enumerate(state)
    else:
        return {}
    found = {}
    for k, v in items:
        found.update(tensors_of(v, f'{prefix}/{k}'))
    return found


@pytest.mark.parametrize('optimizer, accum', [pytest.param('muon', 2, marks=needs_muon), ('adamw', 4)])
def test_ddp_train_py_matches_one_process_fed_the_same_batches(tmp_path, monkeypatch, optimizer, accum):
    """train.py on 2 processes against train.py on one, with the same total gradient_accumulation_steps.
    Process r seeds its batches with seed + r, so the one process replays what the two drew:
    its micro-step M of each iteration gets the batch that process M // (accum/2) used for its
    micro-step M % (accum/2). With one micro-step per process (accum 2) the arithmetic is the same
    sums in the same order, and the checkpoints must be equal bit for bit (Muon's bfloat16
    orthogonalisation included); with two (accum 4, the first without an all-reduce) each process
    adds its two gradients before the all-reduce adds the processes' sums, one association away
    from the single process's running sum, so they agree to float32 rounding."""
    import train
    data = make_char_dataset(tmp_path / 'toy', n_chars=6000)
    record = str(tmp_path / 'record')
    r = torchrun(os.path.abspath(__file__), 'equivalence_worker', str(tmp_path / 'ddp'), data, optimizer,
                 str(accum), record)
    assert r.returncode == 0, r.stdout + r.stderr
    ranks = [torch.load(f'{record}.rank{k}', weights_only=True) for k in (0, 1)]
    local = accum // 2
    steps = (len(ranks[0]['batches']) - 1) // local  # each process drew one batch ahead
    assert steps == 4 and all(len(rk['batches']) == 1 + steps * local for rk in ranks)
    assert not torch.equal(ranks[0]['batches'][0][0], ranks[1]['batches'][0][0])  # seed + rank

    stream = [ranks[m // local]['batches'][i * local + m % local] for i in range(steps) for m in range(accum)]
    stream.append(ranks[0]['batches'][-1])  # drawn after the last micro-step, never used
    replay = iter(stream)
    original = train.get_batch

    def get_batch(data, c, run, batches=1):
        if sys._getframe(1).f_code.co_name == 'estimate_loss':
            return original(data, c, run, batches)  # evaluations do not change the weights
        return next(replay)
    monkeypatch.setattr(train, 'get_batch', get_batch)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as each of the 2 processes: the same kernels
    try:
        summary = train.main(equivalence_args(str(tmp_path / 'one'), data, optimizer, accum))
    finally:
        torch.set_num_threads(threads)
    assert next(replay, None) is None, "the single process drew another number of batches"

    ddp = torch.load(tmp_path / 'ddp' / 'ckpt.pt', weights_only=True)
    one = torch.load(tmp_path / 'one' / 'ckpt.pt', weights_only=True)
    assert ddp['iter_num'] == one['iter_num'] == 3
    got, want = tensors_of([ddp['model'], ddp['optimizer']]), tensors_of([one['model'], one['optimizer']])
    assert set(got) == set(want) and len(got) > 20
    # each iteration's loss: the last micro-step's, on the batch that process 1 used last
    assert sorted(summary['losses']) == sorted(ranks[1]['losses']) == list(range(steps))
    if accum == 2:
        assert [k for k in got if not torch.equal(got[k], want[k])] == []
        assert summary['losses'] == ranks[1]['losses']
    else:
        for k in got:
            torch.testing.assert_close(got[k], want[k], rtol=1e-5, atol=1e-7, msg=lambda m: f"{k}: {m}")
        assert summary['losses'] == pytest.approx(ranks[1]['losses'], rel=1e-6)
    moments = [v for k, v in got.items() if k.endswith(('exp_avg', 'momentum_buffer'))]
    assert moments and all(v.abs().sum() > 0 for v in moments)  # gradients reached every optimizer state


@needs_fsdp2
def test_torchrun_ddp_then_fsdp_resume_then_sample(tmp_path):
    """The real command line on 2 CPU ranks: DDP trains and saves; fsdp=True resumes that
    checkpoint (numbered optimizer state, per-rank RNG), trains sharded and writes ckpt.pt in the
    same plain format; sample.py reads it."""
    data = make_char_dataset(tmp_path / 'toy')
    out = tmp_path / 'out'
    r = torchrun('train.py', *tiny_args(str(out), data, gradient_accumulation_steps=2, max_iters=5,
                                         always_save_checkpoint=True))
    assert r.returncode == 0, r.stdout + r.stderr
    # 2 ranks x 1 micro-step each x 4 sequences x 32 tokens, printed by rank 0 alone
    tok = [l for l in r.stdout.splitlines() if l.startswith('tokens per iteration will be:')]
    assert tok == ['tokens per iteration will be: 256 (2 processes x 1 micro-steps x 4 batch x 32 tokens)']
    assert r.stdout.count('Overriding: max_iters = 5') == 1 and r.stdout.count('step 5: train loss') == 1
    assert 'Traceback' not in r.stderr
    before = torch.load(out / 'ckpt.pt', weights_only=True)
    assert before['iter_num'] == 5
    assert before['config']['gradient_accumulation_steps'] == 2  # the whole job's, not one rank's
    assert len(before['rng_ranks']) == 2
    assert not torch.equal(before['rng_ranks'][0]['cpu'], before['rng_ranks'][1]['cpu'])

    r = torchrun('train.py', *tiny_args(str(out), data, gradient_accumulation_steps=2, max_iters=10,
                                         always_save_checkpoint=True, init_from='resume', fsdp=True))
    assert r.returncode == 0, r.stdout + r.stderr
    assert 'Resuming training from' in r.stdout and r.stdout.count('step 10: train loss') == 1
    assert 'step 0:' not in r.stdout
    after = torch.load(out / 'ckpt.pt', weights_only=True)
    assert after['iter_num'] == 10
    # the same layout as before: plain tensors under the model's own names, numbered optimizer state
    assert set(after['model']) == set(before['model'])
    assert all(type(v) is torch.Tensor and v.shape == before['model'][k].shape for k, v in after['model'].items())
    assert set(after['optimizer']['state']) == set(before['optimizer']['state'])
    assert [g['params'] for g in after['optimizer']['param_groups']] == \
        [g['params'] for g in before['optimizer']['param_groups']]
    # AdamW's step count went on from the resumed state: 5 steps at iter 5, 10 at iter 10
    assert float(after['optimizer']['state'][0]['step']) == float(before['optimizer']['state'][0]['step']) + 5
    assert any(not torch.equal(after['model'][k], before['model'][k]) for k in after['model'])
    assert not [f for f in os.listdir(out) if '.tmp' in f]

    s = subprocess.run([sys.executable, 'sample.py', f'--out_dir={out}', '--num_samples=1', '--max_new_tokens=20',
                        '--device=cpu', '--start=ROMEO:'], cwd=PROJECT, env=ENV, capture_output=True,
                       text=True, timeout=120)
    assert s.returncode == 0, s.stderr
    assert s.stdout.count('---------------') == 1 and 'ROMEO:' in s.stdout


@needs_muon
def test_torchrun_muon_with_a_time_budget(tmp_path):
    """Both ranks follow rank 0's clock: they close at the same iteration with the same learning
    rate (a rank stepping on alone would hang the job), with Muon's state in the checkpoint."""
    data = make_char_dataset(tmp_path / 'toy')
    out = tmp_path / 'out'
    r = torchrun('train.py', *tiny_args(str(out), data, gradient_accumulation_steps=2, max_iters=10 ** 6,
                                         eval_interval=10 ** 6, lr_decay_iters=1000, optimizer='muon',
                                         time_budget=6, log_interval=10, always_save_checkpoint=True))
    assert r.returncode == 0, r.stdout + r.stderr
    assert r.stdout.count('iterations fitted in the 0m06s budget') == 1
    ckpt = torch.load(out / 'ckpt.pt', weights_only=True)
    assert ckpt['optimizer']['kind'] == 'muon' and len(ckpt['rng_ranks']) == 2
    assert ckpt['iter_num'] > 10 and ckpt['time']['spent'] <= 6


def test_accumulation_not_divisible_by_world_size_is_one_line(tmp_path):
    data = make_char_dataset(tmp_path / 'toy', n_chars=2000)
    logs = tmp_path / 'logs'
    r = torchrun('train.py', *tiny_args(str(tmp_path / 'out'), data, gradient_accumulation_steps=3),
                 log_dir=str(logs))
    assert r.returncode != 0
    rank_errs = sorted(glob.glob(str(logs / '**' / 'stderr.log'), recursive=True))
    assert len(rank_errs) == 2, rank_errs
    for path in rank_errs:
        err = open(path).read()
        assert 'Traceback' not in err, err
        assert ('error: gradient_accumulation_steps (3) must be divisible by the number of processes (2), '
                'e.g. --gradient_accumulation_steps=') in err, err
    assert 'exitcode  : 2' in r.stderr  # torchrun's summary names the rank's exit code


def gloo_threads():
    """Names of this process's threads that belong to gloo (its work loop and TCP loop)."""
    names = []
    for comm in glob.glob('/proc/self/task/*/comm'):
        try:
            names.append(open(comm).read().strip())
        except OSError:
            pass
    return [n for n in names if 'gloo' in n]


def train_worker(out_dir, data, fsdp, report):
    """train.py's main() under torchrun, then the threads of gloo still running (none, once the
    process group is freed). One run per process: torchrun's store cannot host a second group."""
    import train
    train.main(tiny_args(out_dir, data, gradient_accumulation_steps=2, max_iters=2, eval_interval=2,
                         always_save_checkpoint=True, fsdp=fsdp))
    with open(f"{report}.rank{os.environ['RANK']}", 'w') as f:
        f.write(repr(gloo_threads()))


@pytest.mark.parametrize('fsdp', [False, pytest.param(True, marks=needs_fsdp2)])
def test_process_group_threads_end_before_python_does(tmp_path, fsdp):
    """The cause of an abort at exit ("terminate called without an active exception", SIGABRT
    after "best model: ..."): gloo's worker threads outlived the process group, and one of them
    freed a collective of the last backward pass while the interpreter was shutting down.
    train.py's main() must leave no such thread running (see distributed.shutdown_distributed)."""
    if not os.path.exists('/proc/self/task'):
        pytest.skip('lists threads through /proc (Linux)')
    data = make_char_dataset(tmp_path / 'toy', n_chars=4000)
    report = str(tmp_path / 'threads')
    r = torchrun(os.path.abspath(__file__), 'train_worker', str(tmp_path / 'out'), data, str(fsdp), report)
    assert r.returncode == 0, r.stdout + r.stderr
    for rank in (0, 1):
        assert open(f'{report}.rank{rank}').read() == '[]', f'rank {rank}: gloo threads left running'


def rank_pids(marker):
    """PIDs of the training processes (not torchrun itself) whose command line holds `marker`,
    by rank, read from /proc."""
    found = {}
    for d in glob.glob('/proc/[0-9]*'):
        try:
            cmd = open(f'{d}/cmdline', 'rb').read().split(b'\0')
            env = open(f'{d}/environ', 'rb').read().split(b'\0')
        except OSError:
            continue
        if b'train.py' in cmd and any(marker.encode() in a for a in cmd):
            for e in env:
                if e.startswith(b'RANK='):
                    found[int(e[5:])] = int(d.split('/')[-1])
    return found


def test_a_rank_killed_ends_the_job_and_keeps_the_checkpoint(tmp_path):
    if not os.path.exists('/proc/self/environ'):
        import pytest
        pytest.skip('finding a rank by its environment needs /proc (Linux)')
    data = make_char_dataset(tmp_path / 'toy')
    out = tmp_path / 'out'
    log = open(tmp_path / 'torchrun.log', 'w+')  # a file, not a pipe nobody reads while it trains
    proc = subprocess.Popen([*TORCHRUN, 'train.py', *tiny_args(str(out), data, gradient_accumulation_steps=2,
                                                               max_iters=100000, eval_interval=2,
                                                               always_save_checkpoint=True, lr_decay_iters=100000)],
                            cwd=PROJECT, env=ENV, stdout=log, stderr=subprocess.STDOUT)
    try:
        deadline = time.time() + 90
        while not (out / 'ckpt.pt').exists():
            assert proc.poll() is None and time.time() < deadline, 'training did not reach its first checkpoint'
            time.sleep(0.2)
        pids = rank_pids(str(out))
        assert set(pids) == {0, 1}, pids
        os.kill(pids[1], signal.SIGKILL)
        proc.wait(timeout=90)  # a hang guard, not a speed claim: the job must end by itself
        survivors = rank_pids(str(out))  # looked for before the clean-up below
    finally:
        if proc.poll() is None:  # the test failed midway: torchrun stops its ranks on SIGTERM
            proc.terminate()
            try:
                proc.wait(timeout=40)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        for pid in rank_pids(str(out)).values():
            os.kill(pid, signal.SIGKILL)
        log.seek(0)
        output = log.read()
        log.close()
    assert proc.returncode != 0, output
    assert survivors == {}, "a rank outlived the job"
    ckpt = torch.load(out / 'ckpt.pt', weights_only=True)  # complete and loadable
    assert ckpt['iter_num'] > 0 and ckpt['iter_num'] % 2 == 0
    assert not [f for f in os.listdir(out) if '.tmp' in f]


# ---- in this process: FSDP's mesh, the process group's timeout -------------------------------------

@needs_fsdp2
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


if __name__ == '__main__' and sys.argv[1:2] == ['equivalence_worker']:
    equivalence_worker(*sys.argv[2:7])
if __name__ == '__main__' and sys.argv[1:2] == ['train_worker']:
    train_worker(sys.argv[2], sys.argv[3], sys.argv[4] == 'True', sys.argv[5])
