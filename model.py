"""
A GPT language model in one file, parameter-for-parameter compatible with GPT-2 and nanoGPT.

    from model import GPT, GPTConfig
    model = GPT(GPTConfig(n_layer=6, n_head=6, n_embd=384, block_size=256, vocab_size=65, bias=False))
    logits, loss = model(idx, targets)           # training: (B, T, vocab), scalar
    out = model.generate(idx, max_new_tokens=100, temperature=0.8, top_k=200)

References:
1) Radford et al. 2019, "Language Models are Unsupervised Multitask Learners" (GPT-2): the
   architecture, pre-LayerNorm blocks and the 1/sqrt(2*n_layer) residual-projection init.
2) Vaswani et al. 2017, "Attention Is All You Need": scaled dot-product attention.
3) Pope et al. 2022, "Efficiently Scaling Transformer Inference": the key/value cache.

This module is pure: no argv, no file I/O except GPT.from_pretrained, no import-time work.
"""

import inspect
import math
from dataclasses import dataclass

import torch
import torch.nn as nn
from torch.nn import functional as F


@dataclass
class GPTConfig:
    block_size: int = 1024
    vocab_size: int = 50304  # GPT-2's 50257 padded up to a multiple of 64: faster matmuls
    n_layer: int = 12
    n_head: int = 12
    n_embd: int = 768
    dropout: float = 0.0
    bias: bool = True  # biases in Linear and LayerNorm layers, as in GPT-2; False is a little better and faster


class LayerNorm(nn.Module):
    """LayerNorm whose bias can be switched off (nn.LayerNorm only gained `bias=` in torch 2.1)."""

    def __init__(self, ndim, bias):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(ndim))
        self.bias = nn.Parameter(torch.zeros(ndim)) if bias else None

    def forward(self, x):
        return F.layer_norm(x, self.weight.shape, self.weight, self.bias, 1e-5)


class KVCache:
    """Keys and values of the positions already seen, for one attention layer.

    The (B, nh, block_size, hs) buffers are made on the first write, in the dtype the layer
    produces (so autocast's bfloat16 keys are stored as bfloat16). They are plain attributes,
    never part of a state_dict.
    """

    def __init__(self, block_size):
        self.block_size = block_size
        self.k = self.v = None

    def update(self, pos, k, v):
        if self.k is None or self.k.dtype != k.dtype or self.k.size(0) != k.size(0):
            B, nh, _, hs = k.shape
            self.k = k.new_zeros(B, nh, self.block_size, hs)
            self.v = v.new_zeros(B, nh, self.block_size, hs)
        T = k.size(2)
        self.k[:, :, pos:pos + T] = k
        self.v[:, :, pos:pos + T] = v
        return self.k[:, :, :pos + T], self.v[:, :, :pos + T]


