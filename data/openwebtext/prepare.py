"""
OpenWebText as GPT-2 BPE tokens, for training GPT-2 from scratch: data/openwebtext/{train,val}.bin.

    pip install datasets
    python data/openwebtext/prepare.py                  # ~54 GB download to the Hugging Face cache
    python data/openwebtext/prepare.py --num_proc=16    # more tokenizer processes
    torchrun --standalone --nproc_per_node=8 train.py config/train_gpt2.py

The corpus (8,013,769 documents) comes through Hugging Face `datasets` (an optional dependency,
needed only here). 0.05% of the documents (seed 2357) become the validation split. Each document is
encoded with tiktoken's 'gpt2' encoding (special-token text is treated as plain text) and followed
by the end-of-text token 50256; the tokenizing runs in num_proc processes (datasets.map). The token ids of a split
are written as one uint16 memmap, shard by shard: train.bin ~17 GB (~9.0B tokens), val.bin ~8.5 MB
(~4.4M tokens). No meta.pkl: train.py then uses GPT-2's vocabulary, padded to 50304.

The core (split, encode, write the memmaps) is plain functions: `prepare_documents` runs the same
recipe on any list of strings without `datasets` (tiktoken's batch encoder in num_proc threads).
"""

import argparse
import math
import os
import sys

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(HERE))  # data/, for the shared helpers
from prepare_text import UserError, progress, run, tiktoken_encoding  # noqa: E402

