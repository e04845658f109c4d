"""
Turn any UTF-8 text file into a dataset that train.py and sample.py can use.

    python data/prepare_text.py my_novel.txt                 # -> data/my_novel/ (characters)
    python data/prepare_text.py my_novel.txt --name=novel --bpe   # GPT-2 BPE tokens instead
    python train.py config/train_shakespeare_char_cpu.py --dataset=novel --out_dir=out-novel
    python sample.py --out_dir=out-novel

Writes data/<name>/train.bin and val.bin (uint16 token ids; the first 90% of the text trains, the
last 10% validates) and meta.pkl (vocab_size, and for characters the stoi/itos maps). Every file
is written to a temporary name and renamed, so an interrupted run never leaves a file that looks
complete. The helpers here are shared by the data/*/prepare.py scripts.
"""

import argparse
import hashlib
import os
import pickle
import sys

import numpy as np

DATA_DIR = os.path.dirname(os.path.abspath(__file__))


class PrepareError(Exception):
    """A one-line problem for the user (missing input, no network, bad file)."""


def progress(iterable=None, **kw):
    """tqdm when installed, else the bare iterable: progress bars are optional."""
    try:
        from tqdm import tqdm
        return tqdm(iterable, **kw)
    except ImportError:
        return iterable if iterable is not None else _NoBar()


class _NoBar:
    def update(self, n):
        pass

    def close(self):
        pass


def atomic_write(path, write):
    """Call write(file) on a temporary file next to `path`, fsync, then rename it into place."""
    tmp = f"{path}.tmp{os.getpid()}"
    try:
        with open(tmp, 'wb') as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def sha256_of(path):
    h = hashlib.sha256()
    with open(path, 'rb') as f:
        for chunk in iter(lambda: f.read(1 << 20), b''):
            h.update(chunk)
    return h.hexdigest()


def fetch(url, path, sha256=None, size=None, local_copies=()):
    """Make sure `path` holds the file at `url`, checked by size and sha256 when given.
    Uses an existing good file or a local copy first; downloads (with a progress bar) otherwise."""
    def good(p):
        return os.path.isfile(p) and (size is None or os.path.getsize(p) == size) \
            and (sha256 is None or sha256_of(p) == sha256)

    if os.path.exists(path):
        if good(path):
            return path
        print(f"{path} does not match the expected size/sha256; fetching it again")
    for p in local_copies:
        if good(p):
            print(f"using local copy {p}")
            with open(p, 'rb') as src:
                data = src.read()
            atomic_write(path, lambda f: f.write(data))
            return path
    import requests
    try:
        with requests.get(url, stream=True, timeout=30) as r:
            r.raise_for_status()
            total = int(r.headers.get('content-length', 0)) or size
            bar = progress(total=total, unit='B', unit_scale=True, desc=f"downloading {os.path.basename(path)}")

            def write(f):
                for chunk in r.iter_content(1 << 16):
                    f.write(chunk)
                    bar.update(len(chunk))
            atomic_write(path, write)
            bar.close()
    except requests.RequestException as e:
        raise PrepareError(f"cannot download {url} ({type(e).__name__}); without network, put the file at "
                           f"{path} or pass --input=PATH") from None
    if not good(path):
        os.remove(path)
        raise PrepareError(f"the file downloaded from {url} failed its size/sha256 check")
    return path


TINY_SHAKESPEARE_URL = 'https://raw.githubusercontent.com/karpathy/char-rnn/master/data/tinyshakespeare/input.txt'
TINY_SHAKESPEARE_SHA256 = '86c4e6aa9db7c042ec79f339dcb96d42b0075e16b8fc2e86bf0ca57e2dc565ed'
TINY_SHAKESPEARE_SIZE = 1115394  # characters and bytes: the corpus is ASCII


def fetch_tiny_shakespeare(path, user_copy=None):
    """The char-rnn tiny shakespeare input.txt at `path`, verified. Before downloading, looks at
    `user_copy` (--input), the other shakespeare dataset folders, and a shared data folder beside
    the project (where machines without internet keep a copy)."""
    here = os.path.dirname(os.path.abspath(path))
    copies = ((user_copy,) if user_copy else ()) + tuple(
        os.path.join(DATA_DIR, d, 'input.txt') for d in ('shakespeare_char', 'shakespeare')
        if os.path.join(DATA_DIR, d) != here) + (
        os.path.join(DATA_DIR, '..', '..', 'shared', 'data', 'tinyshakespeare', 'input.txt'),)
    return fetch(TINY_SHAKESPEARE_URL, path, TINY_SHAKESPEARE_SHA256, TINY_SHAKESPEARE_SIZE, local_copies=copies)


