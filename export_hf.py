"""
Export a trained model (out_dir/ckpt.pt) as a Hugging Face GPT-2 directory.

    python export_hf.py --out_dir=out-shakespeare --hf_dir=hf-shakespeare
    python -c "from transformers import GPT2LMHeadModel, AutoTokenizer; \
        m = GPT2LMHeadModel.from_pretrained('hf-shakespeare'); t = AutoTokenizer.from_pretrained('hf-shakespeare')"
    python sample.py --init_from=hf-shakespeare      # and back into this project

Writes config.json, model.safetensors (and generation_config.json) with transformers'
save_pretrained, plus GPT-2's tokenizer files (vocab.json/merges.txt as tokenizer.json etc.), so
transformers loads model and tokenizer offline. Needs `pip install transformers`.

Only models that speak GPT-2's BPE vocabulary can be exported: vocab_size 50257, or GPT-2's
vocabulary padded to a multiple of 64 (train.py's default). For the padded one the 47 padding rows
of the shared embedding / output matrix are dropped: no token ever maps to them, and the logits of
the other 50257 tokens are unchanged. Character-level models (a meta.pkl vocabulary, e.g. 65 tokens) are
refused: the directory would have no tokenizer any Hugging Face tool could use.

The exported config names the activation the checkpoint computes: 'gelu' (exact GELU, this
project's default) or 'gelu_new' for a finetuned GPT-2 (the checkpoint's 'gelu_approximate' is
'tanh'), so Hugging Face reproduces the logits of `sample.py --out_dir=...`. Models trained
with bias=False get zero biases, which computes the same function.

Settings (--key=value):
    out_dir    the training run's directory (reads its ckpt.pt)
    hf_dir     where to write; default <out_dir>-hf
    dtype      float32, bfloat16 or float16 for the saved weights
    tokenizer  write GPT-2's tokenizer files too (fetched by tiktoken; False writes weights only)
    overwrite  replace an earlier export in hf_dir (a directory holding other files is never replaced)
"""

import inspect
import json
import os
import shutil
import sys
import tempfile

import torch

from configurator import apply_overrides, settings_of
from model import CONV1D_WEIGHTS
from nanogpt import devices, files
from nanogpt.checkpoint import clean_state_dict, load_checkpoint
from nanogpt.data import GPT2_PADDED_VOCAB, GPT2_VOCAB
from nanogpt.errors import UserError, run_cli
from nanogpt.shell import command

out_dir = 'out'
hf_dir = ''
dtype = 'float32'
tokenizer = True
overwrite = False
DEFAULTS = settings_of(globals())

EOT = 50256  # <|endoftext|>
# The GPT-2 BPE files as tiktoken fetches and caches them; the same bytes are the Hugging Face
# tokenizer's vocab.json and merges.txt. (url, sha256)
ENCODER_JSON = ('https://openaipublic.blob.core.windows.net/gpt-2/encodings/main/encoder.json',
                '196139668be63f3b5d6574427317ae82f612a97c5d1cdaf36ed2256dbf636783')
VOCAB_BPE = ('https://openaipublic.blob.core.windows.net/gpt-2/encodings/main/vocab.bpe',
             '1ce1664773c50f3e0cc8842619a93edc4624525b728b188a9e0be33b7726adc5')


def import_transformers():
    try:
        import transformers
    except ImportError:
        raise UserError("export needs the transformers package: pip install transformers") from None
    return transformers


def hf_config(model_args, transformers, gelu_approximate='none'):
    """The GPT2Config of an exported model."""
    return transformers.GPT2Config(
        vocab_size=GPT2_VOCAB, n_positions=model_args['block_size'], n_embd=model_args['n_embd'],
        n_layer=model_args['n_layer'], n_head=model_args['n_head'], n_inner=None,
        activation_function='gelu_new' if gelu_approximate == 'tanh' else 'gelu',  # as model.py's MLP
        resid_pdrop=model_args.get('dropout', 0.0), embd_pdrop=model_args.get('dropout', 0.0),
        attn_pdrop=model_args.get('dropout', 0.0), layer_norm_epsilon=1e-5,
        bos_token_id=EOT, eos_token_id=EOT, tie_word_embeddings=True)


