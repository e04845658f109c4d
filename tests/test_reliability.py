"""Checkpoints and resume: exact continuation after a stop (from ckpt.pt and from last.pt),
signals, SIGKILL at random moments, diverging runs, safe loading, and the original nanoGPT's
checkpoint format in both directions."""

import hashlib
import json
import os
import pickle
import random
import re
import signal
import subprocess
import sys
import time

import pytest
import torch

from conftest import PROJECT, run_script, tiny_args
from nanogpt.errors import UserError
from model import GPT, GPTConfig
from nanogpt import checkpoint
import train

ONE_THREAD = {'OMP_NUM_THREADS': '1'}  # the suite shares few cores: no thread oversubscription
CKPT_KEYS = {'model', 'optimizer', 'model_args', 'iter_num', 'best_val_loss', 'config', 'rng'}
ORIGINAL_GPTCONFIG_FIELDS = {'block_size', 'vocab_size', 'n_layer', 'n_head', 'n_embd', 'dropout', 'bias'}


@pytest.fixture(autouse=True)
def one_thread():
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def stop_at_fetch(monkeypatch, fetch, times=1, signum=signal.SIGTERM):
    """Deliver a real signal (`times` times) to this process during the fetch-th training batch
    fetch of the next run: train's own handler takes it, and the run stops at the following
    iteration boundary."""
    original = train.get_batch
    count = [0]

    def get_batch(data, c, run, batches=1):
        if sys._getframe(1).f_code.co_name == 'train':  # a training batch, not an evaluation's
            count[0] += 1
            if count[0] == fetch:
                for _ in range(times):
                    signal.raise_signal(signum)
        return original(data, c, run, batches)
    monkeypatch.setattr(train, 'get_batch', get_batch)
    return lambda: monkeypatch.setattr(train, 'get_batch', original)


def sha(path):
    with open(path, 'rb') as f:
        return hashlib.sha256(f.read()).hexdigest()


def assert_plain(obj, where='ckpt'):
    """Only tensors and plain Python values, so that any torch.load(weights_only=True) reads it."""
    if isinstance(obj, dict):
        for k, v in obj.items():
            assert type(k) in (str, int), f"{where}: key {k!r}"
            assert_plain(v, f"{where}[{k!r}]")
    elif isinstance(obj, (list, tuple)):
        for i, v in enumerate(obj):
            assert_plain(v, f"{where}[{i}]")
    else:
        assert obj is None or type(obj) in (str, int, float, bool, torch.Tensor), f"{where}: {type(obj)}"


# ---- exact resume ---------------------------------------------------------------------------------

def test_resume_from_ckpt_then_from_last_is_exact(char_dataset, tmp_path, monkeypatch):
    """Dropout and gradient accumulation on, float32 on CPU: stopping at a checkpoint (ckpt.pt at an
    eval) and by SIGTERM mid-way (last.pt) and resuming gives the same losses, bit for bit."""
    kw = dict(max_iters=8, eval_interval=4, lr_decay_iters=8, dropout=0.1, gradient_accumulation_steps=2)
    whole = train.main(tiny_args(str(tmp_path / 'whole'), char_dataset, **kw))
    assert sorted(whole['losses']) == list(range(9))

    out = str(tmp_path / 'parts')
    first = train.main(tiny_args(out, char_dataset, **dict(kw, max_iters=4)))
    assert first['losses'] == {i: whole['losses'][i] for i in range(5)}
    assert torch.load(os.path.join(out, 'ckpt.pt'), weights_only=True)['iter_num'] == 4
    assert not os.path.exists(os.path.join(out, 'last.pt'))

    # resume from ckpt.pt at 4; the signal comes during iteration 5's batch fetches (2 per
    # iteration, plus the one before the loop), so the run stops at the top of iteration 6
    restore = stop_at_fetch(monkeypatch, fetch=4)
    with pytest.raises(SystemExit) as stopped:
        train.main(tiny_args(out, char_dataset, init_from='resume', **kw))
    restore()
    assert stopped.value.code == 128 + signal.SIGTERM
    last = torch.load(os.path.join(out, 'last.pt'), weights_only=True)
    assert last['iter_num'] == 6 and CKPT_KEYS <= set(last)
    assert torch.load(os.path.join(out, 'ckpt.pt'), weights_only=True)['iter_num'] == 4

    # resume again: last.pt (iter 6) is newer than ckpt.pt (iter 4)
    rest = train.main(tiny_args(out, char_dataset, init_from='resume', **kw))
    assert rest['losses'] == {i: whole['losses'][i] for i in (6, 7, 8)}
    assert rest['evals'][8] == whole['evals'][8]
    # iterations 4 and 5 of the interrupted run are known from its metrics.jsonl (exact floats)
    logged = [json.loads(line) for line in open(os.path.join(out, 'metrics.jsonl'))]
    logged = [(e['iter'], e['loss']) for e in logged if e['event'] == 'iter']
    assert [i for i, _ in logged] == [0, 1, 2, 3, 4, 4, 5, 6, 7, 8]
    assert all(loss == whole['losses'][i] for i, loss in logged)


