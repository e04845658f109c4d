"""sample.py: the text it prints with the cache on and off, stop strings, streaming (never half a
character), batched mode, token ids, greedy text at a vanishing temperature; the tokenizer that
belongs to a model (characters, a tiktoken encoding named by meta.pkl, token ids where none is
known); and sample.py's one-line errors (run as real subprocesses, offline). The engine that draws
the tokens: tests/test_engine.py."""

import os
import pickle
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
import torch

from nanogpt.checkpoint import save_checkpoint
from nanogpt.errors import UserError
from conftest import make_char_dataset, no_network_env, run_script, seed_cache, tiny_model, write_checkpoint

pytestmark = pytest.mark.usefixtures('one_thread')


# ---- sample.py in-process: stop, stream, batched ------------------------------------------------

def run_sample(capsys, out_dir, *args):
    import sample
    capsys.readouterr()
    texts = sample.main([f'--out_dir={out_dir}', '--device=cpu', '--dtype=float32', '--start=ROMEO:',
                         '--num_samples=2', '--max_new_tokens=45', *args])
    return texts, capsys.readouterr().out


def test_kv_cache_flag_prints_identical_text(char_checkpoint, capsys):
    out, _ = char_checkpoint
    cached, cached_out = run_sample(capsys, out, '--kv_cache=True')  # 6 + 45 tokens > block_size 32
    ref, ref_out = run_sample(capsys, out, '--kv_cache=False')
    assert cached == ref and cached_out.replace('kv_cache = True', '') == ref_out.replace('kv_cache = False', '')
    assert len(cached) == 2 and all(t.startswith('ROMEO:') and len(t) == 6 + 45 for t in cached)
    assert cached_out.count('\n---------------\n') == 2
    assert 'Loading meta from ' in cached_out
    assert cached[0] != cached[1]  # the seed is set once, before the first sample


def test_stop_string_ends_a_sample_early(char_checkpoint, capsys):
    out, _ = char_checkpoint
    full, _ = run_sample(capsys, out, '--num_samples=1')
    generated = full[0][len('ROMEO:'):]
    stop = generated[20:22]  # a string the sample is known to contain; it may occur earlier too
    stopped, printed = run_sample(capsys, out, '--num_samples=1', f'--stop={stop}')
    # the same draws up to the stop string, which is not printed
    assert stopped == ['ROMEO:' + generated[:generated.index(stop)]]
    assert printed.endswith(stopped[0] + '\n---------------\n')


@pytest.mark.parametrize('extra', [[], ['--stop=e']], ids=['no-stop', 'stop'])
def test_stream_prints_exactly_the_non_stream_output(char_checkpoint, capsys, extra):
    out, _ = char_checkpoint
    texts, plain = run_sample(capsys, out, '--stream=False', *extra)
    streamed_texts, streamed = run_sample(capsys, out, '--stream=True', *extra)
    assert streamed_texts == texts
    assert streamed.replace('stream = True', '') == plain.replace('stream = False', '')


def test_batched_mode_returns_num_samples_texts(char_checkpoint, capsys):
    out, _ = char_checkpoint
    texts, printed = run_sample(capsys, out, '--batched=True', '--num_samples=3')
    assert len(texts) == 3 and all(t.startswith('ROMEO:') and len(t) == 6 + 45 for t in texts)
    assert printed.count('\n---------------\n') == 3
    stopped, _ = run_sample(capsys, out, '--batched=True', '--num_samples=3', '--stop=e')
    assert len(stopped) == 3 and all('e' not in t[len('ROMEO:'):] for t in stopped)


