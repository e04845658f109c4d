"""
The sampling engine: the tokens of model.GPT.generate (the plain algorithm, which re-runs the
whole context for every token), drawn with less work. sample.py and bench.py call it.

    from nanogpt.engine import Engine
    out = Engine(model).generate(idx, max_new_tokens=500, temperature=0.8, top_k=200)

While the sequence fits in block_size, the prompt runs once (the prefill) and then each step runs
the newest token alone, attending to the keys and values the earlier steps stored in a key/value
cache (Pope et al. 2022, "Efficiently Scaling Transformer Inference"). The cache is static, as in
gpt-fast: fixed-shape (B, nh, block_size, hs) buffers written at the token's position, a mask that
hides the rows not written yet, and the position held in a tensor on the device. So every step has
the same shapes, which lets a GPU capture the step once in a CUDA graph and replay it.

Past block_size the model must see the last block_size tokens at positions 0..block_size-1: each
step shifts every token's position, every cached key goes stale, and no exact shortcut exists. So
each step there is a window step, the plain algorithm's forward on the last block_size tokens
(fixed shape too).

The logits agree with the plain algorithm's to float rounding, and so do the tokens drawn from
them; tests/test_engine.py checks both (docs/sampling.md gives the tolerance).
"""

import contextlib

import torch
import torch.nn as nn
import torch.nn.functional as F

from .errors import warn_once

__all__ = ['Engine', 'NonFiniteLogitsError', 'sample_next']


class KVCache(nn.Module):
    """The keys and values of one attention layer for the positions seen so far: (B, nh,
    block_size, hs) buffers, made at the first write (the prefill, never inside a captured graph)
    in the dtype the layer computes in (bfloat16 under autocast). `mask` (block_size, block_size)
    is shared by all layers: row i says which cache rows position i may see (0..i). A module with
    non-persistent buffers: compiled code treats them as fixed-address state that a CUDA graph may
    write, and they never enter a state_dict."""

    def __init__(self, mask):
        super().__init__()
        self.register_buffer('mask', mask, persistent=False)
        self.register_buffer('k', None, persistent=False)
        self.register_buffer('v', None, persistent=False)
        self.way = 0  # the _CACHE_WRITES entry in use: a later one where this torch lacks an earlier one's operation

    def update(self, input_pos, k, v):
        """Store k, v (B, nh, T, hs) at positions input_pos (T,); return the whole cache and the
        (T, block_size) mask rows of those positions."""
        if self.k is None:
            B, nh, _, hs = k.shape
            self.k = k.new_zeros(B, nh, self.mask.size(0), hs)
            self.v = v.new_zeros(B, nh, self.mask.size(0), hs)
        missing = None
        for way in range(self.way, len(_CACHE_WRITES)):
            write, _ = _CACHE_WRITES[way]
            try:
                write(self.k, input_pos, k)
                write(self.v, input_pos, v)
            except NotImplementedError as e:  # this torch lacks the operation on this device
                if way + 1 == len(_CACHE_WRITES):
                    raise
                missing = missing or e
                continue
            if way != self.way:
                _warn_other_write(k.device, self.way, way, missing)
                self.way = way
            break
        return self.k, self.v, self.mask[input_pos]


def _write_indexed(cache, input_pos, x):
    """cache[:, :, input_pos] = x: index_put_, which torch has had on CPU, CUDA and MPS since
    before 2.4 (index_copy_ reached MPS later); no host sync, so a CUDA graph can capture it."""
    cache[:, :, input_pos] = x


def _write_index_copy(cache, input_pos, x):
    cache.index_copy_(2, input_pos, x)


def _write_narrowed(cache, input_pos, x):
    """A plain copy_ into the slice the positions span (they are consecutive: the prefill's
    0..T-1, or a decode step's one position); reading the first one is a host sync."""
    cache.narrow(2, int(input_pos[0]), x.size(2)).copy_(x)


# the ways to write the cache, each with the operation it needs, in the order they are tried:
# each writes the same values, so the tokens are the same whichever runs
_CACHE_WRITES = ((_write_indexed, 'index_put_'), (_write_index_copy, 'index_copy_'), (_write_narrowed, 'copy_'))


