"""
Turn your own UTF-8 text (files, folders of files) into a dataset that train.py and sample.py use.

    python data/prepare_text.py my_novel.txt                 # -> data/my_novel/ (characters)
    python data/prepare_text.py my_novel.txt --name=novel --bpe   # GPT-2 BPE tokens instead
    python data/prepare_text.py my_letters/ --glob='*.txt'   # a folder, read recursively -> data/my_letters/
    python data/prepare_text.py a.txt b.md notes/ --name=mix # several files and folders
    python data/prepare_text.py my_novel.txt --vocab=shakespeare_char   # to finetune a Shakespeare model
    python train.py config/train_shakespeare_char_cpu.py --dataset=novel --out_dir=out-novel
    python sample.py --out_dir=out-novel

Writes data/<name>/train.bin and val.bin (uint16 token ids) and meta.pkl, which says what the ids
mean: the characters (vocab_size, stoi, itos) or the tiktoken encoding ({'vocab_size': 50257,
'tokenizer': 'gpt2'}). One file is one document: the first 90% of its text trains, the last 10%
validates. Several documents are kept whole: a seeded shuffle picks the documents that make up
about 10% of the characters for val, and the documents of each split are joined by a separator,
'<|endoftext|>' (token 50256) for BPE, for characters the visible character U+2403 '␃' (SYMBOL FOR
END OF TEXT), which then appears in the vocabulary (--separator= chooses another). Files that are
not UTF-8 text (binary files, other encodings) are skipped and named; folders skip hidden entries.
Every file is written to a temporary name and renamed, so an interrupted run never leaves a file
that looks complete. The helpers here are shared by the data/*/prepare.py scripts.
"""

import argparse
import fnmatch
import gzip
import hashlib
import os
import pickle
import sys
import zlib

import numpy as np

DATA_DIR = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(DATA_DIR))  # the project, for the nanogpt package
from nanogpt.data import dataset_dir, dataset_meta, load_meta, read_text_file, tiktoken_encoding  # noqa: E402
from nanogpt.errors import UserError, run_cli, warn_once  # noqa: E402
from nanogpt.shell import command  # noqa: E402

CHAR_SEPARATOR = '\u2403'  # '␃', SYMBOL FOR END OF TEXT: visible, and rare in real text
VAL_FRACTION = 0.1
SPLIT_SEED = 2357
MAX_NAMED_SKIPS = 20  # a folder of thousands of images is named file by file only this far


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


# Tiny shakespeare ships with the project, gzipped: zlib is in every Python that runs pip, while lzma
# is missing from some source builds. Its bytes are those of char-rnn's input.txt, at this address:
TINY_SHAKESPEARE_URL = 'https://raw.githubusercontent.com/karpathy/char-rnn/master/data/tinyshakespeare/input.txt'
TINY_SHAKESPEARE_SHA256 = '86c4e6aa9db7c042ec79f339dcb96d42b0075e16b8fc2e86bf0ca57e2dc565ed'
TINY_SHAKESPEARE_SIZE = 1115394  # characters and bytes: the corpus is ASCII
SHIPPED_NAME = 'data/tinyshakespeare.txt.gz'  # as the README names it, from the project folder
TINY_SHAKESPEARE_SHIPPED = os.path.join(DATA_DIR, os.path.basename(SHIPPED_NAME))


def is_tiny_shakespeare(path):
    return os.path.isfile(path) and os.path.getsize(path) == TINY_SHAKESPEARE_SIZE \
        and sha256_of(path) == TINY_SHAKESPEARE_SHA256