def test_broken_logits_are_a_user_error(char_checkpoint, tmp_path):
    import sample
    out, dataset = char_checkpoint
    ckpt = torch.load(os.path.join(out, 'ckpt.pt'), weights_only=True)
    ckpt['model'] = {k: (v.fill_(3e38) if k.endswith('lm_head.weight') else v) for k, v in ckpt['model'].items()}
    os.makedirs(tmp_path / 'huge')
    save_checkpoint(ckpt, str(tmp_path / 'huge' / 'ckpt.pt'))
    with pytest.raises(UserError, match='non-finite logits'):
        sample.main([f'--out_dir={tmp_path / "huge"}', '--device=cpu', '--dtype=float32', '--max_new_tokens=3'])



def test_sample_py_at_a_vanishing_temperature_prints_the_greedy_text(char_checkpoint):
    """1e-45 (float32's smallest) overflows every logit of a random model: sample.py used to stop
    with an error there; now it draws the argmax, as temperature=0 does."""
    import sample
    out, _ = char_checkpoint
    common_args = [f'--out_dir={out}', '--device=cpu', '--dtype=float32', '--start=ROMEO:',
                   '--num_samples=2', '--max_new_tokens=40']
    greedy = sample.main(common_args + ['--temperature=0'])
    assert sample.main(common_args + ['--temperature=1e-45']) == greedy
    assert sample.main(common_args + ['--temperature=1e-45', '--batched=True', '--stop=xyz']) == greedy


# ---- streaming BPE never prints half a character -------------------------------------------------

class ByteTokenizer:
    """A tokenizer whose tokens are single bytes: every multi-byte character is split."""

    def decode_bytes(self, ids):
        return bytes(ids)

    def decode(self, ids):
        return bytes(ids).decode('utf-8', errors='replace')


def stream_tokens(tok, ids, capsys, stop=''):
    import sample
    capsys.readouterr()
    p = sample.Printer(tok, [], stop, stream=True)
    pieces = []
    for t in ids:
        p.add(t)
        pieces.append(capsys.readouterr().out)
        if p.done:
            break
    p.finish()
    pieces.append(capsys.readouterr().out)
    return p.text, pieces


TEXT = 'héllo wörld ✓ 日本語 🙂!'


def test_stream_holds_back_split_utf8_characters(capsys):
    text, pieces = stream_tokens(ByteTokenizer(), list(TEXT.encode('utf-8')), capsys)
    assert text == TEXT
    assert ''.join(pieces) == TEXT + '\n'
    assert all('\ufffd' not in piece for piece in pieces)
    assert '' in pieces[:-1]  # some bytes were held back until their character was complete


def test_stream_stop_string_is_never_printed(capsys):
    text, pieces = stream_tokens(ByteTokenizer(), list(TEXT.encode('utf-8')), capsys, stop='日本')
    assert text == 'héllo wörld ✓ '
    assert ''.join(pieces) == text + '\n'


def test_stream_gpt2_bpe_tokens(tmp_path, capsys):
    seed_cache(str(tmp_path / 'tiktoken'))
    from nanogpt.data import Tokenizer
    tok = Tokenizer()
    ids = tok.encode(TEXT)
    # GPT-2 BPE splits some of these characters across tokens: the case the decoder must handle
    assert any(b'\xef\xbf\xbd' in tok.decode(ids[i:i + 1]).encode() for i in range(len(ids)))
    text, pieces = stream_tokens(tok, ids, capsys)
    assert text == TEXT and ''.join(pieces) == TEXT + '\n'
    assert all('\ufffd' not in piece for piece in pieces)


# ---- sample.py's one-line errors, each from a real subprocess -------------------------------------

def dataset_with_meta(path, meta, vocab):
    """A dataset folder whose meta.pkl is `meta` (None: no meta.pkl), with a valid train.bin."""
    os.makedirs(path, exist_ok=True)
    (np.arange(64) % vocab).astype(np.uint16).tofile(os.path.join(path, 'train.bin'))
    if meta is not None:
        with open(os.path.join(path, 'meta.pkl'), 'wb') as f:
            pickle.dump(meta, f)
    return str(path)


