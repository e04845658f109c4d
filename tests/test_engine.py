"""The sampling engine (nanogpt/engine.py): the KV-cached generate against the uncached reference
and model.py's plain generate, compiled or not; the sampling numerics (temperature, top-k, top-p,
greedy, temperatures so small that logits / temperature overflows); non-finite logits, which raise
and never reach multinomial, noticed through a flag read at planned points rather than once per
token; and cuDNN attention kept out of decoding on CUDA. sample.py itself: tests/test_sampling.py."""

import math

import pytest
import torch
import torch.nn.functional as F

from conftest import tiny_model
from nanogpt import engine
from nanogpt.engine import NonFiniteLogitsError, next_token_probs, sample_next

pytestmark = pytest.mark.usefixtures('one_thread')

BLOCK = 16  # tiny_model's block_size


# ---- the cached path draws the tokens of the reference -------------------------------------------

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


# ---- sampling numerics: top-k, top-p, tiny temperatures, non-finite logits ------------------------

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


def plain_probs(logits, temperature, top_k=None, top_p=None):
    """nanoGPT's arithmetic, as sample_next did it before: divide, top_k, (top_p), softmax."""
    logits = logits.float() / temperature
    if top_k is not None and top_k < logits.size(-1):
        v, _ = torch.topk(logits, top_k)
        logits = logits.masked_fill(logits < v[:, [-1]], -float('Inf'))
    if top_p is not None and top_p < 1.0:
        sorted_logits, sorted_idx = torch.sort(logits, descending=True)
        sorted_probs = F.softmax(sorted_logits, dim=-1)
        drop = torch.cumsum(sorted_probs, dim=-1) - sorted_probs >= top_p
        logits = logits.scatter(1, sorted_idx, sorted_logits.masked_fill(drop, -float('Inf')))
    return F.softmax(logits, dim=-1)


@pytest.mark.parametrize('top_k', [None, 2])
def test_tiny_temperature_gives_finite_probabilities_that_draw_the_argmax(top_k):
    # row 0 overflows at 1e-30 (3e9 / 1e-30 > 3.4e38); row 1 does not (5e29), row 2 overflows
    # to -inf everywhere, row 3 only at 1e-45
    logits = torch.tensor([[1e9, 3e9, -2e9, 2.9e9],
                           [0.5, -1.0, 0.25, 0.0],
                           [-1e9, -2e9, -3e9, -1.5e9],
                           [0.3, 0.2, 0.9, 0.1]])
    for t in (1e-30, 1e-45):
        assert not torch.isfinite(plain_probs(logits, t, top_k)).all()  # what nanoGPT's arithmetic gives
        probs = next_token_probs(logits, t, top_k)
        assert torch.isfinite(probs).all()
        assert torch.equal(probs, F.one_hot(logits.argmax(-1), 4).float())
        for seed in range(5):
            torch.manual_seed(seed)
            assert sample_next(logits, t, top_k).flatten().tolist() == [1, 0, 0, 2]
    # where the plain arithmetic is finite, the result is the plain one, bit for bit
    assert torch.equal(next_token_probs(logits[1:2], 1e-30), plain_probs(logits[1:2], 1e-30))


@pytest.mark.parametrize('temperature', [0.05, 0.3, 0.8, 1.0, 1.7])
@pytest.mark.parametrize('top_k, top_p', [(None, None), (50, None), (None, 0.9), (200, 0.5)])
def test_normal_temperatures_are_bit_identical_to_the_plain_formula(temperature, top_k, top_p):
    g = torch.Generator().manual_seed(1)
    logits = torch.randn(4, 1000, generator=g) * 6
    probs = next_token_probs(logits, temperature, top_k, top_p)
    assert torch.equal(probs, plain_probs(logits, temperature, top_k, top_p))
    torch.manual_seed(7)
    drawn = sample_next(logits, temperature, top_k, top_p)
    torch.manual_seed(7)
    assert torch.equal(drawn, torch.multinomial(plain_probs(logits, temperature, top_k, top_p), 1))