def shipped_tiny_shakespeare():
    """The bytes of tiny shakespeare's input.txt, unpacked from the copy shipped in data/ and checked
    against its sha256: a missing or damaged copy is one line naming the fix."""
    fix = (f"restore it (git checkout -- {SHIPPED_NAME}) or pass --input=path/to/input.txt, a copy of "
           f"{TINY_SHAKESPEARE_URL}")
    try:
        with gzip.open(TINY_SHAKESPEARE_SHIPPED, 'rb') as f:
            data = f.read(TINY_SHAKESPEARE_SIZE + 1)
    except FileNotFoundError:
        raise UserError(f"the shipped copy of tiny shakespeare, {SHIPPED_NAME}, is missing: {fix}") from None
    except (OSError, EOFError, zlib.error):  # not gzip, truncated, or corrupt inside
        data = None
    if data is None or hashlib.sha256(data).hexdigest() != TINY_SHAKESPEARE_SHA256:
        raise UserError(f"the shipped copy of tiny shakespeare, {SHIPPED_NAME}, is damaged (it does not unpack to "
                        f"the {TINY_SHAKESPEARE_SIZE:,} bytes of sha256 {TINY_SHAKESPEARE_SHA256[:12]}...): {fix}")
    return data


def write_tiny_shakespeare(path, user_copy=None):
    """Tiny shakespeare's input.txt at `path`, checked by size and sha256: the file already there
    when it is that, else a copy of `user_copy` (--input, which must be that file), else unpacked
    from the shipped copy. Nothing is downloaded: the shipped bytes are the same."""
    if user_copy and not is_tiny_shakespeare(user_copy):
        raise UserError(f"--input {user_copy} is not tiny shakespeare's input.txt (its size or sha256 differs); "
                        f"for a dataset of your own text use: {command('python', 'data/prepare_text.py', user_copy)}")
    if is_tiny_shakespeare(path):
        return path
    if os.path.exists(path):
        print(f"{path} is not tiny shakespeare's input.txt (its size or sha256 differs); replacing it")
    if user_copy:
        with open(user_copy, 'rb') as f:
            data = f.read()
    else:
        data = shipped_tiny_shakespeare()
        print(f"unpacked tiny shakespeare from {SHIPPED_NAME}")
    atomic_write(path, lambda f: f.write(data))
    return path


def read_text(path):
    """The text of one UTF-8 file, or one line saying why it is not one."""
    if not os.path.exists(path):
        raise UserError(f"input file not found: {path}")
    text, why = read_text_file(path)
    if why:
        raise UserError(f"{path} {why}: give a UTF-8 text file, or a folder of them")
    return text


def char_ids(text, stoi):
    """The uint16 token ids of `text` under a character vocabulary that holds all its characters:
    stoi looked up by code point with numpy (a Python loop takes seconds per ten million)."""
    chars = sorted(stoi)  # single characters sort by code point
    points = np.array([ord(c) for c in chars], dtype=np.uint32)
    ids = np.array([stoi[c] for c in chars], dtype=np.uint16)
    codes = np.frombuffer(text.encode('utf-32-le'), dtype=np.uint32)
    at = np.searchsorted(points, codes)
    assert (points[np.minimum(at, len(points) - 1)] == codes).all(), "a character outside the vocabulary"
    return ids[at]


def keep_known(texts, stoi):
    """`texts` without the characters that the vocabulary `stoi` lacks; one warning names them."""
    unknown = sorted(set().union(*map(set, texts)) - set(stoi))
    if not unknown:
        return texts
    counts = ', '.join(f"{c!r} ({sum(t.count(c) for t in texts):,})" for c in unknown[:10])
    warn_once(f"dropped {len(unknown)} character(s) that the vocabulary lacks: {counts}"
              f"{' and more' if len(unknown) > 10 else ''}")
    table = {ord(c): None for c in unknown}
    return [t.translate(table) for t in texts]


def char_vocabulary(text):
    chars = sorted(set(text))
    if len(chars) > 65535:
        raise UserError(f"{len(chars)} distinct characters do not fit uint16 token ids")
    stoi = {ch: i for i, ch in enumerate(chars)}
    itos = {i: ch for i, ch in enumerate(chars)}
    return {'vocab_size': len(chars), 'itos': itos, 'stoi': stoi}


def encode_chars(text, vocab=None):
    """Character-level tokens; returns (ids, meta). The vocabulary is the sorted set of the text's
    characters, or `vocab` (a character meta.pkl's contents), whose missing characters are dropped
    from the text with a warning that names them."""
    if vocab is None:
        meta = char_vocabulary(text)
    else:
        meta = {k: vocab[k] for k in ('vocab_size', 'itos', 'stoi', 'separator') if k in vocab}
        text = keep_known([text], vocab['stoi'])[0]
    return char_ids(text, meta['stoi']), meta