@pytest.fixture(scope='module')
def error_runs(char_checkpoint, tmp_path_factory):
    """Every error case run as `python sample.py ...`, several at a time (each pays torch's import);
    the cases that load a tokenizer run with tiktoken's download failing, as offline."""
    out, dataset = char_checkpoint
    root = tmp_path_factory.mktemp('errors')
    vocab = pickle.load(open(os.path.join(dataset, 'meta.pkl'), 'rb'))['vocab_size']
    # the tokenizer of another dataset: a meta.pkl whose vocabulary is one larger
    other = make_char_dataset(root / 'other')
    with open(os.path.join(other, 'meta.pkl'), 'rb') as f:
        meta = pickle.load(f)
    meta['itos'][vocab] = '~'
    meta['stoi']['~'] = vocab
    meta['vocab_size'] = vocab + 1
    with open(os.path.join(other, 'meta.pkl'), 'wb') as f:
        pickle.dump(meta, f)
    write_checkpoint(str(root / 'mismatch'), tiny_model(vocab_size=vocab), other)
    broken = tiny_model(vocab_size=vocab)
    with torch.no_grad():
        broken.transformer.h[1].mlp.c_fc.weight[0, 0] = float('nan')
    write_checkpoint(str(root / 'nan'), broken, dataset)
    os.makedirs(root / 'empty')
    # ids of a tokenizer meta.pkl does not name; a character model whose meta.pkl is gone; a meta.pkl
    # naming GPT-2 BPE, whose files tiktoken cannot download here
    write_checkpoint(str(root / 'ids-only'), tiny_model(vocab_size=vocab), dataset_with_meta(root / 'ids', {'vocab_size': vocab}, vocab))
    write_checkpoint(str(root / 'meta-gone'), tiny_model(vocab_size=vocab), dataset_with_meta(root / 'gone', None, vocab))
    write_checkpoint(str(root / 'gpt2-meta'), tiny_model(vocab_size=50257, block_size=8),
                     dataset_with_meta(root / 'bpe', {'vocab_size': 50257, 'tokenizer': 'gpt2'}, 50257))
    (root / 'latin1.txt').write_bytes('caf\xe9'.encode('latin-1'))
    from transformers import GPT2Config, GPT2LMHeadModel  # a Hugging Face GPT-2 of another vocabulary
    GPT2LMHeadModel(GPT2Config(vocab_size=101, n_positions=16, n_embd=16, n_layer=1, n_head=2, bos_token_id=0,
                               eos_token_id=0)).save_pretrained(root / 'hf')
    offline = dict(no_network_env(root / 'empty-tiktoken-cache'), OMP_NUM_THREADS='1')
    cases = {
        'unknown chars': [f'--out_dir={out}', '--start=zebra?'],
        'empty prompt': [f'--out_dir={out}', '--start='],
        'missing prompt file': [f'--out_dir={out}', f'--start=FILE:{root / "nope.txt"}'],
        'prompt file not UTF-8': [f'--out_dir={out}', f'--start=FILE:{root / "latin1.txt"}'],
        'missing out_dir': [f'--out_dir={root / "no-such-dir"}'],
        'missing ckpt': [f'--out_dir={root / "empty"}'],
        'vocab mismatch': [f'--out_dir={root / "mismatch"}'],
        'nan weights': [f'--out_dir={root / "nan"}'],
        'meta.pkl with vocab_size only': [f'--out_dir={root / "ids-only"}'],
        'char model, meta.pkl gone, offline': [f'--out_dir={root / "meta-gone"}'],
        'tiktoken download fails offline': [f'--out_dir={root / "gpt2-meta"}'],
        'Hugging Face directory of another vocabulary, offline': [f'--init_from={root / "hf"}'],
    }
    with ThreadPoolExecutor(max_workers=4) as pool:
        # later arguments win, so a case's own --max_new_tokens overrides the short default
        futures = {name: pool.submit(run_script, 'sample.py', '--device=cpu', '--max_new_tokens=5', *args, env=offline)
                   for name, args in cases.items()}
        return {name: f.result() for name, f in futures.items()}, dict(root=str(root), dataset=dataset,
                                                                        vocab=vocab)