def read_text(path):
    try:
        with open(path, 'r', encoding='utf-8') as f:
            return f.read()
    except FileNotFoundError:
        raise PrepareError(f"input file not found: {path}") from None
    except UnicodeDecodeError as e:
        raise PrepareError(f"{path} is not UTF-8 text (byte {e.start}): convert it first") from None


def encode_chars(text):
    """Character-level vocabulary: the sorted set of characters; returns (ids, meta)."""
    chars = sorted(set(text))
    if len(chars) > 65535:
        raise PrepareError(f"{len(chars)} distinct characters do not fit uint16 token ids")
    stoi = {ch: i for i, ch in enumerate(chars)}
    itos = {i: ch for i, ch in enumerate(chars)}
    ids = np.array([stoi[c] for c in text], dtype=np.uint16)
    return ids, {'vocab_size': len(chars), 'itos': itos, 'stoi': stoi}


def encode_gpt2(text):
    """GPT-2 BPE with tiktoken; returns (ids, meta) where meta records only the vocab size."""
    import tiktoken
    enc = tiktoken.get_encoding('gpt2')
    ids = np.array(enc.encode_ordinary(text), dtype=np.uint16)
    return ids, {'vocab_size': enc.n_vocab, 'tokenizer': 'gpt2'}


def write_split_dataset(out_dir, ids, meta, val_fraction=0.1):
    """First 1-val_fraction of `ids` to train.bin, the rest to val.bin, plus meta.pkl."""
    os.makedirs(out_dir, exist_ok=True)
    n = len(ids)
    cut = int(n * (1 - val_fraction))
    train_ids, val_ids = ids[:cut], ids[cut:]
    print(f"train has {len(train_ids):,} tokens")
    print(f"val has {len(val_ids):,} tokens")
    atomic_write(os.path.join(out_dir, 'train.bin'), lambda f: f.write(train_ids.tobytes()))
    atomic_write(os.path.join(out_dir, 'val.bin'), lambda f: f.write(val_ids.tobytes()))
    if 'stoi' in meta:  # only plain dicts of ints and strings: loadable by a restricted unpickler
        atomic_write(os.path.join(out_dir, 'meta.pkl'), lambda f: pickle.dump(meta, f))
    else:
        atomic_write(os.path.join(out_dir, 'meta.pkl'),
                     lambda f: pickle.dump({'vocab_size': meta['vocab_size']}, f))
    return train_ids, val_ids


def prepare_text(text, out_dir, bpe=False):
    """Encode `text` (characters, or GPT-2 BPE with bpe=True) into out_dir."""
    print(f"length of dataset in characters: {len(text):,}")
    if not text:
        raise PrepareError("the input text is empty")
    ids, meta = encode_gpt2(text) if bpe else encode_chars(text)
    if not bpe:
        print("all the unique characters:", ''.join(meta['itos'][i] for i in range(meta['vocab_size'])))
    print(f"vocab size: {meta['vocab_size']:,}")
    if len(ids) < 20:
        raise PrepareError(f"the input has only {len(ids)} tokens: too little to split into train and val")
    return write_split_dataset(out_dir, ids, meta)


def main(argv=None):
    p = argparse.ArgumentParser(description="Turn a UTF-8 text file into data/<name>/ for train.py.")
    p.add_argument('input', help="the text file")
    p.add_argument('--name', help="dataset name (default: the file name without extension)")
    p.add_argument('--bpe', action='store_true', help="GPT-2 BPE tokens instead of characters")
    p.add_argument('--dest', help="write the dataset to this directory instead of data/<name>; "
                                  "train with --dataset=<that directory>")
    args = p.parse_args(argv)
    name = args.name or os.path.splitext(os.path.basename(args.input))[0]
    if not name or os.sep in name or name.startswith('.'):
        raise PrepareError(f"invalid dataset name {name!r}: use a plain folder name, e.g. --name=mytext")
    out_dir = os.path.abspath(args.dest) if args.dest else os.path.join(DATA_DIR, name)
    prepare_text(read_text(args.input), out_dir, bpe=args.bpe)
    dataset = out_dir if args.dest else name
    print(f"wrote {out_dir}; train with: python train.py config/train_shakespeare_char_cpu.py "
          f"--dataset={dataset} --out_dir=out-{name}")


def run(main_fn):
    """Run a prepare script's main with one-line errors (exit 2) instead of tracebacks."""
    try:
        main_fn()
    except PrepareError as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)
    except KeyboardInterrupt:
        print("interrupted; no partial files were left behind", file=sys.stderr)
        sys.exit(130)


if __name__ == '__main__':
    run(main)
