"""
Datasets and tokenizers: where data/<dataset> lives, checked memory-maps of train.bin / val.bin
(train.py's get_batch draws its windows from them), meta.pkl read with a restricted unpickler, the
tokenizer that belongs to a model (a character vocabulary, or a tiktoken encoding such as GPT-2
BPE), and text files read with one-line reasons when they are not text. Used by train.py,
sample.py and the data/ prepare scripts.

What the token ids of a dataset mean is said by its meta.pkl:
    {'vocab_size': 65, 'stoi': {...}, 'itos': {...}}    characters (or any strings: stoi/itos)
    {'vocab_size': 50257, 'tokenizer': 'gpt2'}          a tiktoken encoding, by name
    {'vocab_size': N}                                   ids of a tokenizer it does not name
    no meta.pkl                                         GPT-2 BPE (nanoGPT's rule)
A character meta.pkl may also name the 'separator' that data/prepare_text.py put between documents.
"""

import os
import pickle

import numpy as np

from .errors import UserError, warn_once
from .shell import command, quote

_PROJECT_DIR = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))  # data/ is here, whatever the working directory
GPT2_VOCAB = 50257  # GPT-2 BPE's tokens
GPT2_PADDED_VOCAB = 50304  # GPT-2's vocabulary padded up to a multiple of 64: a model trained without meta.pkl
_IDS_HINT = "--tokens=True --start=IDS:0"  # sample.py without a tokenizer: token ids in, token ids out


def dataset_dir(dataset):
    """data/<dataset> inside the project (whatever the working directory), or a directory path."""
    if os.sep in dataset or '/' in dataset or dataset.startswith('.'):
        return os.path.abspath(dataset)
    return os.path.join(_PROJECT_DIR, 'data', dataset)


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
    """Read a meta.pkl safely and check its entries: vocab_size, and stoi and itos together, or
    neither (a tiktoken encoding named by 'tokenizer', or ids of an unnamed tokenizer)."""
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
    for k in ('tokenizer', 'separator'):
        if k in meta and not isinstance(meta[k], str):
            raise UserError(f"{path}: {k} must be a string, found {type(meta[k]).__name__}")
    missing = [k for k in ('vocab_size', 'stoi', 'itos') if k not in meta]
    if missing:
        # without a vocabulary of its own a meta.pkl holds vocab_size (and a tokenizer's name)
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


def read_text_file(path):
    """(text, None) for a UTF-8 text file, else (None, why not): a folder, an unreadable file, a
    binary one (NUL bytes, which text never holds; UTF-16 text has them too) or bytes that are not
    UTF-8. Line ends are read as open()'s text mode reads them ('\r\n' and '\r' become '\n')."""
    try:
        with open(path, 'rb') as f:
            data = f.read()
    except FileNotFoundError:
        return None, "does not exist"
    except IsADirectoryError:
        return None, "is a folder, not a text file"
    except OSError as e:
        return None, f"cannot be read ({e.strerror})"
    if b'\0' in data:
        return None, "is a binary file (it holds NUL bytes), not UTF-8 text"
    try:
        text = data.decode('utf-8')
    except UnicodeDecodeError as e:
        return None, f"is not UTF-8 text (byte {e.start})"
    return text.replace('\r\n', '\n').replace('\r', '\n'), None


def tiktoken_encoding(name):
    """tiktoken's encoding `name`, with one-line errors. tiktoken downloads an encoding's files the
    first time and caches them (TIKTOKEN_CACHE_DIR, else a folder in the system's temp dir)."""
    try:
        import tiktoken
    except ImportError:
        raise UserError(f"the {name!r} tokenizer needs the tiktoken package: pip install tiktoken") from None
    if name not in tiktoken.list_encoding_names():
        raise UserError(f"unknown tiktoken encoding {name!r}: tiktoken knows "
                        f"{', '.join(tiktoken.list_encoding_names())}")
    try:
        return tiktoken.get_encoding(name)
    except Exception as e:  # requests' errors offline, a failed hash check, a cache it cannot write
        raise UserError(f"cannot load tiktoken's {name!r} encoding ({type(e).__name__}): tiktoken downloads "
                        f"its files once, so connect to the network and run again, or copy a tiktoken cache "
                        f"from a machine that has one and set TIKTOKEN_CACHE_DIR to it") from None


