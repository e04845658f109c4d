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

import contextlib
import math
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn as nn
from torch.nn import functional as F


# GPT-2 checkpoints (OpenAI's, Hugging Face's) store these as Conv1D weights, the transpose of
# nn.Linear's: from_pretrained and export_hf.py transpose them on the way in and out.
CONV1D_WEIGHTS = ('attn.c_attn.weight', 'attn.c_proj.weight', 'mlp.c_fc.weight', 'mlp.c_proj.weight')


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


class MaskSource:
    """Dropout masks for training on the CPU, from a fast generator.

    torch's CPU dropout draws one Mersenne Twister float per element (bernoulli_): for the
    shakespeare_char model that is 22% of a bfloat16 training step. Here numpy's SFC64 (a small
    counter-based chaotic generator) gives 64 random bits at a time, split into four 16-bit
    numbers, each compared with p * 65536: about ten times faster. So p is rounded to a multiple
    of 1/65536 and the kept elements are scaled by 1 / (1 - p rounded). The elements are
    independent and the state is a few integers, saved in checkpoints for an exact resume.
    """

    def __init__(self):
        self.bitgen = None

    def seed(self, seed):
        self.bitgen = np.random.SFC64(seed)

    def drop(self, shape, p):
        """(bool mask of `shape`, True where an element is dropped; scale for the kept ones)."""
        if self.bitgen is None:  # unseeded: follow torch's RNG, so torch.manual_seed repeats runs
            self.seed(int(torch.randint(2 ** 62, ())))
        cut = min(round(p * 65536), 65535)
        n = math.prod(shape)
        words = self.bitgen.random_raw((n + 3) // 4).view(np.int16)[:n]
        drop = torch.from_numpy(words).view(shape) < cut - 32768  # int16 is uniform on [-32768, 32767]
        return drop, 65536 / (65536 - cut)

    def state(self):
        """Plain integers (a checkpoint loads them with weights_only=True); None if unseeded."""
        if self.bitgen is None:
            return None
        st = self.bitgen.state
        return {'sfc64': [int(v) for v in st['state']['state']], 'has_uint32': int(st['has_uint32']),
                'uinteger': int(st['uinteger'])}

    def set_state(self, state):
        if state is None:
            self.bitgen = None
            return
        self.bitgen = np.random.SFC64()
        self.bitgen.state = {'bit_generator': 'SFC64', 'state': {'state': np.array(state['sfc64'], dtype=np.uint64)},
                             'has_uint32': state['has_uint32'], 'uinteger': state['uinteger']}


class Dropout(nn.Dropout):
    """nn.Dropout, but training on the CPU without torch.compile it takes its masks from the
    model's MaskSource. Elsewhere it is nn.Dropout: CUDA and MPS draw masks on the device, and a
    compiled model makes them inside its fused kernels."""

    masks = None  # the model's MaskSource, set by GPT

    def fast(self, x):
        return (self.training and self.p > 0 and self.masks is not None and x.device.type == 'cpu'
                and not torch.compiler.is_compiling())

    def forward(self, x):
        if not self.fast(x):
            return super().forward(x)
        drop, scale = self.masks.drop(x.shape, self.p)
        return x.masked_fill(drop, 0.0).mul_(scale)


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
        self.attn_dropout = Dropout(config.dropout)
        self.resid_dropout = Dropout(config.dropout)
        self.n_head = config.n_head
        self.n_embd = config.n_embd
        self.dropout = config.dropout
        self.kv_cache = None  # set by GPT.setup_cache for generation
        self.math_training = False  # CPU training through written-out attention (GPT.set_math_attention)

    def forward(self, x, pos=None, last_only=False):
        B, T, C = x.size()  # batch, sequence length, embedding width (n_embd)
        q, k, v = self.c_attn(x).split(self.n_embd, dim=2)
        q = q.view(B, T, self.n_head, C // self.n_head).transpose(1, 2)  # (B, nh, T, hs)
        k = k.view(B, T, self.n_head, C // self.n_head).transpose(1, 2)  # (B, nh, T, hs)
        v = v.view(B, T, self.n_head, C // self.n_head).transpose(1, 2)  # (B, nh, T, hs)
        if pos is None and (self.attn_dropout.fast(x) or (self.math_training and self.training
                                                          and not torch.compiler.is_compiling())):
            # CPU training: torch has no fused CPU attention kernel with dropout (SDPA falls back to
            # this same math with bernoulli_ masks), so the math is written out and the
            # probabilities are dropped with fast masks. Without dropout autotune.py may pick this
            # path too, where it measures faster than the fused kernel (bfloat16, short blocks).
            att = (q * (1.0 / math.sqrt(q.size(-1)))) @ k.transpose(-2, -1)  # (B, nh, T, T)
            # the causal mask as an added -inf bias: unlike masked_fill, its backward is free
            future = torch.full((T, T), float('-inf'), dtype=att.dtype, device=x.device).triu(1)
            att = (att + future).softmax(dim=-1)
            y = (self.attn_dropout(att) if self.dropout > 0 else att) @ v  # (B, nh, T, hs)
        elif pos is None:
            # training and the uncached reference: causal attention over the T positions given;
            # fused kernels (flash attention) with their own dropout where the device has them
            y = F.scaled_dot_product_attention(q, k, v, attn_mask=None,
                                               dropout_p=self.dropout if self.training else 0.0,
                                               is_causal=True)
        else:
            # generation: the new T positions start at `pos`; attend to the cached prefix too.
            # Without a cache (the sliding-window pass, pos 0) nothing is stored: the next step
            # shifts every position, so these keys would be stale anyway.
            if self.kv_cache is not None:
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
        self.dropout = Dropout(config.dropout)

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
            drop=Dropout(config.dropout),
            h=nn.ModuleList([Block(config) for _ in range(config.n_layer)]),
            ln_f=LayerNorm(config.n_embd, bias=config.bias),
        ))
        self.lm_head = nn.Linear(config.n_embd, config.vocab_size, bias=False)
        self.dropout_masks = MaskSource()  # shared by every Dropout layer (CPU training)
        for m in self.modules():
            if isinstance(m, Dropout):
                m.masks = self.dropout_masks
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

    def set_math_attention(self, on):
        """Train on a CPU with attention written out as matmuls and softmax instead of torch's
        fused kernel (autotune.py measures both). Dropout on a CPU always takes this path."""
        for block in self.transformer.h:
            block.attn.math_training = on

    @property
    def gelu_approximate(self):
        return self.transformer.h[0].mlp.gelu.approximate if len(self.transformer.h) else 'none'

    def set_gelu_approximate(self, approximate):
        """'none': exact GELU (this model's default); 'tanh': GPT-2's 'gelu_new'. Checkpoints record
        it outside model_args (key 'gelu_approximate') so that GPTConfig stays the original's."""
        for block in self.transformer.h:
            block.mlp.gelu = nn.GELU(approximate=approximate)

    def crop_block_size(self, block_size):
        """Shrink the context window, e.g. to finetune GPT-2 (1024) with a smaller block_size."""
        assert block_size <= self.config.block_size
        self.config.block_size = block_size
        self.transformer.wpe.weight = nn.Parameter(self.transformer.wpe.weight[:block_size])

    @classmethod
    def from_pretrained(cls, model_type, override_args=None):
        """OpenAI's GPT-2 weights through Hugging Face transformers: a model name ('gpt2',
        'gpt2-medium', 'gpt2-large', 'gpt2-xl') or a local directory holding a GPT-2 checkpoint
        (what GPT2LMHeadModel.save_pretrained or export_hf.py writes). Only dropout may be
        overridden. Problems raise ImportError, OSError or ValueError with a one-line message."""
        import os
        override_args = dict(override_args or {})
        unknown = sorted(set(override_args) - {'dropout'})
        if unknown:
            raise ValueError(f"only dropout can be overridden for pretrained GPT-2, got {unknown}")
        sizes = {  # the architecture each name stands for (the checkpoint's config must agree)
            'gpt2': dict(n_layer=12, n_head=12, n_embd=768),  # 124M
            'gpt2-medium': dict(n_layer=24, n_head=16, n_embd=1024),  # 350M
            'gpt2-large': dict(n_layer=36, n_head=20, n_embd=1280),  # 774M
            'gpt2-xl': dict(n_layer=48, n_head=25, n_embd=1600),  # 1558M
        }
        if not os.path.isdir(model_type) and model_type not in sizes:
            raise ValueError(f"unknown pretrained model {model_type!r}: use one of {', '.join(sizes)} "
                             f"or a directory holding a Hugging Face GPT-2 checkpoint")
        try:
            from transformers import GPT2LMHeadModel
        except ImportError:
            raise ImportError("loading GPT-2 weights needs the transformers package: "
                              "pip install transformers") from None
        print(f"loading weights from pretrained gpt: {model_type}")
        try:
            hf = GPT2LMHeadModel.from_pretrained(model_type)
        except (OSError, ValueError) as e:  # no network, no such directory content, not GPT-2
            first = next((line for line in str(e).splitlines() if line.strip()), type(e).__name__)
            raise OSError(f"cannot load GPT-2 weights from {model_type!r}: {first.strip()[:300]}") from None
        c = hf.config
        config_args = dict(n_layer=c.n_layer, n_head=c.n_head, n_embd=c.n_embd,
                           vocab_size=c.vocab_size, block_size=c.n_positions, bias=True)  # GPT-2 has biases everywhere
        if model_type in sizes and any(config_args[k] != v for k, v in sizes[model_type].items()):
            raise ValueError(f"the checkpoint for {model_type!r} does not have {model_type}'s shape")
        print(f"forcing vocab_size={c.vocab_size}, block_size={c.n_positions}, bias=True")
        # Everything this model hard-codes must match, or the weights would compute something else.
        # GPT-2's MLP activation is the tanh approximation of GELU ('gelu_new'); this model's default
        # is the exact GELU, so the blocks' activation is switched below to reproduce the checkpoint.
        approximations = {'gelu': 'none', 'gelu_new': 'tanh', 'gelu_pytorch_tanh': 'tanh', 'gelu_fast': 'tanh'}
        mismatches = []
        if c.activation_function not in approximations:
            mismatches.append(f"activation_function={c.activation_function!r}")
        if c.n_inner not in (None, 4 * c.n_embd):
            mismatches.append(f"n_inner={c.n_inner} (needs 4*n_embd)")
        if c.layer_norm_epsilon != 1e-5:
            mismatches.append(f"layer_norm_epsilon={c.layer_norm_epsilon}")
        if not c.scale_attn_weights or c.scale_attn_by_inverse_layer_idx:
            mismatches.append("non-standard attention scaling")
        out_emb, in_emb = hf.get_output_embeddings(), hf.get_input_embeddings()
        if out_emb.weight is not in_emb.weight and not torch.equal(out_emb.weight, in_emb.weight):
            mismatches.append("an output layer not tied to the token embedding")
        if mismatches:
            raise ValueError(f"{model_type!r} is not a plain GPT-2 checkpoint: {'; '.join(mismatches)}")
        if 'dropout' in override_args:
            print(f"overriding dropout rate to {override_args['dropout']}")
        config_args['dropout'] = override_args.get('dropout', 0.0)
        model = GPT(GPTConfig(**config_args))
        model.set_gelu_approximate(approximations[c.activation_function])
        sd = model.state_dict()
        sd_hf = {k: v for k, v in hf.state_dict().items()
                 if not k.endswith(('.attn.masked_bias', '.attn.bias'))}  # old causal-mask buffers, not weights
        if set(sd_hf) != set(sd):
            raise ValueError(f"{model_type!r}: checkpoint keys do not match GPT-2's, e.g. "
                             f"{sorted(set(sd_hf) ^ set(sd))[:3]}")
        with torch.no_grad():
            for k, v in sd_hf.items():
                v = v.t() if k.endswith(CONV1D_WEIGHTS) else v
                if v.shape != sd[k].shape:
                    raise ValueError(f"{model_type!r}: {k} has shape {tuple(v.shape)}, expected {tuple(sd[k].shape)}")
                sd[k].copy_(v)
        return model

    def configure_optimizers(self, weight_decay, learning_rate, betas, device_type, fused=None):
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
        # The fused kernel updates every parameter in one pass instead of a chain of per-op kernels:
        # on a 2-core CPU it makes the small CPU recipe's step about twice as fast. torch has it for
        # CUDA and, since 2.4, CPU; an older torch refuses it when the optimizer is built, and then
        # the multi-tensor (foreach) update is used. fused=None: wherever supported.
        if fused is None:
            fused = device_type in ('cuda', 'cpu')
        optimizer = None
        if fused:
            try:
                optimizer = torch.optim.AdamW(optim_groups, lr=learning_rate, betas=betas, fused=True)
            except (RuntimeError, TypeError, ValueError):
                optimizer = None
        use_fused = optimizer is not None
        if optimizer is None:
            optimizer = torch.optim.AdamW(optim_groups, lr=learning_rate, betas=betas)
        print(f"using fused AdamW: {use_fused}")
        return optimizer

    def estimate_mfu(self, fwdbwd_per_iter, dt, peak_flops=312e12):
        """Model FLOPs utilisation: achieved FLOP/s over `peak_flops` (default: A100 bf16, 312 TFLOP/s).
        fwdbwd_per_iter sequences of block_size tokens take dt seconds. FLOPs per token from the
        PaLM paper (Chowdhery et al. 2022, appendix B): 6N for the weight matmuls forward and
        backward, plus 12*L*H*Q*T for attention scores and their weighted sum. With dt=1 and
        peak_flops=1 it returns the FLOPs of one iteration."""
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
        """Drop the caches: forward_cached then runs a window from position 0 without storing."""
        for block in self.transformer.h:
            block.attn.kv_cache = None

    def forward_cached(self, idx, pos):
        """Logits of the last position for tokens `idx` (B, T) placed at absolute positions
        pos..pos+T-1, attending to the cached positions before `pos`. Returns (B, vocab).
        With the caches cleared, pos must be 0 and idx is a whole window."""
        t = idx.size(1)
        assert pos + t <= self.config.block_size
        assert pos == 0 or self.transformer.h[0].attn.kv_cache is not None, "no cache to continue from"
        # a slice of the table is the same rows wpe(arange(pos, pos + t)) would gather, without the index tensor
        x = self.transformer.drop(self.transformer.wte(idx) + self.transformer.wpe.weight[pos:pos + t])
        last = len(self.transformer.h) - 1
        for i, block in enumerate(self.transformer.h):
            x = block(x, pos, last_only=(i == last))
        x = self.transformer.ln_f(x)  # (B, 1, n_embd)
        return self.lm_head(x)[:, -1, :]  # (B, vocab)

    @torch.no_grad()
    def generate(self, idx, max_new_tokens, temperature=1.0, top_k=None, top_p=None,
                 use_cache=True, on_token=None):
        """Extend idx (B, T) by up to max_new_tokens tokens, one sample_next draw per token.

        use_cache=False is the reference algorithm (nanoGPT's): run the model on the last
        block_size tokens for every new token. use_cache=True computes the same logits with less
        work. While the sequence fits in block_size, the prompt is run once and then one new
        position per step, attending to cached keys and values. Once it is longer, the model must
        see the last block_size tokens at positions 0..block_size-1: every token's position
        changes at every step, so every cached key is stale. No exact shortcut exists there (each
        layer's input at every position differs from anything computed before), so each step runs
        the whole window through all layers but the last, and the last layer for the newest
        position only (its keys and values still cover the window); nothing is stored.

        temperature=0 picks the argmax. on_token(idx_next) is called after each token (B, 1); if
        it returns True, generation stops early. Raises NonFiniteLogitsError on inf/nan logits:
        before on_token sees a token drawn from them, else within FINITE_CHECK_EVERY tokens.
        """
        block_size = self.config.block_size
        B, n = idx.size()
        # the sequence lives in one buffer: no torch.cat copy of the whole history per token
        seq = idx.new_empty(B, n + max_new_tokens)
        seq[:, :n] = idx
        pos = None  # how many positions the caches hold; None: no cache filled yet
        finite, unchecked = None, 0  # were all logits finite (a bool tensor); tokens since the last look
        with decoding_attention(idx.device):
            try:
                for _ in range(max_new_tokens):
                    if not use_cache:
                        logits = self(seq[:, max(0, n - block_size):n])[0][:, -1, :]
                    elif n > block_size:
                        if pos is not None:
                            self.clear_cache()
                            pos = None
                        logits = self.forward_cached(seq[:, n - block_size:n], 0)  # whole window, no cache
                    elif pos is None:
                        self.setup_cache()
                        logits = self.forward_cached(seq[:, :n], 0)  # the prompt, filling the caches
                        pos = n
                    else:
                        logits = self.forward_cached(seq[:, n - 1:n], pos)  # the newest token only
                        pos += 1
                    # the finiteness check stays on the device: a Python `if` on it per token would be
                    # a host sync, the only one per token on CUDA and MPS; sample_next draws from finite
                    # probabilities whatever the logits, and the flag is looked at below
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
                if use_cache:
                    self.clear_cache()
        return seq[:, :n]


def decoding_attention(device):
    """Where generate() may run scaled_dot_product_attention. On CUDA, cuDNN's attention (which
    torch prefers on some GPUs, the H100 and H200 among them) builds a plan for every new sequence
    length, and decoding brings a new one each token: measured on an H200 (torch 2.11) sampling
    ran at ~20 tokens/s the first time through each length and at ~250 once the plans existed.
    Flash, memory-efficient and math attention need no plans. Elsewhere: no restriction."""
    if torch.device(device).type != 'cuda':
        return contextlib.nullcontext()
    from torch.nn.attention import SDPBackend, sdpa_kernel
    return sdpa_kernel([SDPBackend.FLASH_ATTENTION, SDPBackend.EFFICIENT_ATTENTION, SDPBackend.MATH])


class NonFiniteLogitsError(ValueError):
    """The logits held inf or nan: broken weights, or an overflow in reduced precision."""


FINITE_CHECK_EVERY = 64  # generate() looks at its device-side finiteness flag at least this often


def check_logits_finite(finite):
    """generate()'s host look at its device-side flag (a bool tensor): the one place it syncs."""
    if not bool(finite):
        raise NonFiniteLogitsError("the model produced non-finite logits (inf or nan)")


def sample_next(logits, temperature=1.0, top_k=None, top_p=None):
    """One token per row from logits (B, vocab) -> (B, 1): a single torch.multinomial call
    (nothing random is drawn for temperature=0, which picks the argmax)."""
    if temperature == 0:
        return torch.argmax(logits, dim=-1, keepdim=True)
    return torch.multinomial(next_token_probs(logits, temperature, top_k, top_p), num_samples=1)


def next_token_probs(logits, temperature=1.0, top_k=None, top_p=None):
    """The probabilities (B, vocab) that sample_next draws from, for temperature > 0: nanoGPT's
    logits / temperature, top_k, softmax (and top_p). Finite for every temperature and any logits.

    A small temperature can carry logits / temperature past float32's range (1e-30 does for
    logits of 1e9): inf, then nan after softmax, and on CUDA multinomial's check of its input is
    a device-side assert that poisons the context. Softmax is finite exactly where a row's
    maximum is (no nan, no inf, not all -inf). Rows where the plain division's is not (and rows
    whose logits are not finite, which generate() reports) use (logits - row max) / temperature
    instead: the same distribution, and it cannot overflow, its maximum being 0; the nan of a
    row without a finite maximum becomes 0. Every other row keeps the plain division bit for bit,
    and so draws the same tokens as nanoGPT. Chosen on the device, with no host sync."""
    logits = logits.float()
    top = logits.amax(dim=-1, keepdim=True)  # top / temperature is the divided row's maximum (rounding is monotonic)
    shifted = torch.nan_to_num((logits - top) / temperature, nan=0.0, neginf=-float('Inf'))
    logits = torch.where(torch.isfinite(top / temperature), logits / temperature, shifted)
    if top_k is not None and top_k < logits.size(-1):  # top_k >= vocab keeps everything: skip the work
        v, _ = torch.topk(logits, top_k)
        logits = logits.masked_fill(logits < v[:, [-1]], -float('Inf'))  # ties with the k-th stay
    if top_p is not None and top_p < 1.0:
        # nucleus sampling (Holtzman et al. 2019): keep the smallest set of most likely tokens
        # whose mass reaches top_p; the most likely token always stays
        sorted_logits, sorted_idx = torch.sort(logits, descending=True)
        sorted_probs = F.softmax(sorted_logits, dim=-1)
        drop = torch.cumsum(sorted_probs, dim=-1) - sorted_probs >= top_p  # the mass before it suffices
        logits = logits.scatter(1, sorted_idx, sorted_logits.masked_fill(drop, -float('Inf')))
    return F.softmax(logits, dim=-1)
