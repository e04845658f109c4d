"""
Sample text from a trained model (out_dir/ckpt.pt) or from OpenAI's GPT-2.

    python sample.py --out_dir=out-shakespeare-char --start="ROMEO:" --num_samples=5
    python sample.py --init_from=gpt2 --start="What is the answer to life?" --max_new_tokens=50
    python sample.py --out_dir=out-shakespeare-char --start=FILE:prompt.txt --stream=True
    python sample.py --out_dir=out-shakespeare-char --temperature=0 --stop=$'\n\n'
    python sample.py --out_dir=out-mine --tokens=True --start=IDS:0,17   # token ids, no tokenizer needed

Each sample is printed with its prompt, followed by a line of 15 dashes. The same checkpoint,
seed and settings print the same text. The tokens are drawn by nanogpt/engine.py, with a key/value
cache; kv_cache=False re-runs the model on the whole context for each token, as the original does,
and draws the same tokens in float32 (in bfloat16 rounding may part them), slower. The tokenizer is
the one that belongs to the model: its dataset's meta.pkl (characters, or a tiktoken encoding it
names), GPT-2 BPE where there is none; one that does not fit the model is refused, never used
(nanogpt/data.py, tokenizer_for).
"""

import codecs
import os
import sys
from types import SimpleNamespace

import torch

from configurator import apply_overrides, settings_of
from model import GPT
from nanogpt import devices
from nanogpt.checkpoint import first_model_recipe, init_checkpoint_path, init_source, load_checkpoint, model_from_checkpoint
from nanogpt.data import TokenIds, read_text_file, tokenizer_for
from nanogpt.engine import Engine, NonFiniteLogitsError
from nanogpt.errors import UserError, run_cli

# -----------------------------------------------------------------------------------------------
init_from = 'resume'  # 'resume' (out_dir/ckpt.pt), a checkpoint file, or a GPT-2 name ('gpt2', 'gpt2-xl', ...)
out_dir = 'out'
start = "\n"  # the prompt; "FILE:prompt.txt" reads it from a file; "IDS:12,7" gives token ids; "<|endoftext|>" works for GPT-2
num_samples = 10
max_new_tokens = 500  # tokens generated per sample
temperature = 0.8  # 1.0 = the model's distribution, lower = more conservative, 0 = greedy (argmax)
top_k = 200  # keep only the top_k most likely tokens
top_p = 1.0  # nucleus sampling: keep the most likely tokens holding top_p of the mass; 1.0 = off
stop = ''  # end a sample early at this string (not printed); '' = never
stream = False  # print each token as it is produced (one-by-one mode; batched prints at the end)
batched = False  # draw all num_samples at once: faster, but not the same draws as one by one
kv_cache = True  # False: the uncached reference algorithm (the same tokens in float32, slower)
seed = 1337
device = 'auto'  # 'cpu', 'cuda', 'cuda:0', 'mps'
dtype = 'auto'  # 'float32', 'bfloat16', 'float16'; auto: bfloat16 on GPUs and on CPUs with bf16 units
compile = False  # torch.compile the model (pays only for long generations on GPU)
tokens = False  # print token ids instead of text (with --start=IDS:..., no tokenizer is needed)
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
    if c.tokens and c.stop:
        raise UserError("stop matches text, and tokens=True prints token ids: drop --stop, or --tokens=False")
    if not -2 ** 63 <= c.seed < 2 ** 64:  # what torch.manual_seed takes
        raise UserError(f"seed must be an integer from -2**63 to 2**64-1, got {c.seed} (e.g. --seed=1337)")