def check_vocab(model_args, ckpt_path):
    vocab = model_args['vocab_size']
    if vocab not in (GPT2_VOCAB, GPT2_PADDED_VOCAB):
        raise UserError(f"{ckpt_path} has vocab_size {vocab}, not GPT-2's {GPT2_VOCAB} (or {GPT2_PADDED_VOCAB} "
                        f"padded): a character-level model has no Hugging Face tokenizer, so it cannot be "
                        f"exported; train on GPT-2 tokens (e.g. data/shakespeare) to export")


def convert_state_dict(state_dict, model_args, hf_sd):
    """Our weights in Hugging Face's layout, keyed like hf_sd (the target model's state_dict)."""
    n_embd = model_args['n_embd']
    out = {}
    for k, target in hf_sd.items():
        if k in state_dict:
            v = state_dict[k]
            if k.endswith(CONV1D_WEIGHTS):  # stored transposed by Hugging Face's Conv1D
                v = v.t()
            if k in ('transformer.wte.weight', 'lm_head.weight'):
                v = v[:GPT2_VOCAB]  # drop the padding rows of a padded vocabulary
        elif k.endswith('.bias') and not model_args['bias']:
            v = torch.zeros_like(target)  # a bias=False model computes what zero biases compute
        elif k.endswith(('.attn.bias', '.attn.masked_bias')):
            continue  # causal-mask buffers some transformers versions keep
        else:
            raise UserError(f"the checkpoint has no weight for {k}: is it a GPT model from this project?")
        if v.shape != target.shape:
            raise UserError(f"{k} has shape {tuple(v.shape)}, the GPT-2 layout needs {tuple(target.shape)} "
                            f"(n_embd={n_embd})")
        out[k] = v
    return out


def gpt2_tokenizer_files():
    """GPT-2's encoder.json and vocab.bpe bytes through tiktoken's cache (downloaded once, checked by
    sha256): the same files tiktoken.get_encoding('gpt2') uses in train.py and sample.py."""
    try:
        from tiktoken.load import read_file_cached
        return read_file_cached(*ENCODER_JSON), read_file_cached(*VOCAB_BPE)
    except Exception as e:
        raise UserError(f"cannot get GPT-2's tokenizer files through tiktoken ({type(e).__name__}: "
                        f"{str(e).splitlines()[0][:200] if str(e) else ''}); connect to the network once, "
                        f"or pass --tokenizer=False to export the weights only") from None


def build_tokenizer(transformers, block_size):
    encoder_json, vocab_bpe = gpt2_tokenizer_files()
    if 'vocab_file' in inspect.signature(transformers.GPT2Tokenizer.__init__).parameters:
        # transformers before 5 (the last for torch before 2.6) reads vocab.json and merges.txt from disk
        with tempfile.TemporaryDirectory() as d:
            files = {'vocab_file': os.path.join(d, 'vocab.json'), 'merges_file': os.path.join(d, 'merges.txt')}
            for path, content in zip(files.values(), (encoder_json, vocab_bpe)):
                with open(path, 'wb') as f:
                    f.write(content.encode('utf-8') if isinstance(content, str) else content)
            return transformers.GPT2Tokenizer(**files, model_max_length=block_size)
    vocab = json.loads(encoder_json)
    lines = vocab_bpe.decode('utf-8').split('\n')
    merges = [tuple(line.split(' ')) for line in lines[1:] if line]  # line 0 is '#version: 0.2'
    return transformers.GPT2Tokenizer(vocab=vocab, merges=merges, model_max_length=block_size)


EXPORT_FILES = {'config.json', 'generation_config.json', 'model.safetensors', 'model.safetensors.index.json',
                'pytorch_model.bin', 'tokenizer.json', 'tokenizer_config.json', 'special_tokens_map.json',
                'vocab.json', 'merges.txt', 'added_tokens.json', 'chat_template.jinja', 'README.md'}


