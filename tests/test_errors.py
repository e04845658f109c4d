"""Bad input, one case per test: the real script stops with exit code 2 and a single `error:` line
that names the problem and the fix, never a traceback. Cases that share their check's code with
another case (marked IN_PROCESS) call main() in this process instead, which saves a torch import
each; the one-line printing itself is the same run_cli for all."""

import io
import os
import pickle
import subprocess
import sys

import numpy as np
import pytest
import torch

from nanogpt.errors import UserError
from conftest import ONE_THREAD, PROJECT, make_char_dataset, run_script, tiny_args
import sample
import train


IN_PROCESS = {'missing val.bin, named prepare script', 'empty file', 'meta.pkl not a pickle', 'block_size -1',
              'max_iters -1', 'eval_iters 0', 'gradient_accumulation_steps 0', 'empty lr decay span',
              'cuda absent', 'mps absent', 'out_dir in /proc', 'larger block_size', 'sample only last.pt',
              'sample truncated ckpt.pt', 'seed 2**64', 'init_from in its own out_dir', 'init_from with a larger block_size',
              'init_from a missing .pt', 'init_from a folder without a checkpoint'}


def check(case, script, args, expected):
    """Run `script args` (as a subprocess, or in-process for IN_PROCESS cases) and check the error."""
    if case in IN_PROCESS:
        main = train.main if script == 'train.py' else sample.main
        with pytest.raises(UserError) as e:
            main(args)
        assert '\n' not in str(e.value)
        for text in expected:
            assert text in str(e.value), (text, str(e.value))
    else:
        assert_one_line_error(run_script(script, *args, env=ONE_THREAD), *expected)


def assert_one_line_error(r, *expected):
    assert r.returncode == 2, (r.returncode, r.stderr[-2000:])
    assert 'Traceback' not in r.stderr
    lines = [line for line in r.stderr.splitlines() if line.strip()]
    errors = [line for line in lines if line.startswith('error: ')]
    assert len(errors) == 1, r.stderr
    for text in expected:
        assert text in errors[0], (text, errors[0])


@pytest.fixture(scope='module')
def dataset(tmp_path_factory):
    return make_char_dataset(tmp_path_factory.mktemp('data') / 'toy', n_chars=3000)


@pytest.fixture(scope='module')
def trained(dataset, tmp_path_factory):
    """A tiny run's out_dir with ckpt.pt (n_layer=2, block_size=32)."""
    out = str(tmp_path_factory.mktemp('trained') / 'out')
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # the suite shares few cores
    try:
        train.main(tiny_args(out, dataset, max_iters=2, eval_interval=2))
    finally:
        torch.set_num_threads(threads)
    return out


def broken_dataset(tmp_path, dataset, change):
    """A copy of the toy dataset with one thing broken by `change(directory)`."""
    d = tmp_path / 'broken'
    d.mkdir()
    for name in ('train.bin', 'val.bin', 'meta.pkl'):
        (d / name).write_bytes(open(os.path.join(dataset, name), 'rb').read())
    change(d)
    return str(d)


def write_meta(d, meta):
    with open(d / 'meta.pkl', 'wb') as f:
        pickle.dump(meta, f)


DATA_CASES = {
    'missing train.bin': (lambda d: (d / 'train.bin').unlink(),
                          ['missing', 'train.bin', 'python data/prepare_text.py <your text file> --dest=']),
    'missing val.bin, named prepare script': (lambda d: ((d / 'val.bin').unlink(), (d / 'prepare.py').touch()),
                                              ['missing', 'val.bin', 'prepare.py']),
    'odd length': (lambda d: open(d / 'train.bin', 'ab').write(b'\0'), ['odd length', 'train.bin']),
    'shorter than block_size+1': (lambda d: np.arange(32, dtype=np.uint16).tofile(d / 'val.bin'),
                                  ['holds 32 tokens', 'block_size+1 = 33', '--block_size']),
    'empty file': (lambda d: (d / 'train.bin').write_bytes(b''), ['holds 0 tokens']),
    'token id above vocab_size': (lambda d: np.full(100, 40, dtype=np.uint16).tofile(d / 'val.bin'),
                                  ['token id 40', 'vocab_size 30']),
    'meta.pkl missing keys': (lambda d: write_meta(d, {'vocab_size': 30, 'stoi': {}}), ["lacks key(s) ['itos']"]),
    'meta.pkl not a pickle': (lambda d: (d / 'meta.pkl').write_bytes(b'\x80\x04garbage'),
                              ['cannot read', 'meta.pkl', 'prepare.py']),
}