def test_second_signal_stops_at_once(char_dataset, tmp_path, monkeypatch):
    stop_at_fetch(monkeypatch, fetch=2, times=2)
    handler = signal.getsignal(signal.SIGTERM)
    with pytest.raises(KeyboardInterrupt):  # run_cli turns it into "interrupted", exit code 130
        train.main(tiny_args(str(tmp_path / 'out'), char_dataset))
    assert not os.path.exists(tmp_path / 'out' / 'last.pt')
    assert signal.getsignal(signal.SIGTERM) == handler  # train's handler is removed again


def test_given_settings_include_config_file_assignments(tmp_path):
    cfg = tmp_path / 'cfg.py'
    cfg.write_text("import math\nbatch_size = 4\nn_layer, n_head = 2, 2\nnot_a_setting = 1\nmax_iters += 0\n")
    assert train.given_settings([str(cfg), '--dropout=0.0'], train.DEFAULTS) == {'batch_size', 'n_layer', 'n_head', 'max_iters',
                                                                 'dropout'}


def test_find_resume_checkpoint_prefers_newer_and_names_a_damaged_one(tmp_path):
    def fake(iter_num):
        return {'model': {}, 'model_args': dict(n_layer=1, n_head=1, n_embd=8, block_size=8, bias=False,
                                                vocab_size=10), 'optimizer': {}, 'iter_num': iter_num,
                'best_val_loss': 1.0}
    checkpoint.save_checkpoint(fake(10), str(tmp_path / 'ckpt.pt'))
    checkpoint.save_checkpoint(fake(15), str(tmp_path / 'last.pt'))
    assert checkpoint.find_resume_checkpoint(str(tmp_path))['path'].endswith('last.pt')
    # eval_only re-evaluates the model that sample.py reads, not the newer last.pt
    assert checkpoint.find_resume_checkpoint(str(tmp_path), best=True)['path'].endswith('ckpt.pt')
    checkpoint.save_checkpoint(fake(20), str(tmp_path / 'ckpt.pt'))
    assert checkpoint.find_resume_checkpoint(str(tmp_path))['path'].endswith('ckpt.pt')
    (tmp_path / 'last.pt').write_bytes(b'PK\x03\x04 not a whole zip')
    with pytest.raises(UserError, match=r'last\.pt is not a loadable checkpoint.*delete it to resume from ckpt\.pt'):
        checkpoint.find_resume_checkpoint(str(tmp_path))


def test_init_source_names_what_init_from_means(tmp_path):
    """One answer for train.py, its settings check, sample.py and the memory check."""
    out = tmp_path / 'out-x'
    out.mkdir()
    hf = tmp_path / 'hf'
    hf.mkdir()
    assert checkpoint.init_source('scratch') == 'scratch' and checkpoint.init_source('resume') == 'resume'
    assert checkpoint.init_source(str(hf)) == 'hf'  # a directory without a checkpoint
    checkpoint.save_checkpoint({'iter_num': 1}, str(out / 'last.pt'))
    assert checkpoint.init_source(str(out)) == 'checkpoint' == checkpoint.init_source(str(out / 'last.pt'))
    assert checkpoint.init_source('gpt2-xl') == 'gpt2' and checkpoint.init_source('gtp2') is None


