"""Training on several processes with torchrun: 2 CPU ranks talking over gloo on the loopback
interface. Every test launches the real `python -m torch.distributed.run`; nothing is mocked.

Run as a script under torchrun, this file is also the worker of the DDP-equivalence test and of the
thread test (train.py's main() in-process)."""

import glob
import os
import signal
import subprocess
import sys
import time

import pytest
import torch

from conftest import PROJECT, make_char_dataset, tiny_args

TORCHRUN = [sys.executable, '-m', 'torch.distributed.run', '--standalone', '--nproc_per_node=2']
# one thread per rank (2 ranks share the 2 cores of CI), rendezvous and gloo on loopback only
# and no CUDA GPU: these are the CPU (gloo) paths, on any machine (tests/test_cuda.py has the GPU ones)
ENV = dict(os.environ, PYTHONUNBUFFERED='1', OMP_NUM_THREADS='1', CUDA_VISIBLE_DEVICES='',
           **({'GLOO_SOCKET_IFNAME': 'lo'} if os.path.exists('/sys/class/net/lo') else {}))

# the equivalence test: STEPS optimizer steps of MICRO micro-batches each
STEPS, MICRO, BATCH, T, VOCAB = 3, 4, 2, 16, 23


def torchrun(*args, timeout=120, log_dir=None):
    """`torchrun --standalone --nproc_per_node=2 <args>` from the project root, output captured.
    With log_dir, each rank's stdout and stderr go to files under it instead."""
    extra = [f'--log-dir={log_dir}', '--redirects=3'] if log_dir else []
    return subprocess.run([*TORCHRUN, *extra, *args], cwd=PROJECT, env=ENV, capture_output=True,
                          text=True, timeout=timeout)


def small_gpt(seed):
    from model import GPT, GPTConfig
    torch.manual_seed(seed)
    return GPT(GPTConfig(n_layer=2, n_head=2, n_embd=32, block_size=T, vocab_size=VOCAB, bias=False))


def fixed_batches():
    g = torch.Generator().manual_seed(0)
    return [[torch.randint(VOCAB, (2, BATCH, T), generator=g) for _ in range(MICRO)] for _ in range(STEPS)]


def make_optimizer(model, kind='sgd'):
    # plain SGD: its steps follow the gradients' size, so a wrongly scaled or half-synchronised
    # gradient shows in the weights (AdamW's normalised steps and clipping would hide the scale).
    # Muon (train.py's optimizer='muon') checks that its state and steps agree across ranks.
    if kind == 'muon':
        from types import SimpleNamespace
        from nanogpt import optim
        c = SimpleNamespace(optimizer='muon', learning_rate=1e-2, muon_lr=0.05, muon_momentum=0.95,
                            weight_decay=0.1, beta1=0.9, beta2=0.95)
        return optim.build_optimizer(model, c, 'muon', 'cpu')
    return torch.optim.SGD(model.parameters(), lr=0.5)


def optimizer_step(model, optimizer):
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)


def ddp_worker(out_prefix, kind='sgd'):
    """Each rank trains on its share of the micro-batches of every step, the way train.py does:
    seeded with 1337 + rank (DDP must broadcast rank 0's weights), loss divided by the local
    micro-step count, gradients all-reduced on the last micro-step only. The process group is
    made and destroyed as train.py does it: destroyed after the DDP model is gone."""
    from nanogpt import distributed
    distributed.init_process_group('gloo')
    ddp_train(out_prefix, kind)
    distributed.shutdown_distributed()


def ddp_train(out_prefix, kind):
    import torch.distributed as dist
    from torch.nn.parallel import DistributedDataParallel as DDP
    rank, world = dist.get_rank(), dist.get_world_size()
    raw = small_gpt(1337 + rank)
    model = DDP(raw)
    optimizer = make_optimizer(raw, kind)
    local = MICRO // world
    for step in fixed_batches():
        for m, xy in enumerate(step[rank * local:(rank + 1) * local]):
            model.require_backward_grad_sync = m == local - 1
            _, loss = model(xy[0], xy[1])
            (loss / local).backward()
        optimizer_step(model, optimizer)
    torch.save(raw.state_dict(), f'{out_prefix}.rank{rank}.pt')


@pytest.mark.parametrize('kind', ['sgd', 'muon'])
def test_ddp_two_ranks_match_one_process_accumulating(tmp_path, kind):
    prefix = str(tmp_path / 'weights')
    r = torchrun(os.path.abspath(__file__), 'ddp_worker', prefix, kind)
    assert r.returncode == 0, r.stdout + r.stderr
    w0 = torch.load(f'{prefix}.rank0.pt', weights_only=True)
    w1 = torch.load(f'{prefix}.rank1.pt', weights_only=True)
    assert all(torch.equal(w0[k], w1[k]) for k in w0), "the two ranks ended with different weights"

    # one process, the same MICRO micro-batches per step accumulated
    model = small_gpt(1337)
    start = {k: v.clone() for k, v in model.state_dict().items()}
    optimizer = make_optimizer(model, kind)
    for step in fixed_batches():
        for xy in step:
            _, loss = model(xy[0], xy[1])
            (loss / MICRO).backward()
        optimizer_step(model, optimizer)
    ref = model.state_dict()
    assert set(ref) == set(w0)
    for k in ref:
        assert not torch.equal(ref[k], start[k]), f"{k} did not train"
        if kind == 'muon':
            # Muon orthogonalises in bfloat16 (torch.optim.Muon): the last-bit differences of
            # all-reduced against accumulated gradients come out as bf16 rounding of each update
            moved = (ref[k] - start[k]).abs().max().item()
            assert (w0[k] - ref[k]).abs().max().item() <= 0.03 * moved, k
        else:
            torch.testing.assert_close(w0[k], ref[k], rtol=1e-4, atol=1e-5, msg=lambda m: f"{k}: {m}")


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


def test_torchrun_muon_with_a_time_budget(tmp_path):
    """Both ranks follow rank 0's clock: they close at the same iteration with the same learning
    rate (a rank stepping on alone would hang the job), with Muon's state in the checkpoint."""
    data = make_char_dataset(tmp_path / 'toy')
    out = tmp_path / 'out'
    r = torchrun('train.py', *tiny_args(str(out), data, gradient_accumulation_steps=2, max_iters=10 ** 6,
                                         eval_interval=10 ** 6, lr_decay_iters=1000, optimizer='muon',
                                         time_budget=6, log_interval=10))
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


@pytest.mark.parametrize('fsdp', [False, True])
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
        killed = time.time()
        proc.wait(timeout=60)
        took = time.time() - killed
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
    assert took < 45, f"the job took {took:.0f}s to end after a rank died"
    assert survivors == {}, "a rank outlived the job"
    ckpt = torch.load(out / 'ckpt.pt', weights_only=True)  # complete and loadable
    assert ckpt['iter_num'] > 0 and ckpt['iter_num'] % 2 == 0
    assert not [f for f in os.listdir(out) if '.tmp' in f]


if __name__ == '__main__' and sys.argv[1:2] == ['ddp_worker']:
    ddp_worker(sys.argv[2], sys.argv[3])
if __name__ == '__main__' and sys.argv[1:2] == ['train_worker']:
    train_worker(sys.argv[2], sys.argv[3], sys.argv[4] == 'True', sys.argv[5])
