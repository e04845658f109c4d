"""
Tiny shakespeare as characters: data/shakespeare_char/{train,val}.bin and meta.pkl.

    python data/shakespeare_char/prepare.py

The corpus is the char-rnn input.txt (1,115,394 characters, 65 distinct), unpacked from the copy
shipped in data/tinyshakespeare.txt.gz and checked by its sha256, so no network is needed
(--input=path/to/input.txt uses a copy of your own instead). The first 90% becomes train.bin
(1,003,854 tokens), the last 10% val.bin (111,540 tokens).
"""

import argparse
import os
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(HERE))  # data/, for the shared helpers
from prepare_text import UserError, prepare_text, read_text, run, write_tiny_shakespeare  # noqa: E402


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.strip().splitlines()[0])
    p.add_argument('--input', help="a copy of tiny shakespeare's input.txt to use instead of the shipped one")
    args = p.parse_args(argv)
    path = os.path.join(HERE, 'input.txt')
    if args.input and not os.path.isfile(args.input):
        raise UserError(f"--input file not found: {args.input}")
    write_tiny_shakespeare(path, args.input)
    prepare_text(read_text(path), HERE)


if __name__ == '__main__':
    run(main)