def test_settings_given_on_resume_win_even_when_default(char_dataset, tmp_path):
    """dropout=0.0 is the default, yet typed on the command line it replaces the stored 0.1."""
    out = str(tmp_path / 'out')
    train.main(tiny_args(out, char_dataset, max_iters=2, eval_interval=2, dropout=0.1))
    args = ['--init_from=resume', f'--out_dir={out}', '--max_iters=3', '--compile=False', '--device=cpu',
            '--dtype=float32']
    assert train.main(args)['config']['dropout'] == 0.1  # not given: the stored value
    assert train.main(args + ['--dropout=0.0'])['config']['dropout'] == 0.0


def test_resume_with_smaller_block_size_crops_the_optimizer_state(char_dataset, tmp_path):
    out = str(tmp_path / 'out')
    train.main(tiny_args(out, char_dataset, max_iters=2, eval_interval=2))
    train.main(tiny_args(out, char_dataset, init_from='resume', max_iters=4, eval_interval=2, block_size=16,
                         always_save_checkpoint=True))
    ckpt = torch.load(os.path.join(out, 'ckpt.pt'), weights_only=True)
    assert ckpt['iter_num'] == 4 and ckpt['model_args']['block_size'] == 16
    model = GPT(GPTConfig(**ckpt['model_args']))
    optimizer = model.configure_optimizers(0.1, 1e-3, (0.9, 0.95), 'cpu')
    params = [p for g in optimizer.param_groups for p in g['params']]
    for i, p in enumerate(params):  # the moments of the cropped position table were cropped with it
        assert ckpt['optimizer']['state'][i]['exp_avg'].shape == p.shape
        assert ckpt['optimizer']['state'][i]['exp_avg_sq'].shape == p.shape


# ---- signals and crashes in a real process ----------------------------------------------------------

def start_training(out, dataset, **kw):
    args = tiny_args(out, dataset, peak_flops=1e12, **kw)  # no matmul benchmark at start: a faster start
    return subprocess.Popen([sys.executable, 'train.py', *args], cwd=PROJECT, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env=dict(os.environ, PYTHONUNBUFFERED='1',
                                                                        **ONE_THREAD))


def read_until(proc, text):
    """Lines of the process's stdout up to the first containing `text` (or its end)."""
    lines = []
    for line in proc.stdout:
        lines.append(line)
        if text in line:
            break
    return lines


def test_sigint_stops_like_sigterm(char_dataset, tmp_path, monkeypatch):
    """Ctrl-C: the same clean stop as SIGTERM, exit code 130 (in-process; SIGTERM runs for real below)."""
    handler = signal.getsignal(signal.SIGINT)
    stop_at_fetch(monkeypatch, fetch=3, signum=signal.SIGINT)
    with pytest.raises(SystemExit) as stopped:
        train.main(tiny_args(str(tmp_path / 'out'), char_dataset))
    assert stopped.value.code == 130
    assert torch.load(tmp_path / 'out' / 'last.pt', weights_only=True)['iter_num'] == 2
    assert signal.getsignal(signal.SIGINT) == handler


def test_sigterm_saves_last_and_resume_continues(char_dataset, tmp_path):
    out = str(tmp_path / 'out')
    signum = signal.SIGTERM
    proc = start_training(out, char_dataset, max_iters=100000, eval_interval=100000)
    read_until(proc, 'iter 2:')
    proc.send_signal(signum)
    stdout, stderr = proc.communicate(timeout=60)
    assert proc.returncode == 128 + signum, stderr
    assert 'Traceback' not in stderr
    assert 'stopped by signal at iter' in stdout and '--init_from=resume' in stdout
    last = torch.load(os.path.join(out, 'last.pt'), weights_only=True)
    assert last['iter_num'] >= 3 and CKPT_KEYS <= set(last)
    assert not os.path.exists(os.path.join(out, 'ckpt.pt'))  # no evaluation after iter 0: no best yet
    stop = last['iter_num']
    r = run_script('train.py', '--init_from=resume', f'--out_dir={out}', f'--max_iters={stop + 1}',
                   '--compile=False', '--device=cpu', '--dtype=float32', env=ONE_THREAD)
    assert r.returncode == 0, r.stderr
    assert f'last.pt (iter {stop})' in r.stdout and f'iter {stop + 1}: loss' in r.stdout