class Tokenizer:
    """encode(str) -> list[int], decode(list[int]) -> str, from a meta.pkl's stoi/itos or a tiktoken
    encoding (meta['tokenizer'], GPT-2 BPE without a meta). `eot`: the id a sample may start from
    when the prompt is empty (<|endoftext|>, or the character separator between documents)."""

    def __init__(self, meta=None, meta_path=None):
        self.meta_path = meta_path
        if meta is not None and 'stoi' in meta:
            self.kind = 'char'
            self.stoi, self.itos = meta['stoi'], meta['itos']
            self.vocab_size = meta['vocab_size']
            missing = [i for i in range(self.vocab_size) if i not in self.itos]
            if missing:
                raise UserError(f"{meta_path}: itos has no entry for token id {missing[0]} (vocab_size "
                                f"{self.vocab_size}); re-run the dataset's prepare.py")
            self.longest = max(map(len, self.stoi), default=1)  # 1 for characters
            self.eot = self.stoi.get(meta.get('separator'))
        else:
            self.kind = 'tiktoken'
            self.name = (meta or {}).get('tokenizer', 'gpt2')
            self.enc = tiktoken_encoding(self.name)
            self.vocab_size = self.enc.n_vocab
            self.eot = self.enc.eot_token if '<|endoftext|>' in self.enc.special_tokens_set else None

    def encode(self, s):
        if self.kind == 'tiktoken':
            return self.enc.encode(s, allowed_special={'<|endoftext|>'} & self.enc.special_tokens_set)
        if self.longest == 1:
            unknown = sorted({c for c in s if c not in self.stoi})
            ids = [] if unknown else [self.stoi[c] for c in s]
        else:  # a vocabulary of strings: the longest entry that matches, left to right
            ids, unknown, i = [], set(), 0
            while i < len(s):
                n = next((n for n in range(min(self.longest, len(s) - i), 0, -1) if s[i:i + n] in self.stoi), 0)
                if n:
                    ids.append(self.stoi[s[i:i + n]])
                else:
                    unknown.add(s[i])
                i += max(n, 1)
            unknown = sorted(unknown)
        if unknown:
            raise UserError(f"prompt has character(s) not in the vocabulary of {self.meta_path}: "
                            f"{', '.join(repr(c) for c in unknown)}")
        return ids

    def decode(self, ids):
        if self.kind == 'tiktoken':
            return self.enc.decode(ids)
        return ''.join(self.itos[i] for i in ids)

    def decode_bytes(self, ids):
        """Raw bytes of tokens, for streaming BPE output without splitting UTF-8 characters."""
        if self.kind == 'tiktoken':
            return self.enc.decode_bytes(ids)
        return self.decode(ids).encode('utf-8')


class TokenIds:
    """sample.py --tokens=True: tokens shown as their ids, each followed by a space ("12 7 99 ").
    `text`: the model's tokenizer when it has one (it encodes a text prompt); None when the prompt
    is given as ids and no tokenizer is needed."""
    kind = 'ids'

    def __init__(self, text=None):
        self.text = text
        self.eot = text.eot if text is not None else None

    def encode(self, s):
        assert self.text is not None, "a text prompt needs the model's tokenizer"
        return self.text.encode(s)

    def decode(self, ids):
        return ''.join(f'{i} ' for i in ids)

    def decode_bytes(self, ids):
        return self.decode(ids).encode('ascii')


def _shown_meta_path(dataset):
    """data/<dataset>/meta.pkl as the original prints it, or the path of a dataset given as a directory."""
    d = dataset_dir(dataset)
    return os.path.join(d, 'meta.pkl') if d == os.path.abspath(dataset) else f"data/{dataset}/meta.pkl"


