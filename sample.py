"""
Sample text from a trained model (out_dir/ckpt.pt) or from OpenAI's GPT-2.

    python sample.py --out_dir=out-shakespeare-char --start="ROMEO:" --num_samples=5
    python sample.py --init_from=gpt2 --start="What is the answer to life?" --max_new_tokens=50
    python sample.py --out_dir=out-shakespeare-char --start=FILE:prompt.txt --stream=True
    python sample.py --out_dir=out-shakespeare-char --temperature=0 --stop=$'\n\n'

Each sample is printed with its prompt, followed by a line of 15 dashes. The same checkpoint,
seed and settings print the same text. The tokens are drawn by nanogpt/engine.py, with a key/value
cache; kv_cache=False re-runs the model on the whole context for each token, as the original does,
and draws the same tokens, slower.
"""

import codecs
import os
import sys
from types import SimpleNamespace

import torch

from configurator import apply_overrides, settings_of
from model import GPT
from nanogpt import devices
from nanogpt.checkpoint import load_checkpoint, model_from_checkpoint
from nanogpt.data import tokenizer_for_dataset
from nanogpt.engine import Engine, NonFiniteLogitsError
from nanogpt.errors import UserError, run_cli

# -----------------------------------------------------------------------------------------------
init_from = 'resume'  # 'resume' (out_dir/ckpt.pt) or a GPT-2 name ('gpt2', 'gpt2-xl', ...)
out_dir = 'out'
start = "\n"  # the prompt; "FILE:prompt.txt" reads it from a file; "<|endoftext|>" works for GPT-2
num_samples = 10
max_new_tokens = 500  # tokens generated per sample
temperature = 0.8  # 1.0 = the model's distribution, lower = more conservative, 0 = greedy (argmax)
top_k = 200  # keep only the top_k most likely tokens
top_p = 1.0  # nucleus sampling: keep the most likely tokens holding top_p of the mass; 1.0 = off
stop = ''  # end a sample early at this string (not printed); '' = never
stream = False  # print each token as it is produced (one-by-one mode; batched prints at the end)
batched = False  # draw all num_samples at once: faster, but not the same draws as one by one
kv_cache = True  # False: the uncached reference algorithm (identical output, slower)
seed = 1337
device = 'auto'  # 'cpu', 'cuda', 'cuda:0', 'mps'
dtype = 'auto'  # 'float32', 'bfloat16', 'float16'; auto: bfloat16 on GPUs and on CPUs with bf16 units
compile = False  # torch.compile the model (pays only for long generations on GPU)
# -----------------------------------------------------------------------------------------------
DEFAULTS = settings_of(globals())
DASHES = '---------------'


def check_settings(c):
    if c.num_samples < 1:
        raise UserError(f"num_samples must be at least 1, got {c.num_samples}")
    if c.max_new_tokens < 1:
        raise UserError(f"max_new_tokens must be at least 1, got {c.max_new_tokens}")
    if c.temperature < 0:
        raise UserError(f"temperature must be 0 (greedy) or more, got {c.temperature}")
    if c.top_k < 1:
        raise UserError(f"top_k must be at least 1, got {c.top_k} (use the vocabulary size to disable it)")
    if not 0.0 < c.top_p <= 1.0:
        raise UserError(f"top_p must be in (0, 1], got {c.top_p} (1.0 disables it)")


def load_model(c):
    """The model and the tokenizer that belongs to it."""
    if c.init_from == 'resume':
        if not os.path.isdir(c.out_dir):
            raise UserError(f"out_dir {c.out_dir!r} does not exist: train a model first, e.g. "
                            f"python train.py config/train_shakespeare_char.py (writes out-shakespeare-char)")
        ckpt = load_checkpoint(os.path.join(c.out_dir, 'ckpt.pt'), 'cpu')
        model = model_from_checkpoint(ckpt, dropout=0.0)
        dataset = (ckpt.get('config') or {}).get('dataset')
        tok = tokenizer_for_dataset(dataset)
    elif c.init_from.startswith('gpt2') or os.path.isdir(c.init_from):
        try:
            model = GPT.from_pretrained(c.init_from, dict(dropout=0.0))
        except (ImportError, OSError, ValueError) as e:  # from_pretrained's one-line messages
            raise UserError(str(e)) from None
        tok = tokenizer_for_dataset(None)
    else:
        raise UserError(f"unknown init_from {c.init_from!r}: use resume or a GPT-2 name (gpt2, gpt2-medium, "
                        f"gpt2-large, gpt2-xl)")
    vocab = model.config.vocab_size
    if tok.kind == 'char' and tok.vocab_size != vocab:
        raise UserError(f"{tok.meta_path} has vocab_size {tok.vocab_size} but the checkpoint's model has "
                        f"{vocab}: this tokenizer does not belong to the model (was the dataset re-prepared?)")
    if tok.kind == 'gpt2' and vocab < tok.vocab_size:
        raise UserError(f"the model's vocab_size {vocab} is smaller than GPT-2's {tok.vocab_size}, and no "
                        f"meta.pkl was found for its dataset: restore data/<dataset>/meta.pkl")
    bad = [n for n, p in model.named_parameters() if not torch.isfinite(p).all()]
    if bad:
        raise UserError(f"the checkpoint is broken: non-finite weights in {bad[0]}"
                        f"{f' and {len(bad) - 1} more' if len(bad) > 1 else ''}")
    return model, tok


