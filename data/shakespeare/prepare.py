"""
Tiny shakespeare as GPT-2 BPE tokens, for finetuning GPT-2: data/shakespeare/{train,val}.bin.

    python data/shakespeare/prepare.py                    # tiny shakespeare from data/tinyshakespeare.txt.gz
    python train.py config/finetune_shakespeare.py        # finetune GPT-2 XL on it

The text (1,115,394 characters) is split 90/10 by characters, and each part is encoded with
tiktoken's 'gpt2' encoding: train.bin has 301,966 tokens, val.bin 36,059 (uint16 ids). As in
nanoGPT no meta.pkl is written: train.py then assumes GPT-2's vocabulary, and sample.py says
"No meta.pkl found, assuming GPT-2 encodings...". tiktoken downloads the BPE files once.
"""

import argparse
import os
import sys

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(HERE))  # data/, for the shared helpers
from prepare_text import UserError, atomic_write, read_text, run, tiktoken_encoding, write_tiny_shakespeare  # noqa: E402


def encode_split(text, val_fraction=0.1):
    """Split by characters first (so the two files match nanoGPT's token for token), then encode
    each part with GPT-2 BPE. Returns (train_ids, val_ids) as uint16 arrays."""
    enc = tiktoken_encoding('gpt2')
    n = len(text)
    cut = int(n * (1 - val_fraction))
    train_ids = np.array(enc.encode_ordinary(text[:cut]), dtype=np.uint16)
    val_ids = np.array(enc.encode_ordinary(text[cut:]), dtype=np.uint16)
    return train_ids, val_ids


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.strip().splitlines()[0])
    p.add_argument('--input', help="a copy of tiny shakespeare's input.txt to use instead of the shipped one")
    p.add_argument('--dest', help="write train.bin and val.bin here instead of data/shakespeare "
                                  "(train with --dataset=<that directory>)")
    args = p.parse_args(argv)
    if args.input and not os.path.isfile(args.input):
        raise UserError(f"--input file not found: {args.input}")
    out_dir = os.path.abspath(args.dest) if args.dest else HERE
    os.makedirs(out_dir, exist_ok=True)
    path = os.path.join(out_dir, 'input.txt')
    write_tiny_shakespeare(path, args.input)
    train_ids, val_ids = encode_split(read_text(path))
    print(f"train has {len(train_ids):,} tokens")
    print(f"val has {len(val_ids):,} tokens")
    for name, ids in (('train.bin', train_ids), ('val.bin', val_ids)):
        atomic_write(os.path.join(out_dir, name), lambda f, ids=ids: f.write(ids.tobytes()))
    stale = os.path.join(out_dir, 'meta.pkl')
    if os.path.exists(stale):
        # e.g. left by `prepare_text.py --bpe`: it would change the vocab_size train.py picks
        os.remove(stale)
        print(f"removed {stale}: this dataset uses GPT-2's vocabulary without a meta.pkl")
    print(f"wrote {out_dir}; finetune GPT-2 on it with: python train.py config/finetune_shakespeare.py")


if __name__ == '__main__':
    run(main)