def test_non_finite_logits_never_give_non_finite_probabilities():
    logits = torch.tensor([[float('nan'), 1.0, 2.0], [float('inf'), 0.0, float('inf')],
                           [-float('inf')] * 3, [1.0, -float('inf'), 0.0]])
    for t in (1e-30, 0.8, 5.0):
        for top_k in (None, 2):
            probs = next_token_probs(logits, t, top_k)
            assert torch.isfinite(probs).all() and torch.allclose(probs.sum(-1), torch.ones(4))
    assert torch.equal(next_token_probs(logits, 1.0)[1], torch.tensor([0.5, 0.0, 0.5]))  # the +inf ones
    # a row with -inf entries but a finite maximum is plain softmax
    assert torch.equal(next_token_probs(logits[3:], 0.8), plain_probs(logits[3:], 0.8))


# ---- non-finite logits raise; the device is read only at planned points ---------------------------

def test_non_finite_logits_raise_before_multinomial():
    m = tiny_model()
    with torch.no_grad():
        m.lm_head.weight.fill_(3e38)  # finite weights whose logits overflow
    for use_cache in (True, False):
        with pytest.raises(NonFiniteLogitsError):
            engine.Engine(m).generate(torch.tensor([[1, 2]]), 3, use_cache=use_cache)


def count_host_reads(monkeypatch):
    """Count every bool()/item() of a tensor, and generate()'s planned finiteness checks."""
    counts = {'bool': 0, 'item': 0, 'checks': 0}
    tensor_bool, tensor_item, check = torch.Tensor.__bool__, torch.Tensor.item, engine.check_logits_finite

    def counted_bool(self):
        counts['bool'] += 1
        return tensor_bool(self)

    def counted_item(self):
        counts['item'] += 1
        return tensor_item(self)

    def counted_check(finite):
        counts['checks'] += 1
        return check(finite)
    monkeypatch.setattr(torch.Tensor, '__bool__', counted_bool)
    monkeypatch.setattr(torch.Tensor, 'item', counted_item)
    monkeypatch.setattr(engine, 'check_logits_finite', counted_check)
    return counts


@pytest.mark.parametrize('use_cache', [True, False])
def test_generate_reads_the_finiteness_flag_only_at_planned_points(monkeypatch, use_cache):
    m = tiny_model()
    prompt = torch.tensor([[1, 2, 3], [4, 5, 6]])
    torch.manual_seed(0)
    expected = engine.Engine(m).generate(prompt, 150, temperature=0.8, top_k=5, use_cache=use_cache)
    counts = count_host_reads(monkeypatch)
    torch.manual_seed(0)
    got = engine.Engine(m).generate(prompt, 150, temperature=0.8, top_k=5, use_cache=use_cache)
    assert torch.equal(got, expected)
    every = engine.FINITE_CHECK_EVERY
    assert counts['checks'] == math.ceil(150 / every)  # every 64 tokens, and once at the end
    assert counts['bool'] == counts['checks'] and counts['item'] == 0  # nothing else reads the device


def test_generate_with_on_token_checks_before_each_callback(monkeypatch):
    m = tiny_model()
    counts = count_host_reads(monkeypatch)
    seen = []

    def on_token(nxt):
        seen.append(counts['checks'])
        return len(seen) == 10
    out = engine.Engine(m).generate(torch.tensor([[1, 2]]), 50, on_token=on_token)
    assert out.shape == (1, 12)
    assert seen == list(range(1, 11))  # the flag was looked at before every token was handed over
    assert counts['checks'] == 10  # and not again after the early stop


@pytest.mark.parametrize('use_cache', [True, False])
def test_non_finite_logits_still_raise_and_never_reach_multinomial(monkeypatch, use_cache):
    m = tiny_model()
    with torch.no_grad():
        m.lm_head.weight[3, 0] = float('nan')  # one vocabulary entry's logit is nan
    multinomial = torch.multinomial
    inputs = []

    def checked_multinomial(probs, *args, **kwargs):
        inputs.append(bool(torch.isfinite(probs).all()))
        return multinomial(probs, *args, **kwargs)
    monkeypatch.setattr(torch, 'multinomial', checked_multinomial)
    with pytest.raises(NonFiniteLogitsError):
        engine.Engine(m).generate(torch.tensor([[1, 2]]), 5, use_cache=use_cache)
    assert inputs and all(inputs)
    handed = []
    with pytest.raises(NonFiniteLogitsError):  # and on_token never sees a token drawn from them
        engine.Engine(m).generate(torch.tensor([[1, 2]]), 5, use_cache=use_cache, on_token=handed.append)
    assert handed == []


# ---- on CUDA --------------------------------------------------------------------------------------

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