class CausalSelfAttention(nn.Module):

    def __init__(self, config):
        super().__init__()
        assert config.n_embd % config.n_head == 0
        # q, k and v for all heads come out of one matmul
        self.c_attn = nn.Linear(config.n_embd, 3 * config.n_embd, bias=config.bias)
        self.c_proj = nn.Linear(config.n_embd, config.n_embd, bias=config.bias)
        self.attn_dropout = nn.Dropout(config.dropout)
        self.resid_dropout = nn.Dropout(config.dropout)
        self.n_head = config.n_head
        self.n_embd = config.n_embd
        self.dropout = config.dropout
        self.kv_cache = None  # set by GPT.setup_cache for generation

    def forward(self, x, pos=None, last_only=False):
        B, T, C = x.size()  # batch, sequence length, embedding width (n_embd)
        q, k, v = self.c_attn(x).split(self.n_embd, dim=2)
        q = q.view(B, T, self.n_head, C // self.n_head).transpose(1, 2)  # (B, nh, T, hs)
        k = k.view(B, T, self.n_head, C // self.n_head).transpose(1, 2)  # (B, nh, T, hs)
        v = v.view(B, T, self.n_head, C // self.n_head).transpose(1, 2)  # (B, nh, T, hs)
        if pos is None:
            # training and the uncached reference: causal attention over the T positions given
            y = F.scaled_dot_product_attention(q, k, v, attn_mask=None,
                                               dropout_p=self.dropout if self.training else 0.0,
                                               is_causal=True)
        else:
            # generation: the new T positions start at `pos`; attend to the cached prefix too
            k, v = self.kv_cache.update(pos, k, v)  # (B, nh, pos+T, hs)
            if last_only:
                q = q[:, :, -1:]  # only the newest position's output is ever read
            Tq = q.size(2)
            if Tq == 1:
                y = F.scaled_dot_product_attention(q, k, v)  # one query sees the whole prefix
            elif pos == 0:
                y = F.scaled_dot_product_attention(q, k, v, is_causal=True)  # same kernel as training
            else:
                # query i (absolute position pos+i) may see keys 0..pos+i
                mask = torch.ones(Tq, k.size(2), dtype=torch.bool, device=x.device).tril(diagonal=pos)
                y = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
        y = y.transpose(1, 2).contiguous().view(B, y.size(2), C)  # re-assemble heads side by side
        return self.resid_dropout(self.c_proj(y))


class MLP(nn.Module):

    def __init__(self, config):
        super().__init__()
        self.c_fc = nn.Linear(config.n_embd, 4 * config.n_embd, bias=config.bias)
        self.gelu = nn.GELU()
        self.c_proj = nn.Linear(4 * config.n_embd, config.n_embd, bias=config.bias)
        self.dropout = nn.Dropout(config.dropout)

    def forward(self, x):
        return self.dropout(self.c_proj(self.gelu(self.c_fc(x))))


class Block(nn.Module):

    def __init__(self, config):
        super().__init__()
        self.ln_1 = LayerNorm(config.n_embd, bias=config.bias)
        self.attn = CausalSelfAttention(config)
        self.ln_2 = LayerNorm(config.n_embd, bias=config.bias)
        self.mlp = MLP(config)

    def forward(self, x, pos=None, last_only=False):
        a = self.attn(self.ln_1(x), pos, last_only)
        if last_only:
            x = x[:, -1:]  # the last layer of a generation step: the other rows are never read
        x = x + a
        return x + self.mlp(self.ln_2(x))


class GPT(nn.Module):

    def __init__(self, config):
        super().__init__()
        assert config.vocab_size is not None
        assert config.block_size is not None
        self.config = config
        # Creation order matters: modules draw their default init from the global RNG, so this
        # order keeps the weights for a given seed identical to nanoGPT's.
        self.transformer = nn.ModuleDict(dict(
            wte=nn.Embedding(config.vocab_size, config.n_embd),
            wpe=nn.Embedding(config.block_size, config.n_embd),
            drop=nn.Dropout(config.dropout),
            h=nn.ModuleList([Block(config) for _ in range(config.n_layer)]),
            ln_f=LayerNorm(config.n_embd, bias=config.bias),
        ))
        self.lm_head = nn.Linear(config.n_embd, config.vocab_size, bias=False)
        # Weight tying (Press & Wolf 2017, "Using the Output Embedding to Improve Language Models")
        self.transformer.wte.weight = self.lm_head.weight
        self.apply(self._init_weights)
        # GPT-2: scale residual projections by 1/sqrt(2*n_layer), two residual adds per block
        for pn, p in self.named_parameters():
            if pn.endswith('c_proj.weight'):
                torch.nn.init.normal_(p, mean=0.0, std=0.02 / math.sqrt(2 * config.n_layer))
        print("number of parameters: %.2fM" % (self.get_num_params() / 1e6,))

    def get_num_params(self, non_embedding=True):
        """Parameter count; the position embeddings are left out by default. The token embedding
        stays in: it is also the output layer's weight."""
        n_params = sum(p.numel() for p in self.parameters())
        if non_embedding:
            n_params -= self.transformer.wpe.weight.numel()
        return n_params

    def _init_weights(self, module):
        if isinstance(module, nn.Linear):
            torch.nn.init.normal_(module.weight, mean=0.0, std=0.02)
            if module.bias is not None:
                torch.nn.init.zeros_(module.bias)
        elif isinstance(module, nn.Embedding):
            torch.nn.init.normal_(module.weight, mean=0.0, std=0.02)

    def forward(self, idx, targets=None):
        b, t = idx.size()
        if t > self.config.block_size:
            raise ValueError(f"cannot forward a sequence of length {t}: block_size is only "
                             f"{self.config.block_size}")
        pos = torch.arange(0, t, dtype=torch.long, device=idx.device)  # (t,)
        tok_emb = self.transformer.wte(idx)  # (b, t, n_embd)
        pos_emb = self.transformer.wpe(pos)  # (t, n_embd)
        x = self.transformer.drop(tok_emb + pos_emb)
        for block in self.transformer.h:
            x = block(x)
        x = self.transformer.ln_f(x)
        if targets is not None:
            logits = self.lm_head(x)  # (b, t, vocab)
            loss = F.cross_entropy(logits.view(-1, logits.size(-1)), targets.view(-1), ignore_index=-1)
        else:
            # generation only reads the last position: skip the lm_head matmul for the rest
            logits = self.lm_head(x[:, [-1], :])  # (b, 1, vocab)
            loss = None
        return logits, loss

    def crop_block_size(self, block_size):
        """Shrink the context window, e.g. to finetune GPT-2 (1024) with a smaller block_size."""
        assert block_size <= self.config.block_size
        self.config.block_size = block_size
        self.transformer.wpe.weight = nn.Parameter(self.transformer.wpe.weight[:block_size])

    @classmethod
    def from_pretrained(cls, model_type, override_args=None):
        """GPT-2 weights from Hugging Face: a name ('gpt2', 'gpt2-medium', 'gpt2-large', 'gpt2-xl')
        or a local directory holding a GPT2LMHeadModel checkpoint."""
        import os
        override_args = override_args or {}
        if set(override_args) - {'dropout'}:
            raise ValueError(f"only dropout can be overridden for pretrained GPT-2, got {sorted(override_args)}")
        try:
            from transformers import GPT2LMHeadModel
        except ImportError:
            raise ImportError("loading GPT-2 weights needs transformers: pip install transformers") from None
        sizes = {
            'gpt2': dict(n_layer=12, n_head=12, n_embd=768),  # 124M
            'gpt2-medium': dict(n_layer=24, n_head=16, n_embd=1024),  # 350M
            'gpt2-large': dict(n_layer=36, n_head=20, n_embd=1280),  # 774M
            'gpt2-xl': dict(n_layer=48, n_head=25, n_embd=1600),  # 1558M
        }
        if os.path.isdir(model_type):
            hf = GPT2LMHeadModel.from_pretrained(model_type)
            c = hf.config
            config_args = dict(n_layer=c.n_layer, n_head=c.n_head, n_embd=c.n_embd,
                               vocab_size=c.vocab_size, block_size=c.n_positions)
        elif model_type in sizes:
            print(f"loading weights from pretrained gpt: {model_type}")
            hf = GPT2LMHeadModel.from_pretrained(model_type)
            config_args = dict(sizes[model_type], vocab_size=50257, block_size=1024)
        else:
            raise ValueError(f"unknown pretrained model {model_type!r}: use one of {sorted(sizes)} "
                             f"or a directory with a Hugging Face GPT-2 checkpoint")
        config_args['bias'] = True  # GPT-2 has biases everywhere
        config_args['dropout'] = override_args.get('dropout', 0.0)
        model = GPT(GPTConfig(**config_args))
        sd = model.state_dict()
        sd_hf = {k: v for k, v in hf.state_dict().items()
                 if not k.endswith(('.attn.masked_bias', '.attn.bias'))}  # causal-mask buffers, not weights
        # OpenAI's checkpoints use Conv1D, whose weight is the transpose of nn.Linear's
        transposed = ('attn.c_attn.weight', 'attn.c_proj.weight', 'mlp.c_fc.weight', 'mlp.c_proj.weight')
        if set(sd_hf) != set(sd):
            raise ValueError(f"checkpoint keys do not match GPT-2: {sorted(set(sd_hf) ^ set(sd))[:5]}")
        with torch.no_grad():
            for k, v in sd_hf.items():
                v = v.t() if k.endswith(transposed) else v
                assert v.shape == sd[k].shape, (k, v.shape, sd[k].shape)
                sd[k].copy_(v)
        return model

    def configure_optimizers(self, weight_decay, learning_rate, betas, device_type):
        # Decay only matrices (Linear and Embedding weights); biases and LayerNorm gains are
        # 1-d and decaying them pulls activations toward zero for no gain.
        params = {pn: p for pn, p in self.named_parameters() if p.requires_grad}
        decay_params = [p for p in params.values() if p.dim() >= 2]
        nodecay_params = [p for p in params.values() if p.dim() < 2]
        optim_groups = [
            {'params': decay_params, 'weight_decay': weight_decay},
            {'params': nodecay_params, 'weight_decay': 0.0},
        ]
        num_decay = sum(p.numel() for p in decay_params)
        num_nodecay = sum(p.numel() for p in nodecay_params)
        print(f"num decayed parameter tensors: {len(decay_params)}, with {num_decay:,} parameters")
        print(f"num non-decayed parameter tensors: {len(nodecay_params)}, with {num_nodecay:,} parameters")
        # The fused kernel does the whole update in one pass; torch has it for CUDA and (since 2.4) CPU.
        fused_available = 'fused' in inspect.signature(torch.optim.AdamW).parameters
        use_fused = fused_available and device_type in ('cuda', 'cpu')
        extra_args = dict(fused=True) if use_fused else dict()
        optimizer = torch.optim.AdamW(optim_groups, lr=learning_rate, betas=betas, **extra_args)
        print(f"using fused AdamW: {use_fused}")
        return optimizer

    def estimate_mfu(self, fwdbwd_per_iter, dt, peak_flops=312e12):
        """Model FLOPs utilisation: achieved FLOP/s over `peak_flops` (default: A100 bf16, 312 TFLOP/s).
        FLOPs per token from the PaLM paper (Chowdhery et al. 2022, appendix B): 6N + 12*L*H*Q*T."""
        N = self.get_num_params()
        cfg = self.config
        L, H, Q, T = cfg.n_layer, cfg.n_head, cfg.n_embd // cfg.n_head, cfg.block_size
        flops_per_token = 6 * N + 12 * L * H * Q * T
        flops_per_iter = flops_per_token * T * fwdbwd_per_iter
        return flops_per_iter / dt / peak_flops

    # ---- generation ----------------------------------------------------------------------------

    def setup_cache(self):
        """Give every attention layer an empty KV cache (filled by forward_cached)."""
        for block in self.transformer.h:
            block.attn.kv_cache = KVCache(self.config.block_size)

    def clear_cache(self):
        for block in self.transformer.h:
            block.attn.kv_cache = None

    def forward_cached(self, idx, pos):
        """Logits of the last position for tokens `idx` (B, T) placed at absolute positions
        pos..pos+T-1, attending to the cached positions before `pos`. Returns (B, vocab)."""
        t = idx.size(1)
        assert pos + t <= self.config.block_size
        positions = torch.arange(pos, pos + t, dtype=torch.long, device=idx.device)
        x = self.transformer.wte(idx) + self.transformer.wpe(positions)  # (B, T, n_embd)
        last = len(self.transformer.h) - 1
        for i, block in enumerate(self.transformer.h):
            x = block(x, pos, last_only=(i == last))
        x = self.transformer.ln_f(x)  # (B, 1, n_embd)
        return self.lm_head(x)[:, -1, :]  # (B, vocab)

    @torch.no_grad()
    def generate(self, idx, max_new_tokens, temperature=1.0, top_k=None, top_p=None,
                 use_cache=True, on_token=None):
        """Extend idx (B, T) by max_new_tokens tokens, one multinomial draw per token and row.

        use_cache=False is the reference algorithm: re-run the model on the (cropped) context for
        every token. The cached path computes the same logits: while the sequence fits in block_size
        it feeds one new position per step; beyond that every position of the window moves, so the
        cached keys are stale and the window is recomputed (in one pass, the last layer for the last
        position only). temperature=0 picks the argmax. on_token(idx_next) is called after each
        token; if it returns True, generation stops early.
        """
        block_size = self.config.block_size
        pos = None  # number of valid cached positions; None: the cache must be (re)filled
        if use_cache:
            self.setup_cache()
        try:
            for _ in range(max_new_tokens):
                if not use_cache:
                    idx_cond = idx if idx.size(1) <= block_size else idx[:, -block_size:]
                    logits = self(idx_cond)[0][:, -1, :]
                elif pos is not None and pos < block_size:
                    logits = self.forward_cached(idx[:, -1:], pos)  # one new position
                    pos += 1
                else:
                    idx_cond = idx[:, -block_size:]
                    logits = self.forward_cached(idx_cond, 0)  # (re)fill the whole window
                    pos = idx_cond.size(1)
                idx_next = sample_next(logits, temperature, top_k, top_p)
                idx = torch.cat((idx, idx_next), dim=1)
                if idx.size(1) > block_size:
                    pos = None  # the window slides from now on: positions shift every step
                if on_token is not None and on_token(idx_next):
                    break
        finally:
            if use_cache:
                self.clear_cache()
        return idx


def sample_next(logits, temperature=1.0, top_k=None, top_p=None):
    """One token per row from logits (B, vocab) -> (B, 1)."""
    if temperature == 0:
        return torch.argmax(logits, dim=-1, keepdim=True)
    logits = logits.float() / temperature
    if top_k is not None:
        v, _ = torch.topk(logits, min(top_k, logits.size(-1)))
        logits[logits < v[:, [-1]]] = -float('Inf')
    if top_p is not None and top_p < 1.0:
        # nucleus sampling (Holtzman et al. 2019): keep the smallest set of tokens whose
        # probability mass reaches top_p; the most likely token always stays
        sorted_logits, sorted_idx = torch.sort(logits, descending=True)
        cum = torch.cumsum(F.softmax(sorted_logits, dim=-1), dim=-1)
        drop = cum - F.softmax(sorted_logits, dim=-1) >= top_p  # mass before this token already enough
        logits = logits.scatter(1, sorted_idx, sorted_logits.masked_fill(drop, -float('Inf')))
    probs = F.softmax(logits, dim=-1)
    return torch.multinomial(probs, num_samples=1)