def read_prompt(c, tok):
    text = c.start
    if text.startswith('FILE:'):
        path = text[5:]
        try:
            with open(path, 'r', encoding='utf-8') as f:
                text = f.read()
        except OSError as e:
            raise UserError(f"cannot read the prompt file {path!r}: {e.strerror}")
    ids = tok.encode(text)
    if not ids:
        if tok.eot is None:
            raise UserError("the prompt is empty and this character vocabulary has no start token: "
                            "give at least one character, e.g. --start='\\n'")
        ids = [tok.eot]  # GPT-2 starts documents after <|endoftext|>
    return ids


class Printer:
    """Turns one sample's tokens into text as they arrive: streams it when asked, and reports when
    the stop string appears (the text is cut before it). A GPT-2 token may end inside a UTF-8
    character; the incremental decoder holds such bytes back until the character is complete, so
    a stream never shows half a character as garbage."""

    def __init__(self, tok, prompt_ids, stop, stream):
        self.tok, self.stop, self.stream = tok, stop, stream
        self.decoder = codecs.getincrementaldecoder('utf-8')(errors='replace')
        self.text = ''  # generated text so far (the prompt not included)
        self.shown = 0  # how much of self.text has been printed
        self.done = False
        if stream:
            print(tok.decode(prompt_ids), end='', flush=True)

    def add(self, token_id):
        """Take one token; True once the stop string has appeared."""
        piece = self.decoder.decode(self.tok.decode_bytes([token_id]))
        # a new match must end in the new piece: search from the first place it could begin
        first = max(0, len(self.text) - len(self.stop) + 1)
        self.text += piece
        if self.stop and piece:
            cut = self.text.find(self.stop, first)
            if cut >= 0:
                self.text, self.done = self.text[:cut], True
        if self.stream:
            # hold back a tail that could still grow into the stop string
            safe = len(self.text) if self.done or not self.stop else len(self.text) - len(self.stop) + 1
            if safe > self.shown:
                print(self.text[self.shown:safe], end='', flush=True)
                self.shown = safe
        return self.done

    def finish(self):
        if not self.done:
            self.text += self.decoder.decode(b'', final=True)
        if self.stream:
            print(self.text[self.shown:], flush=True)


def generate_samples(engine, tok, ids, c, device):
    """Yield the text of each sample (prompt included). Prints only when streaming."""
    x = torch.tensor(ids, dtype=torch.long, device=device)[None, ...]
    gen_kw = dict(temperature=c.temperature, top_k=c.top_k, top_p=c.top_p, use_cache=c.kv_cache)
    prompt_text = tok.decode(ids)
    n = len(ids)
    if c.batched:
        if not c.stop:
            y = engine.generate(x.expand(c.num_samples, -1), c.max_new_tokens, **gen_kw)
            for row in y[:, n:].tolist():
                yield prompt_text + tok.decode(row)
            return
        printers = [Printer(tok, ids, c.stop, False) for _ in range(c.num_samples)]

        def on_token(nxt):
            for p, t in zip(printers, nxt[:, 0].tolist()):
                if not p.done:
                    p.add(t)
            return all(p.done for p in printers)
        engine.generate(x.expand(c.num_samples, -1), c.max_new_tokens, on_token=on_token, **gen_kw)
        for p in printers:
            p.finish()
            yield prompt_text + p.text
        return
    for _ in range(c.num_samples):
        if not (c.stream or c.stop):
            # nothing to watch token by token: decode once at the end, no per-token host sync
            y = engine.generate(x, c.max_new_tokens, **gen_kw)
            yield prompt_text + tok.decode(y[0, n:].tolist())
            continue
        p = Printer(tok, ids, c.stop, c.stream)
        engine.generate(x, c.max_new_tokens, on_token=lambda nxt: p.add(nxt[0, 0].item()), **gen_kw)
        p.finish()
        yield prompt_text + p.text


def main(argv=None):
    c = SimpleNamespace(**apply_overrides(DEFAULTS, sys.argv[1:] if argv is None else argv))
    check_settings(c)
    dev = devices.resolve_device(c.device)
    device_type = devices.device_type_of(dev)
    model, tok = load_model(c)
    model.eval()
    model.to(dev)
    dt = devices.resolve_dtype(c.dtype, device_type, device=dev, cpu_bf16=True)
    engine = Engine(model, compile=devices.resolve_compile(c.compile, device_type))
    ids = read_prompt(c, tok)
    ctx = devices.autocast_ctx(device_type, dt)
    torch.manual_seed(c.seed)  # right before the first sample: draws do not depend on model loading
    if device_type == 'cuda':
        torch.cuda.manual_seed(c.seed)
    texts = []
    with torch.no_grad(), ctx:
        try:
            for text in generate_samples(engine, tok, ids, c, dev):
                if not c.stream or c.batched:
                    print(text)
                print(DASHES, flush=True)
                texts.append(text)
        except NonFiniteLogitsError:
            raise UserError(f"the model produced non-finite logits (inf or nan): the checkpoint is broken"
                            f"{'' if dt == 'float32' else f', or {dt} overflowed: try --dtype=float32'}") from None
    return texts


if __name__ == '__main__':
    run_cli(main)