def test_sigkill_at_random_moments_leaves_loadable_checkpoints(char_dataset, tmp_path):
    """Kill a run that saves at every iteration, again and again, while it writes; each time the
    checkpoints on disk load with weights_only=True and the next run resumes from them."""
    out = tmp_path / 'out'
    rng = random.Random(0)
    kw = dict(max_iters=100000, eval_interval=1, eval_iters=1, always_save_checkpoint=True,
              n_embd=64, lr_decay_iters=100000)
    last_iter = -1
    for kills in range(3):
        resume = (out / 'ckpt.pt').exists() or (out / 'last.pt').exists()
        proc = start_training(str(out), char_dataset, init_from='resume' if resume else 'scratch', **kw)
        for _ in range(2):  # the second line: the first save of this run is complete
            seen = read_until(proc, 'saving checkpoint')
            if not seen or 'saving checkpoint' not in seen[-1]:  # the run ended (a crash at start-up?) first
                proc.kill()
                stdout, stderr = proc.communicate()
                pytest.fail(f"run {kills} never saved a checkpoint:\n{''.join(seen)}{stdout}{stderr[-2000:]}")
        time.sleep(rng.uniform(0, 0.4))
        proc.kill()
        proc.communicate()
        pts = sorted(p.name for p in out.iterdir() if p.name.endswith('.pt'))
        assert set(pts) <= {'ckpt.pt', 'last.pt'}  # a temporary file never looks like a checkpoint
        assert 'ckpt.pt' in pts  # the first save was complete before the kill
        ckpt = torch.load(out / 'ckpt.pt', weights_only=True)
        assert CKPT_KEYS <= set(ckpt)
        assert ckpt['iter_num'] >= last_iter  # progress is never lost to a kill
        last_iter = ckpt['iter_num']
    final = run_script('train.py', '--init_from=resume', f'--out_dir={out}', f'--max_iters={last_iter + 1}',
                       '--compile=False', '--device=cpu', '--dtype=float32', env=ONE_THREAD)
    assert final.returncode == 0, final.stderr
    assert f'(iter {last_iter})' in final.stdout
    assert not [p.name for p in out.iterdir() if '.tmp' in p.name]  # stale temporary files cleaned up


def test_save_removes_temporary_files_of_dead_processes_only(tmp_path):
    dead = subprocess.Popen(['true'])
    dead.wait()
    stale, alive = tmp_path / f'.ckpt.pt.tmp{dead.pid}', tmp_path / f'.ckpt.pt.tmp{os.getppid()}'
    other = tmp_path / f'.last.pt.tmp{dead.pid}'  # another file's leftovers go with that file's next save
    for p in (stale, alive, other):
        p.write_bytes(b'half a checkpoint')
    checkpoint.save_checkpoint({'x': torch.zeros(2)}, str(tmp_path / 'ckpt.pt'))
    assert not stale.exists() and alive.exists() and other.exists()
    assert torch.equal(torch.load(tmp_path / 'ckpt.pt', weights_only=True)['x'], torch.zeros(2))


# ---- diverging runs ------------------------------------------------------------------------------------

def test_nonfinite_loss_stops_with_iteration_and_keeps_checkpoint(char_dataset, tmp_path):
    out = str(tmp_path / 'out')
    train.main(tiny_args(out, char_dataset, max_iters=4, eval_interval=2))
    before = sha(os.path.join(out, 'ckpt.pt'))
    # a huge learning rate: the step of iteration 4 overflows the activations, iteration 5's loss is nan
    r = run_script('train.py', *tiny_args(out, char_dataset, init_from='resume', max_iters=20, eval_interval=2,
                                          learning_rate=1e30, warmup_iters=0, lr_decay_iters=20, peak_flops=1e12),
                   env=ONE_THREAD)
    assert r.returncode == 2 and 'Traceback' not in r.stderr
    assert r.stderr.strip().count('\n') == 0
    assert r.stderr.startswith('error: loss is nan at iter 5: training diverged; ')
    # the last good checkpoint, and the command that continues from it at half the learning rate
    assert f'the last checkpoint, {out}/ckpt.pt (iteration 4), is untouched' in r.stderr
    assert r.stderr.rstrip().endswith(f'python train.py --init_from=resume --out_dir={out} --learning_rate=5e+29')
    assert sha(os.path.join(out, 'ckpt.pt')) == before
    assert not os.path.exists(os.path.join(out, 'last.pt'))
    # a new run that diverges before its first save: nothing to resume, so it starts again lower
    with pytest.raises(UserError, match=r'training diverged; no checkpoint was saved; start again with a '
                                        r'lower learning rate, e\.g\. --learning_rate=5e\+29$'):
        train.main(tiny_args(str(tmp_path / 'new'), char_dataset, learning_rate=1e30, warmup_iters=0))