def tokenizer_for(dataset, vocab_size):
    """The tokenizer of a model with vocab_size token ids trained on `dataset` (None for OpenAI's or
    a Hugging Face GPT-2): its meta.pkl's vocabulary or tiktoken encoding, or GPT-2 BPE where there
    is no meta.pkl (nanoGPT's rule); prints which, as nanoGPT does. What can be checked without
    tiktoken is checked first (tiktoken may have to download its files): a tokenizer that does not
    belong to the model is refused, never used."""
    meta_path = os.path.join(dataset_dir(dataset), 'meta.pkl') if dataset else None
    shown = _shown_meta_path(dataset) if dataset else None
    if meta_path and os.path.exists(meta_path):
        print(f"Loading meta from {shown}...")
        meta = load_meta(meta_path)
        n = meta['vocab_size']
        if n != vocab_size and ('stoi' in meta or n > vocab_size):
            raise UserError(f"{shown} has vocab_size {n} but the checkpoint's model has {vocab_size}: this "
                            f"tokenizer does not belong to the model (was the dataset re-prepared?)")
        if 'stoi' not in meta and 'tokenizer' not in meta:
            raise UserError(f"{shown} holds only vocab_size ({n}), not which tokenizer made the token ids"
                            f"{' (the size of GPT-2 BPE, among others)' if n == GPT2_VOCAB else ''}: add 'tokenizer' (a "
                            f"tiktoken encoding such as 'gpt2') or 'stoi' and 'itos' to it, as "
                            f"data/prepare_text.py writes them, or print token ids: {_IDS_HINT}")
        tok = Tokenizer(meta, meta_path)
    else:
        print("No meta.pkl found, assuming GPT-2 encodings...")
        if not GPT2_VOCAB <= vocab_size <= GPT2_PADDED_VOCAB:
            where = (f"the dataset {dataset!r} has none ({shown} is missing): restore it (re-run the "
                     f"dataset's prepare.py)" if dataset else "a Hugging Face directory carries none")
            raise UserError(f"the model's vocab_size {vocab_size} is not GPT-2's {GPT2_VOCAB}, so its tokenizer "
                            f"is in a meta.pkl, and {where}; or print token ids: {_IDS_HINT}")
        tok = Tokenizer()
    if tok.vocab_size > vocab_size:  # a tiktoken encoding larger than the meta.pkl said
        raise UserError(f"{shown} names tiktoken's {tok.name!r}, {tok.vocab_size} tokens, but the model has "
                        f"only {vocab_size}: this tokenizer does not belong to the model")
    return tok


def dataset_meta(dataset):
    """What the token ids of `dataset` mean, as a meta dict: its meta.pkl, or GPT-2's tiktoken entry
    for a dataset without one (nanoGPT's rule); None when the dataset is not here."""
    d = dataset_dir(dataset)
    if os.path.isfile(os.path.join(d, 'meta.pkl')):
        return load_meta(os.path.join(d, 'meta.pkl'))
    if os.path.isfile(os.path.join(d, 'train.bin')):
        return {'vocab_size': GPT2_VOCAB, 'tokenizer': 'gpt2'}
    return None


def _describe_vocabulary(meta):
    if 'stoi' in meta:
        return f"{meta['vocab_size']} characters" if max(map(len, meta['stoi']), default=1) == 1 \
            else f"a vocabulary of {meta['vocab_size']} strings"
    if 'tokenizer' in meta:
        return f"tiktoken's {meta['tokenizer']!r} tokens"
    return f"ids of an unnamed tokenizer ({meta['vocab_size']})"


def check_same_vocabulary(source, dataset, ckpt_path):
    """A model trained on dataset `source` continues on `dataset` (train.py init_from=<checkpoint>):
    the token ids of both must mean the same (a character vocabulary may lack some of the source's
    characters, with the others numbered alike). One line otherwise, with the command that
    prepares the text with the source's vocabulary."""
    old = dataset_meta(source) if source else None
    new = dataset_meta(dataset)
    if new is None:
        return  # no dataset here: opening its train.bin says so, with the command that makes it
    if old is None:
        warn_once(f"cannot check that the dataset {dataset!r} numbers its tokens as {source!r} does, which "
                  f"{ckpt_path} was trained on: {source!r} is not here")
        return
    if 'stoi' in old and 'stoi' in new:
        clash = next((ch for ch, i in new['stoi'].items() if old['stoi'].get(ch) != i), None)
        if clash is None:
            return
        detail = (f"{clash!r} is token {new['stoi'][clash]} here and {old['stoi'][clash]} there" if clash in old['stoi']
                  else f"{clash!r} is not in {source}'s vocabulary")
    elif 'stoi' not in old and 'stoi' not in new and old.get('tokenizer') == new.get('tokenizer') \
            and ('tokenizer' in old or old['vocab_size'] == new['vocab_size']):
        return
    else:
        detail = f"{_describe_vocabulary(new)} here, {_describe_vocabulary(old)} there"
    how = (f"--vocab={source}" if 'stoi' in old else "--bpe" if old.get('tokenizer') == 'gpt2'
           else f"--vocab={source}" if 'tokenizer' in old else f"the tokenizer that made {source}")
    raise UserError(f"the dataset {dataset!r} does not number its tokens as {source!r}, which {ckpt_path} was "
                    f"trained on ({detail}): prepare your text with that vocabulary, e.g. "
                    f"python data/prepare_text.py <your files> {quote(how) if how.startswith('--') else how}")


