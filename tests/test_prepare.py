"""Tiny shakespeare ships with the project (data/tinyshakespeare.txt.gz): the prepare scripts make the
original's files from it on a clone with nothing beside it and no network, and a damaged copy is one
line naming the fix. Nothing in the project looks outside its own folder."""

import ast
import glob
import gzip
import hashlib
import os
import pickle
import re
import shutil

import numpy as np
import pytest

from conftest import NO_NETWORK, PROJECT, run_script

SHIPPED = os.path.join(PROJECT, 'data', 'tinyshakespeare.txt.gz')
SHA256 = '86c4e6aa9db7c042ec79f339dcb96d42b0075e16b8fc2e86bf0ca57e2dc565ed'  # char-rnn's input.txt


def make_clone(root):
    """The files prepare.py needs, copied as a fresh clone has them (no prepared data, nothing
    beside it) into root/clone; returns that folder."""
    clone = root / 'clone'
    made = shutil.ignore_patterns('__pycache__', '*.bin', 'meta.pkl', 'input.txt', 'readme.html', '*.tmp*')
    shutil.copytree(os.path.join(PROJECT, 'nanogpt'), clone / 'nanogpt', ignore=made)
    shutil.copytree(os.path.join(PROJECT, 'data'), clone / 'data', ignore=made)
    return clone


def prepare_char(clone, *args):
    return run_script(str(clone / 'data' / 'shakespeare_char' / 'prepare.py'), *args, cwd=str(clone), env=NO_NETWORK)


def test_the_shipped_copy_is_tiny_shakespeare():
    assert os.path.getsize(SHIPPED) < 450_000  # the repository stays small
    with gzip.open(SHIPPED, 'rb') as f:
        data = f.read()
    assert len(data) == 1_115_394 and hashlib.sha256(data).hexdigest() == SHA256
    assert data.startswith(b'First Citizen:\nBefore we proceed any further, hear me speak.')


def test_a_clone_without_network_prepares_the_original_files(tmp_path):
    clone = make_clone(tmp_path)
    r = prepare_char(clone)
    assert r.returncode == 0, r.stderr
    assert 'unpacked tiny shakespeare from data/tinyshakespeare.txt.gz' in r.stdout
    assert 'train has 1,003,854 tokens' in r.stdout and 'val has 111,540 tokens' in r.stdout
    out = clone / 'data' / 'shakespeare_char'
    assert sorted(os.listdir(out)) == ['input.txt', 'meta.pkl', 'prepare.py', 'train.bin', 'val.bin']
    assert hashlib.sha256((out / 'input.txt').read_bytes()).hexdigest() == SHA256
    train = np.fromfile(out / 'train.bin', dtype=np.uint16)
    val = np.fromfile(out / 'val.bin', dtype=np.uint16)
    meta = pickle.loads((out / 'meta.pkl').read_bytes())
    assert (len(train), len(val), meta['vocab_size']) == (1_003_854, 111_540, 65)
    assert ''.join(meta['itos'][int(i)] for i in train[:14]) == 'First Citizen:'
    assert sorted(os.listdir(tmp_path)) == ['clone']  # nothing written beside the clone
    # a second run keeps the verified input.txt
    r = prepare_char(clone)
    assert r.returncode == 0 and 'unpacked' not in r.stdout, r.stdout + r.stderr


def test_an_edited_input_txt_is_replaced_and_input_still_works(tmp_path):
    clone = make_clone(tmp_path)
    assert prepare_char(clone).returncode == 0
    text = clone / 'data' / 'shakespeare_char' / 'input.txt'
    good = tmp_path / 'mine.txt'
    shutil.copy(text, good)
    text.write_text('First Citizen:\nshort\n')
    (clone / 'data' / 'tinyshakespeare.txt.gz').unlink()  # so the text can come only from --input
    r = prepare_char(clone, f'--input={good}')
    assert r.returncode == 0, r.stderr
    assert "is not tiny shakespeare's input.txt" in r.stdout and 'val has 111,540 tokens' in r.stdout
    assert text.read_bytes() == good.read_bytes()


def damage(path, how):
    data = path.read_bytes()
    if how == 'missing':
        path.unlink()
    elif how == 'truncated':
        path.write_bytes(data[:len(data) // 2])
    elif how == 'a flipped byte':
        path.write_bytes(data[:200_000] + bytes([data[200_000] ^ 0xFF]) + data[200_001:])
    elif how == 'not gzip':
        path.write_bytes(b'version https://git-lfs.github.com/spec/v1\n')


@pytest.mark.parametrize('how', ['missing', 'truncated', 'a flipped byte', 'not gzip'])
def test_a_damaged_shipped_copy_is_one_line(tmp_path, how):
    clone = make_clone(tmp_path)
    damage(clone / 'data' / 'tinyshakespeare.txt.gz', how)
    r = prepare_char(clone)
    assert r.returncode == 2 and 'Traceback' not in r.stderr
    assert len(r.stderr.strip().splitlines()) == 1, r.stderr
    assert r.stderr.startswith('error: the shipped copy of tiny shakespeare, data/tinyshakespeare.txt.gz, is ')
    assert 'git checkout -- data/tinyshakespeare.txt.gz' in r.stderr and '--input=' in r.stderr
    assert sorted(os.listdir(clone / 'data' / 'shakespeare_char')) == ['prepare.py']  # nothing half-made


def test_no_python_file_names_a_path_outside_the_project():
    """No string in the project's Python climbs out of a folder ('..'), and the code outside tests/
    names no absolute path but the kernel's own (/proc, /sys): data comes from the project's folder,
    the command line or the environment, never from a folder that only some machines have."""
    climbing, absolute = [], []
    files = [f for pattern in ('*.py', 'nanogpt/**/*.py', 'data/**/*.py', 'config/*.py', 'tests/*.py')
             for f in glob.glob(os.path.join(PROJECT, pattern), recursive=True)]
    assert len(files) > 40
    for path in files:
        rel = os.path.relpath(path, PROJECT)
        with open(path, encoding='utf-8') as f:
            tree = ast.parse(f.read())
        in_fstrings = {id(v) for n in ast.walk(tree) if isinstance(n, ast.JoinedStr) for v in n.values}
        for node in ast.walk(tree):
            if not (isinstance(node, ast.Constant) and isinstance(node.value, str)):
                continue
            if os.pardir in node.value.replace('\\', '/').split('/'):
                climbing.append(f'{rel}:{node.lineno} {node.value!r}')
            if not rel.startswith('tests') and id(node) not in in_fstrings \
                    and re.match(r'/(?!proc/|sys/)[\w.-]+(/|$)', node.value):
                absolute.append(f'{rel}:{node.lineno} {node.value!r}')
    assert not climbing and not absolute, climbing + absolute