@pytest.mark.parametrize('name, expected', [
    ('unknown chars', ["'z'", "'b'", "'?'", 'not in the vocabulary', 'meta.pkl', 'toy']),
    ('empty prompt', ['prompt is empty', "--start="]),
    ('missing prompt file', ['the prompt file', 'nope.txt', 'does not exist']),
    ('prompt file not UTF-8', ['the prompt file', 'latin1.txt', 'is not UTF-8 text (byte 3)']),
    ('meta.pkl with vocab_size only', ['ids/meta.pkl holds only vocab_size (30)', "'tokenizer'", "'stoi' and 'itos'",
                                       'data/prepare_text.py', '--tokens=True --start=IDS:0']),
    # checked before tiktoken is asked for GPT-2 BPE: no download, no network error
    ('char model, meta.pkl gone, offline', ["vocab_size 30 is not GPT-2's 50257", 'gone/meta.pkl is missing',
                                            "prepare.py", '--tokens=True']),
    ('Hugging Face directory of another vocabulary, offline', ["vocab_size 101 is not GPT-2's 50257",
                                                               'a Hugging Face directory carries none', '--tokens=True']),
    ('tiktoken download fails offline', ["cannot load tiktoken's 'gpt2' encoding (ProxyError)", 'network',
                                         'TIKTOKEN_CACHE_DIR']),
    ('missing out_dir', ['no-such-dir', 'does not exist', 'python train.py']),
    ('missing ckpt', ['no checkpoint at', 'ckpt.pt', 'python train.py']),
    ('vocab mismatch', ['other', 'meta.pkl', 'does not belong to the model']),
    ('nan weights', ['non-finite weights', 'transformer.h.1.mlp.c_fc.weight']),
])
def test_sample_errors_are_one_line(error_runs, name, expected):
    runs, info = error_runs
    r = runs[name]
    assert r.returncode == 2, (r.stdout, r.stderr)
    assert 'Traceback' not in r.stderr
    # transformers draws its own progress bar while it loads a Hugging Face directory
    lines = [line for line in r.stderr.splitlines() if line.strip() and not line.startswith('Loading weights')]
    assert len(lines) == 1 and lines[0].startswith('error: '), r.stderr
    for part in expected:
        assert part in lines[0], lines[0]
    if name == 'vocab mismatch':
        assert f"vocab_size {info['vocab'] + 1}" in lines[0] and str(info['vocab']) in lines[0]


@pytest.mark.parametrize('arg, message', [
    ('--num_samples=0', 'num_samples must be at least 1, got 0'),
    ('--max_new_tokens=0', 'max_new_tokens must be at least 1, got 0'),
    ('--temperature=-0.5', 'temperature must be 0 (greedy) or more, got -0.5'),
    ('--top_k=0', 'top_k must be at least 1, got 0'),
    ('--top_p=0', 'top_p must be in (0, 1], got 0'),
    ('--top_p=1.5', 'top_p must be in (0, 1], got 1.5'),
    ('--tokens=True --stop=x', 'stop matches text, and tokens=True prints token ids'),
    ('--seed=18446744073709551616', 'seed must be an integer from -2**63 to 2**64-1, got 18446744073709551616'),
])
def test_bad_sampling_settings_are_user_errors(arg, message):
    """The settings checks run before anything is loaded; the subprocess cases above already show
    that a UserError reaches the user as one line with exit code 2."""
    import sample
    with pytest.raises(UserError) as e:
        sample.main([*arg.split(), '--out_dir=never-read'])
    assert message in str(e.value)


# ---- the tokenizer that belongs to the model -------------------------------------------------------