def meta_vocab_size(data_dir):
    """The vocab_size in data_dir/meta.pkl; None without one (GPT-2's vocabulary, nanoGPT's rule),
    said in one line with the largest token id in train.bin: a character dataset that lost its
    meta.pkl shows ids far below GPT-2's."""
    meta_path = os.path.join(data_dir, 'meta.pkl')
    if not os.path.exists(meta_path):
        train_bin = os.path.join(data_dir, 'train.bin')
        if os.path.exists(train_bin) and os.path.getsize(train_bin) >= 2:
            top, exact = largest_token_id(np.memmap(train_bin, dtype=np.uint16, mode='r'))
            lost = ("; ids this small suggest a character dataset that lost its meta.pkl: prepare it again"
                    if top < _FEW_FOR_GPT2 else "")
            print(f"no meta.pkl in {data_dir}: GPT-2's vocabulary assumed; the largest token id in train.bin"
                  f"{'' if exact else ' (sampled)'} is {top}{lost}")
        return None
    vocab_size = load_meta(meta_path)['vocab_size']
    print(f"found vocab_size = {vocab_size} (inside {meta_path})")
    return vocab_size


def _prepare_hint(dataset):
    script = os.path.join(dataset_dir(dataset), 'prepare.py')
    if os.path.exists(script):
        return command('python', os.path.relpath(script))
    if dataset_dir(dataset) == os.path.abspath(dataset):  # a directory path, not a name
        return f"python data/prepare_text.py <your text file> {quote(f'--dest={dataset}')}"
    return f"python data/prepare_text.py <your text file> {quote(f'--name={dataset}')}"


_FEW_FOR_GPT2 = 1000  # GPT-2's BPE text uses ids in the tens of thousands; characters stay well below this
_EXACT_UP_TO = 200_000_000  # tokens scanned whole; a bigger train.bin (openwebtext: 9B) is sampled


def largest_token_id(data):
    """(the largest token id in `data`, a uint16 memmap; whether every token was read): a full
    scan for small files, a strided sample for huge ones."""
    if len(data) <= _EXACT_UP_TO:
        return int(data.max()), True
    return int(data[::997].max()), False


def check_dataset(data_dir, dataset):
    """Stop with one line where data_dir lacks train.bin or val.bin, naming the command that makes them."""
    for split in ('train', 'val'):
        path = os.path.join(data_dir, f'{split}.bin')
        if not os.path.exists(path):
            raise UserError(f"missing {path}: prepare the dataset first with: {_prepare_hint(dataset)}")


def open_split(data_dir, split, dataset, block_size, vocab_size):
    """Memory-map data/<dataset>/<split>.bin (uint16 token ids) after checking it is usable."""
    check_dataset(data_dir, dataset)
    path = os.path.join(data_dir, f'{split}.bin')
    size = os.path.getsize(path)
    if size % 2:
        raise UserError(f"{path} has an odd length ({size} bytes): it is not uint16 tokens "
                        f"(truncated?); re-run {_prepare_hint(dataset)}")
    if size // 2 < block_size + 1:  # checked before mapping: numpy cannot map an empty file
        raise UserError(f"{path} holds {size // 2} tokens, fewer than block_size+1 = {block_size + 1}: "
                        f"use a smaller --block_size or more data")
    data = np.memmap(path, dtype=np.uint16, mode='r')
    top = largest_token_id(data)[0]
    if top >= vocab_size:
        raise UserError(f"{path} contains token id {top}, not below the model's vocab_size {vocab_size}: "
                        f"the data and meta.pkl / vocab_size do not match; re-run {_prepare_hint(dataset)}")
    return data