def test_signal_after_divergence_writes_no_nonfinite_weights(char_dataset, tmp_path, monkeypatch):
    """The loss of a step is finite, the step itself makes the weights infinite, and a signal
    arrives before the next loss: the weights are checked before last.pt is written."""
    out = str(tmp_path / 'out')
    train.main(tiny_args(out, char_dataset, max_iters=4, eval_interval=2))
    before = sha(os.path.join(out, 'ckpt.pt'))
    stop_at_fetch(monkeypatch, fetch=2)  # during iteration 4: stop at the top of iteration 5
    with pytest.raises(UserError, match=rf'weights are not finite at iter 5 .*last\.pt was not written; the '
                                        rf'last checkpoint, {re.escape(out)}/ckpt\.pt \(iteration 4\), is untouched'):
        train.main(tiny_args(out, char_dataset, init_from='resume', max_iters=20, eval_interval=2,
                             learning_rate=1e39, warmup_iters=0, lr_decay_iters=20))
    assert sha(os.path.join(out, 'ckpt.pt')) == before
    assert not os.path.exists(os.path.join(out, 'last.pt'))


# ---- safe loading ------------------------------------------------------------------------------------

class _Planted:
    """Unpickling this calls os.system, which would create the file named in `path`."""

    def __init__(self, path):
        self.path = path

    def __reduce__(self):
        return (os.system, (f'touch {self.path}',))


def test_malicious_meta_pkl_is_refused_by_train_and_sample(char_dataset, tmp_path):
    out = str(tmp_path / 'out')
    train.main(tiny_args(out, char_dataset, max_iters=2, eval_interval=2))
    planted = tmp_path / 'PWNED'
    with open(os.path.join(char_dataset, 'meta.pkl'), 'wb') as f:
        pickle.dump({'vocab_size': 30, 'stoi': _Planted(planted), 'itos': {}}, f)
    r = run_script('sample.py', f'--out_dir={out}', '--device=cpu', '--num_samples=1', env=ONE_THREAD)
    assert r.returncode == 2 and 'Traceback' not in r.stderr, r.stderr
    assert 'refusing to load' in r.stderr and 'posix.system' in r.stderr and 'prepare.py' in r.stderr
    with pytest.raises(UserError, match=r'refusing to load .*meta\.pkl: it names posix\.system'):
        train.main(tiny_args(out, char_dataset))  # the same loader as in a subprocess, without the torch import
    assert not planted.exists()


def test_checkpoint_with_pickled_object_is_refused(char_dataset, tmp_path):
    out = tmp_path / 'out'
    out.mkdir()
    planted = tmp_path / 'PWNED'
    torch.save({'model': {}, 'model_args': {}, 'extra': _Planted(planted)}, out / 'ckpt.pt')
    r = run_script('sample.py', f'--out_dir={out}', '--device=cpu', env=ONE_THREAD)
    assert r.returncode == 2 and 'Traceback' not in r.stderr, r.stderr
    assert r.stderr.strip().count('\n') == 0
    assert 'refusing to load' in r.stderr and 'could run code' in r.stderr and 'posix.system' in r.stderr
    with pytest.raises(UserError, match=r'refusing to load .*ckpt\.pt: .*\(posix\.system\) that could run code'):
        train.main(tiny_args(str(out), char_dataset, init_from='resume'))
    assert not planted.exists()


# ---- the original nanoGPT's checkpoint format ----------------------------------------------------------

@pytest.fixture
def trained(char_dataset, tmp_path):
    out = str(tmp_path / 'trained')
    train.main(tiny_args(out, char_dataset, max_iters=4, eval_interval=2, dropout=0.1,
                         always_save_checkpoint=True))
    return out