def bpe_encoding(name):
    enc = tiktoken_encoding(name)
    if enc.max_token_value >= 2 ** 16:
        raise UserError(f"tiktoken's {name!r} has token ids up to {enc.max_token_value}, more than the uint16 "
                        f"train.bin holds: use --bpe (GPT-2's encoding)")
    return enc


def encode_gpt2(text, name='gpt2'):
    """BPE tokens of a tiktoken encoding (GPT-2's by default); returns (ids, meta), meta naming it."""
    enc = bpe_encoding(name)
    ids = np.array(enc.encode_ordinary(text), dtype=np.uint16)
    return ids, {'vocab_size': enc.n_vocab, 'tokenizer': name}


def write_dataset(out_dir, train_ids, val_ids, meta):
    os.makedirs(out_dir, exist_ok=True)
    atomic_write(os.path.join(out_dir, 'train.bin'), lambda f: f.write(train_ids.tobytes()))
    atomic_write(os.path.join(out_dir, 'val.bin'), lambda f: f.write(val_ids.tobytes()))
    # only plain dicts of ints and strings: loadable by a restricted unpickler
    atomic_write(os.path.join(out_dir, 'meta.pkl'), lambda f: pickle.dump(meta, f))


def prepare_text(text, out_dir, bpe=False, vocab=None):
    """Encode one document, `text` (characters; bpe=True or a tiktoken encoding's name for BPE;
    `vocab`: a character meta.pkl's contents to encode with), into out_dir."""
    if not text:
        raise UserError("the input text is empty")
    ids, meta = encode_gpt2(text, 'gpt2' if bpe is True else bpe) if bpe else encode_chars(text, vocab)
    if len(ids) < 20:
        raise UserError(f"the input has only {len(ids)} tokens: too little to split into train and val")
    report = [f"length of dataset in characters: {len(text):,}"] + _vocabulary_lines(meta, bpe, vocab)
    cut = int(len(ids) * (1 - VAL_FRACTION))
    write_dataset(out_dir, ids[:cut], ids[cut:], meta)  # first, then the report
    print('\n'.join(report))
    print(f"train has {cut:,} tokens")
    print(f"val has {len(ids) - cut:,} tokens")
    return ids[:cut], ids[cut:]


def _vocabulary_lines(meta, bpe, vocab):
    """The report's lines about the vocabulary: its characters (when new ones were chosen), its size."""
    chars = ["all the unique characters: " + ''.join(meta['itos'][i] for i in range(meta['vocab_size']))] \
        if not bpe and vocab is None else []
    return chars + [f"vocab size: {meta['vocab_size']:,}"]


def files_under(folder, patterns):
    """The files under `folder`, recursively, in sorted order: hidden files and folders (.git and
    the like) left out, and only names (or paths below the folder) matching one of `patterns`."""
    found = []
    for root, dirs, files in os.walk(folder):
        dirs[:] = sorted(d for d in dirs if not d.startswith('.'))
        for name in sorted(files):
            path = os.path.join(root, name)
            rel = os.path.relpath(path, folder).replace(os.sep, '/')
            if not name.startswith('.') and os.path.isfile(path) and (
                    not patterns or any(fnmatch.fnmatch(name, p) or fnmatch.fnmatch(rel, p) for p in patterns)):
                found.append(path)
    return found


