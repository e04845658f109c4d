"""
Tiny shakespeare as characters: data/shakespeare_char/{train,val}.bin and meta.pkl.

    python data/shakespeare_char/prepare.py                   # downloads input.txt if needed
    python data/shakespeare_char/prepare.py --input=/path/to/input.txt   # offline

The corpus is the char-rnn input.txt (1,115,394 characters, 65 distinct). The first 90% becomes
train.bin (1,003,854 tokens), the last 10% val.bin (111,540 tokens).
"""

import argparse
import os
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(HERE))  # data/, for the shared helpers
from prepare_text import UserError, fetch_tiny_shakespeare, prepare_text, read_text, run  # noqa: E402


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.strip().splitlines()[0])
    p.add_argument('--input', help="a local copy of tiny shakespeare's input.txt")
    args = p.parse_args(argv)
    path = os.path.join(HERE, 'input.txt')
    if args.input and not os.path.isfile(args.input):
        raise UserError(f"--input file not found: {args.input}")
    fetch_tiny_shakespeare(path, args.input)
    prepare_text(read_text(path), HERE)


if __name__ == '__main__':
    run(main)