def _warn_other_write(device, first, used, error):
    lacks = ' and '.join(op for _, op in _CACHE_WRITES[first:used])
    msg = str(error).strip().splitlines()
    warn_once(f"the key/value cache on {device.type} is written with {_CACHE_WRITES[used][1]}: this torch lacks "
              f"{lacks} there ({type(error).__name__}: {msg[0][:120] if msg else ''}); the same tokens")


def set_caches(model, on):
    """Give every attention layer an empty KVCache (on=True), or take them away (on=False): the
    model then runs its plain forward again."""
    mask = None
    if on:
        n = model.config.block_size
        mask = torch.ones(n, n, dtype=torch.bool, device=model.lm_head.weight.device).tril()
    for block in model.transformer.h:
        block.attn.kv_cache = KVCache(mask) if on else None


def last_logits(model, idx, input_pos=None):
    """Logits (B, vocab) of the last of the tokens idx (B, T): a decode step, with the tokens at
    positions input_pos (T,) of the cache; without input_pos a window step, the plain algorithm's
    forward on idx (B, <= block_size)."""
    logits, _ = model(idx, input_pos=input_pos)
    return logits[:, -1, :]


class _LastBlockKeys(nn.Module):
    """A one-off cache for the last block of a window step: the keys and values of every position
    of the window (computed from that block's input x (B, T, C)), so that the block itself runs
    its query, attention output and MLP for the last position alone. A module only because the
    attention's kv_cache slot holds modules (KVCache); it has no parameters."""

    def __init__(self, attn, x):
        super().__init__()
        B, T, C = x.size()
        _, k, v = attn.c_attn(x).split(C, dim=2)
        self.k = k.view(B, T, attn.n_head, C // attn.n_head).transpose(1, 2)  # (B, nh, T, hs)
        self.v = v.view(B, T, attn.n_head, C // attn.n_head).transpose(1, 2)  # (B, nh, T, hs)

    def update(self, input_pos, k, v):
        return self.k, self.v, None  # the last position sees every position: no mask


def last_position_window_step(model, idx):
    """A window step's logits with less work: only the last position's output is needed, and in
    the last block nothing else depends on the other positions' outputs, so that block computes
    their keys and values only (1 of its 12 n_embd^2-sized matmul columns per position of 4 + 8),
    about a seventh less work for the 6-layer Shakespeare model. Same math as last_logits, the
    same logits to float rounding."""
    *body, last = model.transformer.h
    T = idx.size(1)
    pos = torch.arange(T, device=idx.device)
    x = model.transformer.drop(model.transformer.wte(idx) + model.transformer.wpe(pos))  # (B, T, C)
    for block in body:
        x = block(x)
    last.attn.kv_cache = _LastBlockKeys(last.attn, last.ln_1(x))
    try:
        x = last(x[:, -1:], pos[-1:])  # (B, 1, C)
    finally:
        last.attn.kv_cache = None
    return model.lm_head(model.transformer.ln_f(x))[:, -1, :]


def decoding_attention(device):
    """Where generation may run scaled_dot_product_attention. On CUDA, cuDNN's attention (which
    torch prefers on some GPUs, the H100 and H200 among them) plans every new sequence length,
    and the prefill and the first window bring new ones; flash, memory-efficient and math
    attention need no plans. Elsewhere: no restriction."""
    if torch.device(device).type != 'cuda':
        return contextlib.nullcontext()
    from torch.nn.attention import SDPBackend, sdpa_kernel
    return sdpa_kernel([SDPBackend.FLASH_ATTENTION, SDPBackend.EFFICIENT_ATTENTION, SDPBackend.MATH])


class CapturedStep:
    """A step (a decode step, or a window step) replayed from a CUDA graph, for eager generation on
    CUDA (Engine without compile). At batch 1 a small model's step is a hundred-odd kernel
    launches of a few microseconds of work each, so the GPU mostly waits on the host; a graph
    replays them all with one launch. No compiling: capturing takes milliseconds, so even a short
    generation repays it. The steps' shapes are fixed (the static cache, a window of block_size
    tokens), so one capture serves every token: the graph reads and writes fixed addresses, the
    cache's buffers and its own copies of the step's tensor inputs, and its logits are
    overwritten by the next replay (generate reads them before). Captured at the first call after
    reset() (for decoding, after the prefill made the cache); generate() resets it when it drops
    the cache. If capturing fails: one warning, and eager steps from then on."""

    def __init__(self, step):
        self.step = step
        self.graph = None
        self.failed = False

    def reset(self):
        self.graph = self.inputs = self.logits = None

    def _capture(self, model, inputs):
        self.inputs = [t.clone() for t in inputs]
        # warm-up steps outside the capture, on a side stream, as torch.cuda.graph asks; a decode
        # step writes the same keys and values at the same position as the real step will
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):
            for _ in range(2):
                self.step(model, *self.inputs)
        torch.cuda.current_stream().wait_stream(side)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            self.logits = self.step(model, *self.inputs)
        self.graph = graph

    def __call__(self, model, *inputs):
        if not self.failed and self.graph is None:
            try:
                self._capture(model, inputs)
            except Exception as e:  # a kernel or a host sync that cannot be captured
                self.failed = True
                self.reset()
                warn_once(f"generating without CUDA graphs ({type(e).__name__}: {str(e).strip()[:160]})")
        if self.failed:
            return self.step(model, *inputs)
        for static, t in zip(self.inputs, inputs):
            static.copy_(t)
        self.graph.replay()
        return self.logits


class NonFiniteLogitsError(ValueError):
    """The logits held inf or nan: broken weights, or an overflow in reduced precision."""


FINITE_CHECK_EVERY = 64  # generate() looks at its device-side finiteness flag at least this often


def check_logits_finite(finite):
    """generate()'s look at its device-side flag (a bool tensor): the one place where it syncs."""
    if not bool(finite):
        raise NonFiniteLogitsError("the model produced non-finite logits (inf or nan)")


class Engine:
    """Generation for one model. compile=True compiles the decode and window steps (fixed shapes:
    on CUDA they are captured in CUDA graphs, mode 'reduce-overhead'); without it, on CUDA the
    eager decode and window steps are captured in CUDA graphs (CapturedStep)."""

    def __init__(self, model, compile=False):
        self.model = model
        self.decode, self.window = last_logits, last_position_window_step
        cuda = model.lm_head.weight.device.type == 'cuda'
        if compile:
            opts = dict(mode='reduce-overhead' if cuda else None, dynamic=False)
            self.decode = torch.compile(last_logits, **opts)
            self.window = torch.compile(last_position_window_step, **opts)
        elif cuda:
            self.decode, self.window = CapturedStep(last_logits), CapturedStep(last_position_window_step)

    @torch.no_grad()
    def generate(self, idx, max_new_tokens, temperature=1.0, top_k=None, top_p=None, use_cache=True,
                 on_token=None):
        """Extend idx (B, T) by up to max_new_tokens tokens. use_cache=False runs a window step for
        every token (the plain algorithm). temperature=0 takes the argmax. on_token(idx_next (B, 1))
        is called after each token; returning True stops early. Raises NonFiniteLogitsError on
        inf/nan logits: before on_token sees a token drawn from them, else within
        FINITE_CHECK_EVERY tokens."""
        model, block_size = self.model, self.model.config.block_size
        B, n = idx.size()
        seq = idx.new_empty(B, n + max_new_tokens)  # the whole sequence, written in place: no torch.cat
        seq[:, :n] = idx
        cached = use_cache and n <= block_size
        pos = None  # the decode step's position (1,) on the device, once the prefill has run
        finite, unchecked = None, 0  # all logits finite so far (a bool tensor); tokens since the last look
        try:
            with decoding_attention(idx.device):
                set_caches(model, cached)
                for _ in range(max_new_tokens):
                    if cached and n > block_size:  # the window starts to slide: the cache is stale
                        set_caches(model, False)
                        cached = False
                    if not cached:  # without the cache, the plain algorithm's step as it stands
                        window = self.window if use_cache else last_logits
                        logits = window(model, seq[:, max(0, n - block_size):n])
                    elif pos is None:
                        logits = last_logits(model, seq[:, :n], torch.arange(n, device=idx.device))  # prefill
                        pos = torch.full((1,), n, dtype=torch.long, device=idx.device)
                    else:
                        logits = self.decode(model, seq[:, n - 1:n], pos)
                        pos += 1  # on the device: no host sync
                    # the finiteness flag stays on the device (a Python `if` per token would sync);
                    # sample_next draws from finite probabilities whatever the logits
                    ok = torch.isfinite(logits).all()
                    finite = ok if finite is None else finite & ok
                    idx_next = sample_next(logits, temperature, top_k, top_p)
                    seq[:, n:n + 1] = idx_next
                    n += 1
                    unchecked += 1
                    # on_token reads the tokens (a sync anyway) and must not see ones drawn from bad logits
                    if on_token is not None or unchecked == FINITE_CHECK_EVERY:
                        check_logits_finite(finite)
                        unchecked = 0
                    if on_token is not None and on_token(idx_next):
                        break
                if unchecked:
                    check_logits_finite(finite)
        finally:
            for step in (self.decode, self.window):
                if isinstance(step, CapturedStep):
                    step.reset()  # the decode graph writes into the cache dropped next
            set_caches(model, False)
        return seq[:, :n]


def sample_next(logits, temperature=1.0, top_k=None, top_p=None):
    """One token per row of logits (B, vocab) -> (B, 1): one torch.multinomial draw (none for
    temperature=0, which takes the argmax)."""
    if temperature == 0:
        return torch.argmax(logits, dim=-1, keepdim=True)
    return torch.multinomial(next_token_probs(logits, temperature, top_k, top_p), num_samples=1)


def next_token_probs(logits, temperature=1.0, top_k=None, top_p=None):
    """The probabilities (B, vocab) that sample_next draws from (temperature > 0): the plain
    algorithm's logits / temperature, top_k and softmax, then top_p. Finite for any temperature
    and any logits.

    A small temperature can carry logits / temperature past float32's range (1e-30 does for
    logits of 1e9): inf, then nan after the softmax, and on CUDA multinomial's check of its input
    is a device-side assert that poisons the context. The softmax is finite exactly where a row's
    maximum is. Rows where the plain division's maximum is not (and rows with non-finite logits,
    which generate() reports) use (logits - row max) / temperature instead: the same
    distribution, and it cannot overflow; a row without a finite maximum becomes 0, not nan.
    Every other row keeps the plain division bit for bit, and so draws the plain algorithm's
    tokens. All of it is chosen on the device, without a host sync."""
    logits = logits.float()
    top = logits.amax(dim=-1, keepdim=True)  # top / temperature is the divided row's maximum (rounding is monotonic)
    shifted = torch.nan_to_num((logits - top) / temperature, nan=0.0, neginf=-float('Inf'))
    logits = torch.where(torch.isfinite(top / temperature), logits / temperature, shifted)
    if top_k is not None and top_k < logits.size(-1):  # top_k >= vocab keeps everything: skip the work
        v, _ = torch.topk(logits, top_k)
        logits = logits.masked_fill(logits < v[:, [-1]], -float('Inf'))  # ties with the k-th stay
    if top_p is not None and top_p < 1.0:
        # nucleus sampling (Holtzman et al. 2019): the smallest set of most likely tokens whose
        # mass reaches top_p; the most likely token always stays
        sorted_logits, sorted_idx = torch.sort(logits, descending=True)
        sorted_probs = F.softmax(sorted_logits, dim=-1)
        drop = torch.cumsum(sorted_probs, dim=-1) - sorted_probs >= top_p  # the mass before it suffices
        logits = logits.scatter(1, sorted_idx, sorted_logits.masked_fill(drop, -float('Inf')))
    return F.softmax(logits, dim=-1)