def load_model(c):
    """The model and the tokenizer that belongs to it (token ids alone with tokens=True)."""
    named = c.init_from != 'resume' and init_checkpoint_path(c.init_from)  # a ckpt.pt, or an out_dir
    if c.init_from == 'resume' or named:
        if not named and not os.path.isdir(c.out_dir):
            raise UserError(f"out_dir {c.out_dir!r} does not exist: train a model first, e.g. {first_model_recipe()}")
        ckpt = load_checkpoint(named or os.path.join(c.out_dir, 'ckpt.pt'), 'cpu')
        model = model_from_checkpoint(ckpt, dropout=0.0)
        dataset = (ckpt.get('config') or {}).get('dataset')
    elif init_source(c.init_from) in ('gpt2', 'hf'):
        try:
            model = GPT.from_pretrained(c.init_from, dict(dropout=0.0))
        except (ImportError, OSError, ValueError) as e:  # from_pretrained's one-line messages
            raise UserError(str(e)) from None
        dataset = None  # OpenAI's vocabulary: GPT-2 BPE
    else:
        raise UserError(f"unknown init_from {c.init_from!r}: use resume, a checkpoint (an out_dir or its "
                        f"ckpt.pt), or a GPT-2 name (gpt2, gpt2-medium, gpt2-large, gpt2-xl)")
    bad = [n for n, p in model.named_parameters() if not torch.isfinite(p).all()]
    if bad:
        raise UserError(f"the checkpoint is broken: non-finite weights in {bad[0]}"
                        f"{f' and {len(bad) - 1} more' if len(bad) > 1 else ''}")
    # token ids in and out need no tokenizer, so none is looked for (its files may be offline)
    tok = None if c.tokens and c.start.startswith('IDS:') else tokenizer_for(dataset, model.config.vocab_size)
    return model, (TokenIds(tok) if c.tokens else tok)


def read_prompt(c, tok, vocab_size):
    text = c.start
    if text.startswith('IDS:'):
        given = text[4:].replace(',', ' ').split()
        ids = [int(t) for t in given if t.isascii() and t.isdigit()]
        if len(ids) != len(given) or any(i >= vocab_size for i in ids):
            raise UserError(f"--start=IDS: takes token ids below the model's vocab_size {vocab_size}, separated "
                            f"by commas, e.g. --start=IDS:0,17; got {text[4:]!r}")
    else:
        if text.startswith('FILE:'):
            text, why = read_text_file(text[5:])
            if why:
                raise UserError(f"the prompt file {c.start[5:]!r} {why}: give a UTF-8 text file")
        ids = tok.encode(text)
    if not ids:
        if tok.eot is None:
            raise UserError("the prompt is empty and this vocabulary has no start token: give at least one "
                            "character, e.g. --start='\\n', or token id (--start=IDS:0)")
        ids = [tok.eot]  # GPT-2 starts documents after <|endoftext|>; prepare_text.py's after its separator
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
    """Yield the text of each sample (prompt included): all num_samples drawn at once (batched),
    or one after another. Prints only when streaming."""
    if c.batched:
        yield from draw_at_once(engine, tok, ids, c, device, c.num_samples, stream=False)
    else:
        for _ in range(c.num_samples):
            yield from draw_at_once(engine, tok, ids, c, device, 1, c.stream)


def draw_at_once(engine, tok, ids, c, device, rows, stream):
    """The texts of `rows` samples drawn together from the prompt `ids`. Watched token by token
    (Printer) only where a stop string or streaming needs it: otherwise the tokens are decoded once
    at the end, with no host sync per token."""
    x = torch.tensor(ids, dtype=torch.long, device=device)[None, ...].expand(rows, -1)
    prompt_text = tok.decode(ids)
    printers = [Printer(tok, ids, c.stop, stream) for _ in range(rows)] if c.stop or stream else []

    def on_token(nxt):
        for p, t in zip(printers, nxt[:, 0].tolist()):
            if not p.done:
                p.add(t)
        return all(p.done for p in printers)
    y = engine.generate(x, c.max_new_tokens, temperature=c.temperature, top_k=c.top_k, top_p=c.top_p,
                        use_cache=c.kv_cache, on_token=on_token if printers else None)
    if not printers:
        return [prompt_text + tok.decode(row) for row in y[:, len(ids):].tolist()]
    for p in printers:
        p.finish()
    return [prompt_text + p.text for p in printers]


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
    ids = read_prompt(c, tok, model.config.vocab_size)
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