def test_tokens_prints_the_ids_of_the_text_sample(char_checkpoint, capsys):
    """--tokens=True draws the same tokens and prints their ids; with --start=IDS: it needs no
    tokenizer at all (a meta.pkl that holds vocab_size alone)."""
    out, dataset = char_checkpoint
    meta = pickle.load(open(os.path.join(dataset, 'meta.pkl'), 'rb'))
    texts, _ = run_sample(capsys, out)
    prompt = ','.join(str(meta['stoi'][ch]) for ch in 'ROMEO:')
    for start in ('--start=ROMEO:', f'--start=IDS:{prompt}'):
        ids, printed = run_sample(capsys, out, '--tokens=True', start)
        assert [''.join(meta['itos'][int(i)] for i in t.split()) for t in ids] == texts
        assert all(t.endswith(' ') and t.split()[:6] == prompt.split(',') for t in ids)
        assert ids[0] + '\n---------------\n' in printed
    ids_only = os.path.join(os.path.dirname(out), 'ids-only')
    write_checkpoint(ids_only, tiny_model(vocab_size=meta['vocab_size'], block_size=32, bias=False),
                     dataset_with_meta(os.path.join(os.path.dirname(out), 'ids'), {'vocab_size': meta['vocab_size']},
                                       meta['vocab_size']))
    ids, printed = run_sample(capsys, ids_only, '--tokens=True', f'--start=IDS:{prompt}')
    assert len(ids) == 2 and all(len(t.split()) == 6 + 45 for t in ids) and 'meta' not in printed
    for bad in ('IDS:1,x', f"IDS:{meta['vocab_size']}", 'IDS:-1'):
        with pytest.raises(UserError, match=f"takes token ids below the model's vocab_size {meta['vocab_size']}"):
            run_sample(capsys, ids_only, '--tokens=True', f'--start={bad}')


def test_meta_pkl_naming_a_tiktoken_encoding(tmp_path, capsys, monkeypatch):
    """meta.pkl {'vocab_size': 50257, 'tokenizer': 'gpt2'} (what prepare_text.py --bpe writes) decodes
    with that encoding; one whose model has fewer ids than the encoding is refused."""
    monkeypatch.setenv('TIKTOKEN_CACHE_DIR', seed_cache(str(tmp_path / 'tiktoken'), set_env=False))
    bpe = dataset_with_meta(tmp_path / 'bpe', {'vocab_size': 50257, 'tokenizer': 'gpt2'}, 50257)
    write_checkpoint(str(tmp_path / 'out'), tiny_model(vocab_size=50257, block_size=8), bpe)
    texts, printed = run_sample(capsys, str(tmp_path / 'out'), '--start=ROMEO: héllo', '--max_new_tokens=4')
    assert f'Loading meta from {bpe}/meta.pkl...' in printed and texts[0].startswith('ROMEO: héllo')
    small = dataset_with_meta(tmp_path / 'small', {'vocab_size': 50, 'tokenizer': 'gpt2'}, 50)
    write_checkpoint(str(tmp_path / 'small-out'), tiny_model(vocab_size=50), small)
    with pytest.raises(UserError, match="names tiktoken's 'gpt2', 50257 tokens, but the model has only 50"):
        run_sample(capsys, str(tmp_path / 'small-out'))


def test_separator_starts_an_empty_prompt_and_string_vocabularies_encode_longest_first():
    from nanogpt.data import Tokenizer
    words = ['the ', 'th', 't', 'h', 'e', ' ', '\u2403']
    meta = {'vocab_size': len(words), 'stoi': {w: i for i, w in enumerate(words)},
            'itos': dict(enumerate(words)), 'separator': '\u2403'}
    tok = Tokenizer(meta, 'meta.pkl')
    assert tok.encode('the the') == [0, 1, 4] and tok.decode([0, 1, 4]) == 'the the'
    assert tok.eot == 6  # the separator: a sample with an empty prompt starts a new document
    with pytest.raises(UserError, match="not in the vocabulary of meta.pkl: 'x'"):
        tok.encode('the x')
