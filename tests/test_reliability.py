"""Checkpoints and resume: exact continuation after a stop (from ckpt.pt and from last.pt), the
random streams a checkpoint keeps (of the chosen GPU), signals, SIGKILL at random moments, diverging
runs, safe loading (files that are not checkpoints, pickles that would run code), and the original
nanoGPT's checkpoint format in both directions."""

import io
import json
import os
import pickle
import random
import re
import signal
import subprocess
import sys
import time
from types import SimpleNamespace

import pytest
import torch

from conftest import (ONE_THREAD, ORIGINAL_GPTCONFIG_FIELDS, Planted, assert_plain, read_until, run_script, sha,
                      start_training, tiny_args)
from nanogpt.errors import UserError
from model import GPT, GPTConfig
from nanogpt import checkpoint
from nanogpt import devices
from nanogpt.checkpoint import random_state_to_save
import sample
import train

pytestmark = pytest.mark.usefixtures('one_thread')

CKPT_KEYS = {'model', 'optimizer', 'model_args', 'iter_num', 'best_val_loss', 'config', 'rng'}


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


# ---- the random streams a checkpoint keeps ---------------------------------------------------------

def test_rng_state_reads_and_restores_the_chosen_gpu(monkeypatch):
    calls = []

    def cuda_get_rng_state(device='cuda'):
        calls.append(('get', str(device)))
        return torch.zeros(16, dtype=torch.uint8)

    def cuda_set_rng_state(new_state, device='cuda'):
        calls.append(('set', str(device)))
    monkeypatch.setattr(torch.cuda, 'get_rng_state', cuda_get_rng_state)
    monkeypatch.setattr(torch.cuda, 'set_rng_state', cuda_set_rng_state)
    cpu = torch.get_rng_state()
    masks = SimpleNamespace(state=lambda: None)
    state = random_state_to_save(cpu, SimpleNamespace(device_type='cuda', device='cuda:1'), masks)
    devices.set_random_state(state, 'cuda:1')
    assert calls == [('get', 'cuda:1'), ('set', 'cuda:1')]
    assert torch.equal(state['cpu'], cpu)


# ---- signals and crashes in a real process ----------------------------------------------------------

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

def test_malicious_meta_pkl_is_refused_by_train_and_sample(char_dataset, tmp_path):
    out = str(tmp_path / 'out')
    train.main(tiny_args(out, char_dataset, max_iters=2, eval_interval=2))
    planted = tmp_path / 'PWNED'
    with open(os.path.join(char_dataset, 'meta.pkl'), 'wb') as f:
        pickle.dump({'vocab_size': 30, 'stoi': Planted(planted), 'itos': {}}, f)
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
    torch.save({'model': {}, 'model_args': {}, 'extra': Planted(planted)}, out / 'ckpt.pt')
    r = run_script('sample.py', f'--out_dir={out}', '--device=cpu', env=ONE_THREAD)
    assert r.returncode == 2 and 'Traceback' not in r.stderr, r.stderr
    assert r.stderr.strip().count('\n') == 0
    assert 'refusing to load' in r.stderr and 'could run code' in r.stderr and 'posix.system' in r.stderr
    with pytest.raises(UserError, match=r'refusing to load .*ckpt\.pt: .*\(posix\.system\) that could run code'):
        train.main(tiny_args(str(out), char_dataset, init_from='resume'))
    assert not planted.exists()


def write_ckpt_bytes(tmp_path, data):
    """tmp_path/out/ckpt.pt holding these bytes; returns its path."""
    out = tmp_path / 'out'
    out.mkdir(exist_ok=True)
    (out / 'ckpt.pt').write_bytes(data)
    return str(out / 'ckpt.pt')


@pytest.mark.parametrize('data, shown', [
    (b'ROMEO: what light\nthrough yonder window\n', "(it starts with b'ROMEO: what "),
    (b'12345\n', "(it starts with b'12345\\n'"),
    (b'', '(the file is empty)'),
    (bytes(range(256)) * 4, "(it starts with b'\\x00\\x01"),
    (pickle.dumps({'model': {}, 'model_args': {}}), "(it starts with b'\\x80"),  # a pickle, not torch.save's zip
])
@pytest.mark.filterwarnings('ignore:Detected pickle protocol')  # torch's note on the bare pickle
def test_a_file_that_is_not_a_checkpoint_says_so(tmp_path, data, shown):
    path = write_ckpt_bytes(tmp_path, data)
    with pytest.raises(UserError) as e:
        checkpoint.load_checkpoint(path)
    message = str(e.value)
    assert message.startswith(f'{path} is not a checkpoint {shown}'), message
    assert '\n' not in message and 'could run code' not in message and 'refusing' not in message


def test_sample_on_a_text_ckpt_pt_says_not_a_checkpoint(tmp_path):
    path = write_ckpt_bytes(tmp_path, b'hello, this is a text file\n')
    with pytest.raises(UserError, match=r'ckpt\.pt is not a checkpoint \(it starts with'):
        sample.main(['--out_dir', os.path.dirname(path), '--device', 'cpu'])


def test_a_truncated_checkpoint_is_corrupt_not_malicious(tmp_path):
    buf = io.BytesIO()
    torch.save({'model': {'w': torch.zeros(64)}, 'model_args': {}}, buf)
    path = write_ckpt_bytes(tmp_path, buf.getvalue()[:-100])
    with pytest.raises(UserError, match=r'ckpt\.pt is not a loadable checkpoint \(truncated or corrupt\?\)') as e:
        checkpoint.load_checkpoint(path)
    assert 'could run code' not in str(e.value)


def test_a_pickle_that_runs_code_is_still_refused(tmp_path):
    planted = tmp_path / 'PWNED'
    buf = io.BytesIO()
    torch.save({'model': {}, 'model_args': {}, 'extra': Planted(planted)}, buf)
    path = write_ckpt_bytes(tmp_path, buf.getvalue())
    with pytest.raises(UserError, match=r'refusing to load .*ckpt\.pt: it holds a pickled Python object '
                                        r'\(posix\.system\) that could run code'):
        checkpoint.load_checkpoint(path)
    path = write_ckpt_bytes(tmp_path, pickle.dumps(Planted(planted), protocol=2))  # a bare pickle naming it too
    with pytest.raises(UserError, match=r'refusing to load .*\(posix\.system\) that could run code'):
        checkpoint.load_checkpoint(path)
    assert not planted.exists()


# ---- the original nanoGPT's checkpoint format ----------------------------------------------------------

@pytest.fixture
def trained_with_dropout(char_dataset, tmp_path):
    out = str(tmp_path / 'trained')
    train.main(tiny_args(out, char_dataset, max_iters=4, eval_interval=2, dropout=0.1,
                         always_save_checkpoint=True))
    return out


def test_checkpoint_loads_with_the_original_loader(trained_with_dropout):
    """What nanoGPT's train.py (resume) and sample.py do with a ckpt.pt, with this project's GPT."""
    path = os.path.join(trained_with_dropout, 'ckpt.pt')
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