def is_export_file(name):
    """Whether `name` is a file that save_pretrained writes for GPT-2 (weights may be sharded)."""
    return name in EXPORT_FILES or (name.startswith('model-') and name.endswith('.safetensors'))


def export(c):
    """Write c.hf_dir from c.out_dir/ckpt.pt; returns the directory."""
    if c.dtype not in ('float32', 'bfloat16', 'float16'):
        raise UserError(f"unknown dtype {c.dtype!r}: use float32, bfloat16 or float16")
    target = c.hf_dir or c.out_dir.rstrip('/\\') + '-hf'
    if os.path.exists(target) and not os.path.isdir(target):
        raise UserError(f"hf_dir {target!r} is a file: choose another --hf_dir")
    existing = os.listdir(target) if os.path.isdir(target) else []
    if existing and not c.overwrite:
        raise UserError(f"hf_dir {target!r} already exists and is not empty: choose another --hf_dir "
                        f"or pass --overwrite=True")
    foreign = sorted(f for f in existing if not is_export_file(f))
    if foreign:  # --overwrite replaces an earlier export, never a directory holding anything else
        raise UserError(f"hf_dir {target!r} holds {foreign[0]!r}, which is not part of a Hugging Face "
                        f"export: refusing to replace it; choose another --hf_dir")
    ckpt_path = os.path.join(c.out_dir, 'ckpt.pt')
    ckpt = load_checkpoint(ckpt_path)
    model_args = ckpt['model_args']
    check_vocab(model_args, ckpt_path)
    transformers = import_transformers()
    tok = build_tokenizer(transformers, model_args['block_size']) if c.tokenizer else None

    hf = transformers.GPT2LMHeadModel(hf_config(model_args, transformers, ckpt.get('gelu_approximate', 'none')))
    hf_sd = hf.state_dict()  # tensors sharing storage with the model's parameters
    with torch.no_grad():
        for k, v in convert_state_dict(clean_state_dict(ckpt['model']), model_args, hf_sd).items():
            hf_sd[k].copy_(v)
    hf.to(devices.PTDTYPES[c.dtype])

    # write next to the target, then rename: an interrupted export leaves no half directory
    parent = os.path.dirname(os.path.abspath(target))
    os.makedirs(parent, exist_ok=True)
    tmp = os.path.join(parent, f".{os.path.basename(os.path.abspath(target))}.tmp{os.getpid()}")
    try:
        hf.save_pretrained(tmp)
        if tok is not None:
            tok.save_pretrained(tmp)
        try:
            if os.path.isdir(target):
                shutil.rmtree(target)
            files.replace(tmp, target)
        except PermissionError as e:  # on Windows, mostly: a program holds a file of the old export open
            raise UserError(f"cannot replace {target}: {e.strerror}; close the program that uses it, or "
                            f"export to another --hf_dir") from None
    finally:
        if os.path.isdir(tmp):
            shutil.rmtree(tmp)
    vocab = model_args['vocab_size']
    print(f"exported {ckpt_path} (iter {ckpt.get('iter_num', '?')}, n_layer={model_args['n_layer']}, "
          f"n_embd={model_args['n_embd']}, vocab {vocab}"
          f"{f' -> {GPT2_VOCAB}, padding rows dropped' if vocab != GPT2_VOCAB else ''}) to {target}/: "
          f"{', '.join(sorted(os.listdir(target)))}")
    if tok is None:
        print("no tokenizer written (--tokenizer=False): GPT-2's tokenizer (AutoTokenizer 'gpt2') fits it")
    print(f"load it with: GPT2LMHeadModel.from_pretrained({target!r}), or "
          + command('python', 'sample.py', f'--init_from={target}'))
    return target


def main(argv=None):
    from types import SimpleNamespace
    devices.check_torch_version()
    c = SimpleNamespace(**apply_overrides(DEFAULTS, sys.argv[1:] if argv is None else argv))
    return export(c)


if __name__ == '__main__':
    run_cli(main)