@pytest.mark.parametrize('case', list(DATA_CASES))
def test_bad_dataset(case, dataset, tmp_path):
    change, expected = DATA_CASES[case]
    d = broken_dataset(tmp_path, dataset, change)
    check(case, 'train.py', tiny_args(str(tmp_path / 'out'), d), expected)


SETTING_CASES = {
    'n_embd % n_head': ({'n_embd': 30, 'n_head': 4}, ['n_embd (30) must be divisible by n_head (4)', '--n_embd=32']),
    'batch_size 0': ({'batch_size': 0}, ['batch_size must be at least 1, got 0', '--batch_size=12']),
    'block_size -1': ({'block_size': -1}, ['block_size must be at least 1, got -1']),
    'max_iters -1': ({'max_iters': -1}, ['max_iters must be 0 or more, got -1']),
    'eval_iters 0': ({'eval_iters': 0}, ['eval_iters must be at least 1, got 0']),
    'gradient_accumulation_steps 0': ({'gradient_accumulation_steps': 0},
                                      ['gradient_accumulation_steps must be at least 1, got 0']),
    'empty lr decay span': ({'warmup_iters': 10, 'lr_decay_iters': 10},
                            ['lr_decay_iters (10) must be greater than warmup_iters (10)', '--decay_lr=False']),
    'unknown device': ({'device': 'tpu'}, ["unknown device 'tpu'", 'cpu, cuda']),
    'cuda absent': ({'device': 'cuda'}, ["'cuda' requested", '--device=cpu']),
    'mps absent': ({'device': 'mps'}, ["'mps' requested", '--device=cpu']),
    'out_dir under a file': ({'out_dir': '/etc/hostname/out'}, ['cannot write to out_dir', 'Not a directory']),
    'out_dir in /proc': ({'out_dir': '/proc/nanogpt-out'}, ['cannot write to out_dir', '/proc/nanogpt-out']),
    'seed 2**64': ({'seed': 2 ** 64}, ['seed must be an integer from 0 to 2**63-1, got 18446744073709551616']),
}


@pytest.mark.parametrize('case', list(SETTING_CASES))
def test_bad_setting(case, dataset, tmp_path):
    if case == 'cuda absent' and torch.cuda.is_available():
        pytest.skip('this machine has CUDA')
    if case == 'mps absent' and torch.backends.mps.is_available():
        pytest.skip('this machine has MPS')
    overrides, expected = SETTING_CASES[case]
    overrides = dict(overrides)
    overrides.setdefault('out_dir', str(tmp_path / 'out'))
    check(case, 'train.py', tiny_args(dataset=dataset, **overrides), expected)


def copy_out(trained, tmp_path, change=None):
    out = tmp_path / 'out'
    out.mkdir()
    data = open(os.path.join(trained, 'ckpt.pt'), 'rb').read()
    (out / 'ckpt.pt').write_bytes(change(data) if change else data)
    return str(out)