def collect_documents(inputs, patterns=()):
    """[(path, text)] of the UTF-8 text files among `inputs`: files, and the files of folders. Every
    other file (binary, another encoding, unreadable, empty) is skipped and named in a warning."""
    docs, skipped = [], []
    for item in inputs:
        if not os.path.exists(item):
            raise UserError(f"input file not found: {item}")
        paths = files_under(item, patterns) if os.path.isdir(item) else [item]
        if not paths:
            warn_once(f"no files in the folder {item}" + (f" match --glob={' '.join(patterns)}" if patterns else ""))
        for path in paths:
            text, why = read_text_file(path)
            why = why or ("is empty" if not text else None)
            (skipped if why else docs).append((path, why or text))
    if not docs and len(skipped) == 1:
        raise UserError(f"{skipped[0][0]} {skipped[0][1]}: give a UTF-8 text file, or a folder of them")
    for path, why in skipped[:MAX_NAMED_SKIPS]:
        warn_once(f"skipped {path}: it {why}")
    if len(skipped) > MAX_NAMED_SKIPS:
        warn_once(f"skipped {len(skipped) - MAX_NAMED_SKIPS} more files that are not UTF-8 text")
    if not docs:
        raise UserError(f"no UTF-8 text in {', '.join(inputs)}" + (f": {len(skipped)} files skipped (named above)"
                                                                  if skipped else ""))
    return docs


def split_documents(sizes, val_fraction=VAL_FRACTION, seed=SPLIT_SEED):
    """(train, val) lists of document indices, each document whole in one split. A seeded shuffle
    decides the order in which documents are offered to val; one is taken while val stays within
    val_fraction of all characters (the smallest document when none fits, so val is never empty
    and, with two documents or more, train neither)."""
    target = val_fraction * sum(sizes)
    val, held = [], 0
    for i in np.random.default_rng(seed).permutation(len(sizes)).tolist():
        if held + sizes[i] <= target:
            val.append(i)
            held += sizes[i]
    val = set(val or [int(np.argmin(sizes))])
    return [i for i in range(len(sizes)) if i not in val], sorted(val)


def unused_character(texts, stoi):
    """A separator for a vocabulary that has none of its own: one of its characters that no document
    uses, punctuation first (e.g. Shakespeare's '$' or '&'); a blank line when every one is used."""
    used = set().union(*map(set, texts))
    free = sorted((ch for ch in stoi if len(ch) == 1 and ch not in used), key=lambda ch: (ch.isalnum(), ch.isspace(), ch))
    return free[0] if free else '\n\n'


def prepare_documents(docs, out_dir, bpe=False, vocab=None, separator=None):
    """Encode several documents ([(path, text)]) into out_dir, whole documents to each split, joined
    there by the separator; then prints the documents, characters and tokens of each split."""
    texts = [t for _, t in docs]
    train_idx, val_idx = split_documents([len(t) for t in texts])
    if bpe:
        enc = bpe_encoding('gpt2' if bpe is True else bpe)
        meta = {'vocab_size': enc.n_vocab, 'tokenizer': 'gpt2' if bpe is True else bpe}
        shown = f"'<|endoftext|>' (token {enc.eot_token})"
    else:
        if vocab is not None:
            texts = keep_known(texts, vocab['stoi'])
            separator = separator or vocab.get('separator') or unused_character(texts, vocab['stoi'])
            if not set(separator) <= set(vocab['stoi']):
                raise UserError(f"the separator {separator!r} is not in the vocabulary given by --vocab: choose one "
                                f"of its characters or strings of them with --separator=")
        separator = separator or CHAR_SEPARATOR
        inside = sum(separator in t for t in texts)
        if inside:
            warn_once(f"{inside} document(s) contain the separator {separator!r} themselves: it marks more than "
                      f"their ends (choose another with --separator=)")
        meta = dict({k: vocab[k] for k in ('vocab_size', 'itos', 'stoi')} if vocab is not None
                    else char_vocabulary(''.join(set(''.join(texts) + separator))), separator=separator)
        shown = repr(separator)
    report = [f"length of dataset in characters: {sum(map(len, texts)):,} ({len(docs)} documents, joined by {shown})"]
    report += _vocabulary_lines(meta, bpe, vocab)
    splits = {}
    for split, idx in (('train', train_idx), ('val', val_idx)):
        if bpe:
            parts = enc.encode_ordinary_batch([texts[i] for i in idx])
            splits[split] = np.array([t for k, part in enumerate(parts) for t in ([enc.eot_token] if k else []) + part],
                                     dtype=np.uint16)
        else:
            splits[split] = char_ids(separator.join(texts[i] for i in idx), meta['stoi'])
        report.append(f"{split} has {len(splits[split]):,} tokens ({len(idx):,} document{'s' * (len(idx) != 1)}, "
                      f"{sum(len(texts[i]) for i in idx):,} characters)")
    write_dataset(out_dir, splits['train'], splits['val'], meta)
    print('\n'.join(report))  # after writing: a console that cannot print a line never costs the dataset
    return splits['train'], splits['val']