def test_checkpoint_loads_with_the_original_loader(trained):
    """What nanoGPT's train.py (resume) and sample.py do with a ckpt.pt, with this project's GPT."""
    path = os.path.join(trained, 'ckpt.pt')
    checkpoint = torch.load(path, map_location='cpu')  # torch >= 2.6: weights_only=True by default
    assert_plain(checkpoint)
    assert set(checkpoint['model_args']) <= ORIGINAL_GPTCONFIG_FIELDS
    model = GPT(GPTConfig(**checkpoint['model_args']))
    state_dict = checkpoint['model']
    for k in list(state_dict):
        if k.startswith('_orig_mod.'):
            state_dict[k[len('_orig_mod.'):]] = state_dict.pop(k)
    model.load_state_dict(state_dict)
    assert checkpoint['iter_num'] == 4 and checkpoint['best_val_loss'] < 4
    optimizer = model.configure_optimizers(0.1, 1e-3, (0.9, 0.95), 'cpu')
    optimizer.load_state_dict(checkpoint['optimizer'])
    assert optimizer.state_dict()['state'][0]['exp_avg'].abs().sum() > 0
    assert os.path.isdir(checkpoint['config']['dataset'])  # sample.py finds meta.pkl through it


def original_format_checkpoint(dataset, out_dir, vocab_size):
    """A ckpt.pt as nanoGPT writes it on a GPU with compile: '_orig_mod.' keys, best_val_loss a
    0-d tensor, its own config dict, no rng or scaler."""
    torch.manual_seed(0)
    model_args = dict(n_layer=2, n_head=2, n_embd=32, block_size=32, bias=False, vocab_size=vocab_size,
                      dropout=0.0)
    model = GPT(GPTConfig(**model_args))
    optimizer = model.configure_optimizers(0.1, 1e-3, (0.9, 0.95), 'cpu')
    x = torch.randint(vocab_size, (2, 32))
    model(x, x)[1].backward()
    optimizer.step()
    config = dict(out_dir=out_dir, eval_interval=4, log_interval=1, eval_iters=2, eval_only=False,
                  always_save_checkpoint=False, init_from='scratch', wandb_log=False, wandb_project='owt',
                  wandb_run_name='gpt2', dataset=dataset, gradient_accumulation_steps=1, batch_size=4,
                  block_size=32, n_layer=2, n_head=2, n_embd=32, dropout=0.0, bias=False, learning_rate=1e-3,
                  max_iters=8, weight_decay=0.1, beta1=0.9, beta2=0.95, grad_clip=1.0, decay_lr=True,
                  warmup_iters=2, lr_decay_iters=8, min_lr=1e-4, backend='nccl', device='cuda',
                  dtype='bfloat16', compile=True)
    os.makedirs(out_dir)
    torch.save({'model': {'_orig_mod.' + k: v for k, v in model.state_dict().items()},
                'optimizer': optimizer.state_dict(), 'model_args': model_args, 'iter_num': 6,
                'best_val_loss': torch.tensor(9.5), 'config': config}, os.path.join(out_dir, 'ckpt.pt'))


def test_original_format_checkpoint_samples_and_resumes(char_dataset, tmp_path):
    out = str(tmp_path / 'orig')
    original_format_checkpoint(char_dataset, out, vocab_size=30)
    r = run_script('sample.py', f'--out_dir={out}', '--device=cpu', '--num_samples=1', '--max_new_tokens=5',
                   '--start=the', env=ONE_THREAD)
    assert r.returncode == 0, r.stderr
    assert r.stdout.count('---------------') == 1
    # device/dtype/compile stored as 'cuda'/'bfloat16'/True are chosen afresh here
    summary = train.main(['--init_from=resume', f'--out_dir={out}', '--device=cpu', '--compile=False',
                          '--dtype=float32'])
    assert sorted(summary['losses']) == [6, 7, 8] and summary['config']['compile'] is False
    assert summary['config']['dataset'] == char_dataset and summary['config']['batch_size'] == 4
    saved = torch.load(os.path.join(out, 'ckpt.pt'), weights_only=True)
    assert saved['iter_num'] == 8 and CKPT_KEYS <= set(saved)  # improved on 9.5: now a full checkpoint
