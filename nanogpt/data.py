"""
Datasets and tokenizers: where data/<dataset> lives, checked memory-maps of train.bin / val.bin
(train.py's get_batch draws its windows from them), meta.pkl read with a restricted unpickler, and
the character or GPT-2 BPE tokenizer that belongs to a checkpoint. Used by train.py and sample.py.
"""

import os
import pickle

import numpy as np

from .errors import UserError

PROJECT_DIR = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))  # data/ is here, whatever the working directory


def dataset_dir(dataset):
    """data/<dataset> inside the project (whatever the working directory), or a directory path."""
    if os.sep in dataset or '/' in dataset or dataset.startswith('.'):
        return os.path.abspath(dataset)
    return os.path.join(PROJECT_DIR, 'data', dataset)


class _RefusedGlobal(pickle.UnpicklingError):
    pass


class _PlainUnpickler(pickle.Unpickler):
    """Accepts only dicts, lists, tuples, strings, numbers, booleans and None: a pickle that names
    any class or function (the way pickles run code) is refused before anything is called."""

    def find_class(self, module, name):
        raise _RefusedGlobal(f"{module}.{name}")

    def persistent_load(self, pid):
        raise _RefusedGlobal(f"persistent id {pid!r}")


def load_meta(path):
    """Read a meta.pkl safely and check it has what a character tokenizer needs."""
    try:
        with open(path, 'rb') as f:
            meta = _PlainUnpickler(f).load()
    except _RefusedGlobal as e:
        raise UserError(f"refusing to load {path}: it names {e}, and a pickle that names code can run "
                        f"it; a meta.pkl holds only plain data. Delete it and re-run the dataset's "
                        f"prepare.py") from None
    except Exception as e:
        raise UserError(f"cannot read {path} (truncated or not a pickle?): {type(e).__name__}: "
                        f"{str(e)[:200]}; re-run the dataset's prepare.py") from None
    if not isinstance(meta, dict):
        raise UserError(f"{path} must hold a dict, found {type(meta).__name__}: re-run the dataset's prepare.py")
    missing = [k for k in ('vocab_size', 'stoi', 'itos') if k not in meta]
    if missing:
        # a BPE dataset may record only vocab_size; a char tokenizer needs all three
        if missing != ['stoi', 'itos'] or not isinstance(meta.get('vocab_size'), int):
            raise UserError(f"{path} lacks key(s) {missing}: re-run the dataset's prepare.py")
    vocab_size = meta.get('vocab_size')
    if not isinstance(vocab_size, int) or isinstance(vocab_size, bool) or vocab_size < 1:
        raise UserError(f"{path}: vocab_size must be a positive int, found {vocab_size!r}")
    for k in ('stoi', 'itos'):
        if k in meta and not isinstance(meta[k], dict):
            raise UserError(f"{path}: {k} must be a dict, found {type(meta[k]).__name__}; "
                            f"re-run the dataset's prepare.py")
    return meta


class Tokenizer:
    """encode(str) -> list[int], decode(list[int]) -> str, from meta.pkl (characters) or GPT-2 BPE."""

    def __init__(self, meta=None, meta_path=None):
        self.meta_path = meta_path
        if meta is not None and 'stoi' in meta:
            self.kind = 'char'
            self.stoi, self.itos = meta['stoi'], meta['itos']
            self.vocab_size = meta['vocab_size']
            self.eot = None
        else:
            import tiktoken
            enc = tiktoken.get_encoding('gpt2')
            self.kind = 'gpt2'
            self.enc = enc
            self.vocab_size = enc.n_vocab
            self.eot = enc.eot_token

    def encode(self, s):
        if self.kind == 'gpt2':
            return self.enc.encode(s, allowed_special={'<|endoftext|>'})
        unknown = sorted({c for c in s if c not in self.stoi})
        if unknown:
            raise UserError(f"prompt has character(s) not in the vocabulary of {self.meta_path}: "
                            f"{', '.join(repr(c) for c in unknown)}")
        return [self.stoi[c] for c in s]

    def decode(self, ids):
        if self.kind == 'gpt2':
            return self.enc.decode(ids)
        return ''.join(self.itos[i] for i in ids)

    def decode_bytes(self, ids):
        """Raw bytes of tokens, for streaming BPE output without splitting UTF-8 characters."""
        if self.kind == 'gpt2':
            return self.enc.decode_bytes(ids)
        return self.decode(ids).encode('utf-8')


def tokenizer_for_dataset(dataset):
    """The dataset's meta.pkl tokenizer when it exists, else GPT-2 BPE; prints which (as nanoGPT does)."""
    if dataset:
        meta_path = os.path.join(dataset_dir(dataset), 'meta.pkl')
        if os.path.exists(meta_path):
            shown = meta_path if dataset_dir(dataset) == os.path.abspath(dataset) else f"data/{dataset}/meta.pkl"
            print(f"Loading meta from {shown}...")
            meta = load_meta(meta_path)
            return Tokenizer(meta, meta_path)
    print("No meta.pkl found, assuming GPT-2 encodings...")
    return Tokenizer()


def meta_vocab_size(data_dir):
    """The vocab_size in data_dir/meta.pkl, None without one (GPT-2's vocabulary)."""
    meta_path = os.path.join(data_dir, 'meta.pkl')
    if not os.path.exists(meta_path):
        return None
    vocab_size = load_meta(meta_path)['vocab_size']
    print(f"found vocab_size = {vocab_size} (inside {meta_path})")
    return vocab_size


def prepare_hint(dataset):
    script = os.path.join(dataset_dir(dataset), 'prepare.py')
    if os.path.exists(script):
        return f"python {os.path.relpath(script)}"
    if dataset_dir(dataset) == os.path.abspath(dataset):  # a directory path, not a name
        return f"python data/prepare_text.py <your text file> --dest={dataset}"
    return f"python data/prepare_text.py <your text file> --name={dataset}"


def open_split(data_dir, split, dataset, block_size, vocab_size):
    """Memory-map data/<dataset>/<split>.bin (uint16 token ids) after checking it is usable."""
    path = os.path.join(data_dir, f'{split}.bin')
    if not os.path.exists(path):
        raise UserError(f"missing {path}: prepare the dataset first with: {prepare_hint(dataset)}")
    size = os.path.getsize(path)
    if size % 2:
        raise UserError(f"{path} has an odd length ({size} bytes): it is not uint16 tokens "
                        f"(truncated?); re-run {prepare_hint(dataset)}")
    if size // 2 < block_size + 1:  # checked before mapping: numpy cannot map an empty file
        raise UserError(f"{path} holds {size // 2} tokens, fewer than block_size+1 = {block_size + 1}: "
                        f"use a smaller --block_size or more data")
    data = np.memmap(path, dtype=np.uint16, mode='r')
    # full scan for small files, a strided sample for huge ones (openwebtext is 9B tokens)
    top = int(data.max()) if len(data) <= 200_000_000 else int(data[::997].max())
    if top >= vocab_size:
        raise UserError(f"{path} contains token id {top}, not below the model's vocab_size {vocab_size}: "
                        f"the data and meta.pkl / vocab_size do not match; re-run {prepare_hint(dataset)}")
    return data