def vocabulary_of(name):
    """--vocab: the vocabulary of a dataset (a name in data/, a folder, or its meta.pkl), as meta."""
    meta = load_meta(name) if os.path.isfile(name) else dataset_meta(name)
    if meta is None:
        raise UserError(f"--vocab={name}: no dataset there (no meta.pkl or train.bin in {dataset_dir(name)})")
    if 'stoi' not in meta and 'tokenizer' not in meta:
        raise UserError(f"--vocab={name}: its meta.pkl does not say which tokenizer made its token ids")
    if 'stoi' in meta and max(map(len, meta['stoi']), default=1) > 1:
        raise UserError(f"--vocab={name}: its vocabulary holds strings longer than one character; prepare_text.py "
                        f"encodes with character vocabularies and tiktoken encodings")
    return meta


def main(argv=None):
    p = argparse.ArgumentParser(description="Turn UTF-8 text files and folders into data/<name>/ for train.py.")
    p.add_argument('inputs', nargs='+', metavar='input', help="text files and folders (read recursively)")
    p.add_argument('--glob', action='append', default=[], metavar='PATTERN',
                   help="in folders, only files whose name matches, e.g. --glob='*.txt' (may be repeated)")
    p.add_argument('--name', help="dataset name (default: the first input's name, without extension)")
    p.add_argument('--bpe', action='store_true', help="GPT-2 BPE tokens instead of characters")
    p.add_argument('--vocab', metavar='DATASET', help="encode with this dataset's vocabulary (a name in data/, "
                                                      "a folder or a meta.pkl), to finetune a model trained on it")
    p.add_argument('--separator', help=f"the text between documents, for characters (default {CHAR_SEPARATOR!r})")
    p.add_argument('--dest', help="write the dataset to this directory instead of data/<name>; "
                                  "train with --dataset=<that directory>")
    args = p.parse_args(argv)
    first = os.path.normpath(os.path.abspath(args.inputs[0]))
    name = args.name or (os.path.basename(first) if os.path.isdir(first)
                         else os.path.splitext(os.path.basename(first))[0])
    if not name or os.sep in name or name.startswith('.'):
        raise UserError(f"invalid dataset name {name!r}: use a plain folder name, e.g. --name=mytext")
    if args.bpe and args.vocab:
        raise UserError("--bpe and --vocab both choose the tokens: give one (--vocab=<a BPE dataset> is BPE too)")
    vocab = vocabulary_of(args.vocab) if args.vocab else None
    bpe = vocab['tokenizer'] if vocab and 'tokenizer' in vocab else args.bpe
    vocab = vocab if vocab and 'stoi' in vocab else None
    if bpe and args.separator:
        raise UserError("--separator is for characters: BPE documents are joined by <|endoftext|>")
    out_dir = os.path.abspath(args.dest) if args.dest else os.path.join(DATA_DIR, name)
    docs = collect_documents(args.inputs, args.glob)
    if len(docs) == 1:
        prepare_text(docs[0][1], out_dir, bpe=bpe, vocab=vocab)
    else:
        prepare_documents(docs, out_dir, bpe=bpe, vocab=vocab, separator=args.separator)
    dataset = out_dir if args.dest else name
    print(f"wrote {out_dir}; train with: " + command('python', 'train.py', 'config/train_shakespeare_char_cpu.py',
                                                     f'--dataset={dataset}', f'--out_dir=out-{name}'))
    if args.vocab:
        print(f"or finetune a model trained on {args.vocab}: add --init_from=<its out_dir>")


def run(main_fn):
    """Run a prepare script's main as every command runs (errors.run_cli): one-line errors (exit 2)
    instead of tracebacks, output safe for any console and for a reader that goes away."""
    run_cli(main_fn, interrupted="interrupted; no partial files were left behind")


if __name__ == '__main__':
    run(main)