RESUME_CASES = {
    'no checkpoint': (None, {}, ['cannot resume: no ckpt.pt or last.pt in', '--init_from=scratch']),
    'truncated ckpt.pt': (lambda b: b[:len(b) // 2], {}, ['ckpt.pt is not a loadable checkpoint', 'truncated']),
    'model_args clash': (lambda b: b, {'n_layer': 3}, ['the checkpoint has n_layer=2 but n_layer=3 was given']),
    'larger block_size': (lambda b: b, {'block_size': 64}, ['cannot resume with block_size=64', '--block_size=32']),
    'max_iters already passed': (lambda b: b, {'max_iters': 1}, ['cannot resume with max_iters=1',
                                                                  'at iteration 2 already', '--eval_only=True']),
}


@pytest.mark.parametrize('case', list(RESUME_CASES))
def test_bad_resume(case, trained, dataset, tmp_path):
    change, overrides, expected = RESUME_CASES[case]
    out = copy_out(trained, tmp_path, change) if change else str(tmp_path)
    check(case, 'train.py', tiny_args(out, dataset, init_from='resume', **overrides), expected)


@pytest.mark.parametrize('case', ['no checkpoint', 'only last.pt', 'truncated ckpt.pt', 'weights do not fit'])
def test_sample_bad_checkpoint(case, trained, tmp_path):
    def shrink_model_args(data):
        ckpt = torch.load(io.BytesIO(data), weights_only=True)
        ckpt['model_args']['n_layer'] = 1
        buf = io.BytesIO()
        torch.save(ckpt, buf)
        return buf.getvalue()
    if case == 'no checkpoint':
        out, expected = str(tmp_path), ['no checkpoint at', 'python train.py']
    elif case == 'only last.pt':  # a run stopped before its first evaluation
        out = copy_out(trained, tmp_path)
        os.rename(os.path.join(out, 'ckpt.pt'), os.path.join(out, 'last.pt'))
        expected = ['holds only last.pt', f'python train.py --init_from=resume --out_dir={out}']
    elif case == 'truncated ckpt.pt':
        out, expected = copy_out(trained, tmp_path, lambda b: b[:-100]), ['not a loadable checkpoint']
    else:
        out, expected = copy_out(trained, tmp_path, shrink_model_args), ['do not fit', 'Unexpected key(s)']
    check(f'sample {case}', 'sample.py', [f'--out_dir={out}', '--device=cpu'], expected)


def test_full_disk_while_saving_keeps_the_previous_checkpoint(trained, dataset, tmp_path):
    """A file-size limit makes every write past 50 kB fail, as a full disk does."""
    resource = pytest.importorskip('resource')  # POSIX only
    out = copy_out(trained, tmp_path)
    before = open(os.path.join(out, 'ckpt.pt'), 'rb').read()

    def limit_file_size():
        resource.setrlimit(resource.RLIMIT_FSIZE, (50_000, 50_000))
    args = tiny_args(out, dataset, init_from='resume', max_iters=4, eval_interval=2, always_save_checkpoint=True)
    r = subprocess.run([sys.executable, 'train.py', *args], cwd=PROJECT, capture_output=True, text=True,
                       preexec_fn=limit_file_size, env=dict(os.environ, **ONE_THREAD), timeout=300)
    assert_one_line_error(r, f'cannot write checkpoint {out}/ckpt.pt', 'is intact', 'disk')
    assert open(os.path.join(out, 'ckpt.pt'), 'rb').read() == before
    # no temporary file left behind (train.lock is the out_dir lock's file, empty, which stays)
    assert sorted(os.listdir(out)) == ['ckpt.pt', 'metrics.jsonl', 'train.lock']


# ---- a negative seed, wandb missing, FSDP on an older torch: the commands as a user types them ----

def test_negative_seed_is_one_line(tmp_path):
    """numpy's generator (the CPU dropout masks) takes no negative seed: refused before anything runs."""
    r = run_script('train.py', 'config/train_shakespeare_char.py', '--seed=-1', f'--out_dir={tmp_path / "out"}',
                   env=ONE_THREAD)
    assert_one_line_error(r, 'seed must be an integer from 0 to 2**63-1, got -1', '--seed=1337')
    assert not (tmp_path / 'out').exists()


def test_wandb_log_without_wandb_warns_once_and_trains(dataset, tmp_path):
    """A directory on PYTHONPATH whose wandb package fails to import as an absent one does: the
    machine has no wandb, whatever this one has installed."""
    absent = tmp_path / 'site' / 'wandb'
    absent.mkdir(parents=True)
    (absent / '__init__.py').write_text("raise ModuleNotFoundError(\"No module named 'wandb'\", name='wandb')\n")
    out = tmp_path / 'out'
    r = run_script('train.py', *tiny_args(str(out), dataset, wandb_log=True, max_iters=2, eval_interval=2),
                   env=dict(ONE_THREAD, PYTHONPATH=str(tmp_path / 'site')))
    assert r.returncode == 0, r.stderr[-2000:]
    lines = [line for line in r.stderr.splitlines() if line.strip()]
    assert lines == ['warning: wandb_log=True but wandb is not installed: this run logs to metrics.jsonl only '
                     '(pip install wandb to log there too, or --wandb_log=False)'], r.stderr[-2000:]
    assert 'step 2: train loss' in r.stdout
    assert '"event": "eval", "iter": 2' in (out / 'metrics.jsonl').read_text()


def test_fsdp_on_a_torch_before_2_6_is_one_line(dataset, tmp_path):
    """train.py's own __main__, run by a Python whose torch says it is 2.5.1 (fully_shard is public
    from 2.6), as process 0 of a torchrun job: refused before the process group is joined."""
    args = tiny_args(str(tmp_path / 'out'), dataset, fsdp=True)
    code = ("import runpy, sys, torch; from torch.torch_version import TorchVersion; "
            f"torch.__version__ = TorchVersion('2.5.1'); sys.argv = {['train.py', *args]!r}; "
            "runpy.run_path('train.py', run_name='__main__')")
    r = run_script('-c', code, env=dict(ONE_THREAD, RANK='0', LOCAL_RANK='0', WORLD_SIZE='2'))
    assert_one_line_error(r, 'fsdp=True needs torch 2.6 or later', 'this is torch 2.5.1', "pip install 'torch>=2.6'",
                          '--fsdp=False')
def swap_two_characters(d):
    """The same characters, two of them numbered the other way round: another vocabulary."""
    with open(d / 'meta.pkl', 'rb') as f:
        meta = pickle.load(f)
    a, b = meta['itos'][3], meta['itos'][5]
    meta['itos'][3], meta['itos'][5], meta['stoi'][a], meta['stoi'][b] = b, a, 5, 3
    write_meta(d, meta)


INIT_FROM_CASES = {  # train.py --init_from=<a checkpoint or out_dir>: what does not fit is one line
    'init_from another vocabulary': (
        lambda t, d, tmp: (t, dict(dataset=broken_dataset(tmp, d, swap_two_characters))),
        ['does not number its tokens as', 'is token 5 here and 3 there', 'python data/prepare_text.py', '--vocab=']),
    'init_from in its own out_dir': (lambda t, d, tmp: (os.path.join(t, 'ckpt.pt'), dict(out_dir=t)),
                                     ['is in out_dir', 'another --out_dir', '--init_from=resume']),
    'init_from with a larger block_size': (lambda t, d, tmp: (t, dict(block_size=64)),
                                           ['block_size=64 is more than the 32 positions', '--block_size=32']),
    'init_from a missing .pt': (lambda t, d, tmp: (str(tmp / 'nope.pt'), {}), ['no checkpoint at', 'nope.pt']),
    'init_from a folder without a checkpoint': (lambda t, d, tmp: (str(tmp), {}),
                                                ['a folder with no ckpt.pt or last.pt', 'no config.json']),
}


@pytest.mark.parametrize('case', list(INIT_FROM_CASES))
def test_bad_init_from_checkpoint(case, trained, dataset, tmp_path):
    make, expected = INIT_FROM_CASES[case]
    init_from, overrides = make(trained, dataset, tmp_path)
    overrides.setdefault('out_dir', str(tmp_path / 'new'))
    overrides.setdefault('dataset', dataset)
    check(case, 'train.py', tiny_args(init_from=init_from, **overrides), expected)
    if case == 'init_from in its own out_dir':
        assert sorted(os.listdir(trained)) == ['ckpt.pt', 'metrics.jsonl', 'train.lock']  # nothing written over