# tokenizer processes; about half the cores keeps the machine responsive
num_proc = max(1, (os.cpu_count() or 2) // 2)
# processes for load_dataset's download and extraction (network-bound, so it may differ)
num_proc_load_dataset = num_proc
VAL_FRACTION = 0.0005
SPLIT_SEED = 2357
WRITE_SHARDS = 1024  # documents are gathered into this many shards per split for fast writes

_enc = None


def encoding():
    """tiktoken's GPT-2 encoding, made once per process (worker processes make their own)."""
    global _enc
    if _enc is None:
        _enc = tiktoken_encoding('gpt2')
        assert _enc.max_token_value < 2 ** 16  # ids fit uint16
    return _enc


def encode_document(text):
    """One document's token ids followed by the end-of-text token, as uint16."""
    enc = encoding()
    ids = enc.encode_ordinary(text)  # '<|endoftext|>' inside a web page is just text
    ids.append(enc.eot_token)
    return np.array(ids, dtype=np.uint16)


def process(example):
    """The datasets.map function: {'text': str} -> {'ids': [...], 'len': n}."""
    ids = encode_document(example['text']).tolist()
    return {'ids': ids, 'len': len(ids)}


def write_memmap(path, total, shards, desc=None):
    """Write `total` uint16 tokens, arriving as an iterable of arrays, into a memmap at `path`.
    The file is filled under a temporary name and renamed when complete."""
    tmp = f"{path}.tmp{os.getpid()}"
    try:
        arr = np.memmap(tmp, dtype=np.uint16, mode='w+', shape=(int(total),)) if total else None
        idx = 0
        for shard in progress(shards, desc=desc or f"writing {path}"):
            if len(shard):
                arr[idx:idx + len(shard)] = shard
                idx += len(shard)
        if idx != total:
            raise UserError(f"{path}: wrote {idx} tokens but expected {total}")
        if arr is not None:
            arr.flush()
            del arr
        else:
            open(tmp, 'wb').close()
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def split_indices(n_docs, val_fraction=VAL_FRACTION, seed=SPLIT_SEED):
    """A seeded shuffle of document indices into (train, val); val gets ceil(n * val_fraction)
    documents, at least one, and train keeps at least one."""
    if n_docs < 2:
        raise UserError(f"need at least 2 documents to make a train and a val split, got {n_docs}")
    n_val = min(n_docs - 1, max(1, math.ceil(n_docs * val_fraction)))
    perm = np.random.default_rng(seed).permutation(n_docs)
    return np.sort(perm[n_val:]), np.sort(perm[:n_val])


def encode_documents(docs, num_proc=1, batch=1024):
    """encode_document over a list of strings; tiktoken encodes each batch in num_proc threads
    (its Rust core runs without the GIL), keeping the order."""
    enc = encoding()
    out = []
    bar = progress(total=len(docs), desc="tokenizing")
    for i in range(0, len(docs), batch):
        for ids in enc.encode_ordinary_batch(docs[i:i + batch], num_threads=num_proc):
            ids.append(enc.eot_token)
            out.append(np.array(ids, dtype=np.uint16))
        bar.update(min(batch, len(docs) - i))
    bar.close()
    return out


def shards_of(arrays, n_shards=WRITE_SHARDS):
    """Concatenate consecutive documents' arrays into at most n_shards contiguous shards."""
    per = max(1, math.ceil(len(arrays) / n_shards))
    for i in range(0, len(arrays), per):
        yield np.concatenate(arrays[i:i + per])


def prepare_documents(docs, out_dir, num_proc=1, val_fraction=VAL_FRACTION, seed=SPLIT_SEED):
    """The whole recipe on an in-memory list of documents: split, tokenize, write train.bin and
    val.bin into out_dir. Returns {'train': n_tokens, 'val': n_tokens}."""
    docs = list(docs)
    train_idx, val_idx = split_indices(len(docs), val_fraction, seed)
    os.makedirs(out_dir, exist_ok=True)
    counts = {}
    for split, idx in (('train', train_idx), ('val', val_idx)):
        arrays = encode_documents([docs[i] for i in idx], num_proc)
        total = sum(len(a) for a in arrays)
        path = os.path.join(out_dir, f'{split}.bin')
        write_memmap(path, total, shards_of(arrays), desc=f"writing {path}")
        print(f"{split} has {total:,} tokens ({len(idx):,} documents)")
        counts[split] = total
    return counts


def prepare_hf_dataset(out_dir, name='openwebtext', n_proc=num_proc, n_proc_load=num_proc_load_dataset):
    """The original recipe on a Hugging Face dataset with a 'text' column and a 'train' split."""
    try:
        from datasets import load_dataset
    except ImportError:
        raise UserError("this dataset is loaded with Hugging Face datasets: pip install datasets") from None
    dataset = load_dataset(name, num_proc=n_proc_load)
    split_dataset = dataset['train'].train_test_split(test_size=VAL_FRACTION, seed=SPLIT_SEED, shuffle=True)
    split_dataset['val'] = split_dataset.pop('test')
    tokenized = split_dataset.map(process, remove_columns=['text'], desc="tokenizing the splits",
                                  num_proc=n_proc)
    os.makedirs(out_dir, exist_ok=True)
    counts = {}
    for split, dset in tokenized.items():
        total = int(np.sum(dset['len'], dtype=np.uint64))
        n_shards = min(WRITE_SHARDS, len(dset))
        shards = (np.concatenate(dset.shard(num_shards=n_shards, index=i, contiguous=True)
                                 .with_format('numpy')['ids'])
                  for i in range(n_shards))
        path = os.path.join(out_dir, f'{split}.bin')
        write_memmap(path, total, shards, desc=f"writing {path}")
        print(f"{split} has {total:,} tokens")
        counts[split] = total
    return counts


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.strip().splitlines()[0])
    p.add_argument('--num_proc', type=int, default=num_proc, help="tokenizer processes")
    p.add_argument('--dataset', default='openwebtext',
                   help="Hugging Face dataset name with a 'text' column (default openwebtext)")
    p.add_argument('--dest', help="write train.bin and val.bin here instead of data/openwebtext")
    args = p.parse_args(argv)
    if args.num_proc < 1:
        raise UserError(f"--num_proc must be at least 1, got {args.num_proc}")
    prepare_hf_dataset(os.path.abspath(args.dest) if args.dest else HERE, args.dataset,
                       args.num_proc, min(args.num_proc, num_proc_load_dataset))


if __name__ == '__main__':
    run(main)
