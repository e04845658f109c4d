"""Shared test fixtures: a small synthetic character dataset, tiny-model settings, and a runner for
the real scripts as subprocesses. Nothing here touches the network."""

import os
import pickle
import subprocess
import sys

import numpy as np
import pytest

PROJECT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, PROJECT)


# torch.compile's inductor (torch 2.13) imports torch.utils.mkldnn, whose modules still use
# torch.jit.script_method: the warning is torch's own code warning about itself, once per decorator
# (14), at the suite's first compile; this project compiles with torch.compile, as the warning asks
TORCH_OWN_WARNINGS = ("ignore:`torch.jit.script_method` is deprecated:DeprecationWarning",)


def pytest_configure(config):
    for line in TORCH_OWN_WARNINGS:
        config.addinivalue_line("filterwarnings", line)


def make_char_dataset(path, n_chars=20000, seed=0):
    """A learnable toy corpus (repeated words over a small alphabet) written as train.bin, val.bin
    and meta.pkl in the nanoGPT format. Returns the directory."""
    rng = np.random.default_rng(seed)
    words = ['the', 'king', 'and', 'queen', 'of', 'rome', 'speak', 'now', 'ROMEO:', 'JULIET:']
    text = ''
    while len(text) < n_chars:
        text += ' '.join(rng.choice(words, size=8)) + '\n'
    chars = sorted(set(text))
    stoi = {c: i for i, c in enumerate(chars)}
    itos = {i: c for i, c in enumerate(chars)}
    ids = np.array([stoi[c] for c in text], dtype=np.uint16)
    cut = int(0.9 * len(ids))
    os.makedirs(path, exist_ok=True)
    ids[:cut].tofile(os.path.join(path, 'train.bin'))
    ids[cut:].tofile(os.path.join(path, 'val.bin'))
    with open(os.path.join(path, 'meta.pkl'), 'wb') as f:
        pickle.dump({'vocab_size': len(chars), 'itos': itos, 'stoi': stoi}, f)
    return str(path)


@pytest.fixture(autouse=True, scope='session')
def private_cache(tmp_path_factory):
    """dtype=auto measurements (autotune.py) are cached in a directory of the test session's own,
    never in the user's ~/.cache; subprocesses inherit it through the environment."""
    old = os.environ.get('NANOGPT_CACHE_DIR')
    os.environ['NANOGPT_CACHE_DIR'] = str(tmp_path_factory.mktemp('nanogpt-cache'))
    yield
    if old is None:
        os.environ.pop('NANOGPT_CACHE_DIR', None)
    else:
        os.environ['NANOGPT_CACHE_DIR'] = old


@pytest.fixture
def char_dataset(tmp_path):
    return make_char_dataset(tmp_path / 'toy')


def tiny_args(out_dir, dataset, **overrides):
    """train.py arguments for a model that trains in well under a second per iteration."""
    settings = dict(dataset=dataset, out_dir=out_dir, n_layer=2, n_head=2, n_embd=32, block_size=32,
                    batch_size=4, gradient_accumulation_steps=1, max_iters=10, eval_interval=5, eval_iters=2, log_interval=1,
                    warmup_iters=2, lr_decay_iters=10, learning_rate=1e-3, dropout=0.0,
                    compile=False, device='cpu', dtype='float32', always_save_checkpoint=False)
    settings.update(overrides)
    return [f'--{k}={v}' for k, v in settings.items()]


# no network for a script: a download through these proxies fails at once
NO_NETWORK = {'HTTPS_PROXY': 'http://127.0.0.1:9', 'HTTP_PROXY': 'http://127.0.0.1:9', 'NO_PROXY': ''}


def run_script(*args, cwd=PROJECT, timeout=300, env=None):
    """Run `python <args>` the way a user would; returns the CompletedProcess (text mode). A
    command that names no --device sees no CUDA GPU, so that it runs, and compares, as on the
    CPU-only machines the suite is written for (tests/test_cuda.py names --device=cuda)."""
    full_env = dict(os.environ, PYTHONUNBUFFERED='1', **(env or {}))
    if not any(str(a).startswith('--device') for a in args) and 'CUDA_VISIBLE_DEVICES' not in (env or {}):
        full_env['CUDA_VISIBLE_DEVICES'] = ''
    return subprocess.run([sys.executable, *args], cwd=cwd, capture_output=True, text=True,
                          timeout=timeout, env=full_env)
