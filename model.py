"""
The GPT language model, in one file. Parameter for parameter it is GPT-2 (and nanoGPT), so it loads
OpenAI's weights and nanoGPT's checkpoints.

    from model import GPT, GPTConfig
    model = GPT(GPTConfig(n_layer=6, n_head=6, n_embd=384, block_size=256, vocab_size=65, bias=False))
    logits, loss = model(idx, targets)                   # training: (B, T, vocab_size), a scalar
    idx = model.generate(idx, max_new_tokens=100, temperature=0.8, top_k=200)   # the plain algorithm

sample.py draws tokens through nanogpt/engine.py instead: the same tokens, with a key/value cache.

References:
1) Radford et al. 2019, "Language Models are Unsupervised Multitask Learners" (GPT-2): the
   architecture, pre-LayerNorm blocks, and the 1/sqrt(2 * n_layer) init of residual projections.
2) Vaswani et al. 2017, "Attention Is All You Need": scaled dot-product attention.
3) Press & Wolf 2017, "Using the Output Embedding to Improve Language Models": weight tying.

The module is pure: no argv, no files except GPT.from_pretrained's download, nothing runs on import.
"""

import math
import os
from dataclasses import dataclass

import torch
import torch.nn as nn
from torch.nn import functional as F

# GPT-2 checkpoints (OpenAI's, Hugging Face's) store these as Conv1D weights, the transpose of an
# nn.Linear's: from_pretrained here and export_hf.py transpose them on the way in and out.
CONV1D_WEIGHTS = ('attn.c_attn.weight', 'attn.c_proj.weight', 'mlp.c_fc.weight', 'mlp.c_proj.weight')

# OpenAI's GPT-2 models by name (vocab_size 50257, block_size 1024, biases everywhere); the sizes
# GPT.from_pretrained checks a checkpoint against, and nanogpt/memory.py sizes a run by
GPT2_SIZES = {
    'gpt2': dict(n_layer=12, n_head=12, n_embd=768),  # 124M params
    'gpt2-medium': dict(n_layer=24, n_head=16, n_embd=1024),  # 350M params
    'gpt2-large': dict(n_layer=36, n_head=20, n_embd=1280),  # 774M params
    'gpt2-xl': dict(n_layer=48, n_head=25, n_embd=1600),  # 1558M params
}


@dataclass
class GPTConfig:
    block_size: int = 1024
    vocab_size: int = 50304  # GPT-2's 50257, padded up to a multiple of 64 for faster matmuls
    n_layer: int = 12
    n_head: int = 12
    n_embd: int = 768
    dropout: float = 0.0
    bias: bool = True  # biases in the Linears and LayerNorms, as GPT-2; False is a little better and faster


class LayerNorm(nn.Module):
    """LayerNorm with an optional bias (nn.LayerNorm has `bias=` only since torch 2.1)."""

    def __init__(self, ndim, bias):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(ndim))
        self.bias = nn.Parameter(torch.zeros(ndim)) if bias else None

    def forward(self, input):
        return F.layer_norm(input, self.weight.shape, self.weight, self.bias, 1e-5)


class CausalSelfAttention(nn.Module):

    def __init__(self, config):
        super().__init__()
        assert config.n_embd % config.n_head == 0
        # the key, query and value projections of all heads, as one matmul
        self.c_attn = nn.Linear(config.n_embd, 3 * config.n_embd, bias=config.bias)
        # the output projection
        self.c_proj = nn.Linear(config.n_embd, config.n_embd, bias=config.bias)
        self.attn_dropout = nn.Dropout(config.dropout)
        self.resid_dropout = nn.Dropout(config.dropout)
        self.n_head = config.n_head
        self.n_embd = config.n_embd
        self.dropout = config.dropout
        # flash attention: torch's fused kernel. nanogpt/cpu.py turns it off for CPU training, where
        # the written-out attention below runs faster with dropout (and sometimes in bfloat16)
        self.flash = True
        self.kv_cache = None  # set by nanogpt/engine.py while it generates

    def forward(self, x, input_pos=None):
        B, T, C = x.size()  # batch size, sequence length, embedding width (n_embd)

        # queries, keys and values for all heads, the head moved forward to be a batch dimension
        q, k, v = self.c_attn(x).split(self.n_embd, dim=2)
        k = k.view(B, T, self.n_head, C // self.n_head).transpose(1, 2)  # (B, nh, T, hs)
        q = q.view(B, T, self.n_head, C // self.n_head).transpose(1, 2)  # (B, nh, T, hs)
        v = v.view(B, T, self.n_head, C // self.n_head).transpose(1, 2)  # (B, nh, T, hs)

        if self.kv_cache is not None:
            # generating: store these keys and values at positions input_pos, then attend to every
            # position stored so far; the mask hides the cache rows not written yet
            k, v, mask = self.kv_cache.update(input_pos, k, v)  # (B, nh, block_size, hs), (T, block_size)
            y = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
        elif self.flash or not self.training:
            # causal self-attention: (B, nh, T, hs) x (B, nh, hs, T) -> (B, nh, T, T) -> (B, nh, T, hs)
            y = F.scaled_dot_product_attention(q, k, v, attn_mask=None,
                                               dropout_p=self.dropout if self.training else 0, is_causal=True)
        else:
            y = self.written_out_attention(q, k, v)  # (B, nh, T, hs)
        y = y.transpose(1, 2).contiguous().view(B, T, C)  # the heads side by side again

        # output projection
        y = self.resid_dropout(self.c_proj(y))
        return y

    def written_out_attention(self, q, k, v):
        """The attention of forward() written out, for training only. nanogpt/cpu.py may put an
        equivalent of its own in this slot (an instance attribute of the same name)."""
        T = q.size(-2)
        att = (q * (1.0 / math.sqrt(q.size(-1)))) @ k.transpose(-2, -1)  # (B, nh, T, T)
        # the causal mask as an added -inf bias: unlike masked_fill, its backward costs nothing
        future = torch.full((T, T), float('-inf'), dtype=att.dtype, device=att.device).triu(1)
        att = (att + future).softmax(dim=-1)
        return self.attn_dropout(att) @ v  # (B, nh, T, T) x (B, nh, T, hs) -> (B, nh, T, hs)


class MLP(nn.Module):

    def __init__(self, config):
        super().__init__()
        self.c_fc = nn.Linear(config.n_embd, 4 * config.n_embd, bias=config.bias)
        self.gelu = nn.GELU()
        self.c_proj = nn.Linear(4 * config.n_embd, config.n_embd, bias=config.bias)
        self.dropout = nn.Dropout(config.dropout)

    def forward(self, x):
        x = self.c_fc(x)
        x = self.gelu(x)
        x = self.c_proj(x)
        x = self.dropout(x)
        return x


class Block(nn.Module):

    def __init__(self, config):
        super().__init__()
        self.ln_1 = LayerNorm(config.n_embd, bias=config.bias)
        self.attn = CausalSelfAttention(config)
        self.ln_2 = LayerNorm(config.n_embd, bias=config.bias)
        self.mlp = MLP(config)

    def forward(self, x, input_pos=None):
        x = x + self.attn(self.ln_1(x), input_pos)
        x = x + self.mlp(self.ln_2(x))
        return x


class GPT(nn.Module):

    def __init__(self, config):
        super().__init__()
        assert config.vocab_size is not None
        assert config.block_size is not None
        self.config = config

        # The order of creation is that of nanoGPT: each module draws its default init from the
        # global RNG, so the same seed gives the same weights.
        self.transformer = nn.ModuleDict(dict(
            wte=nn.Embedding(config.vocab_size, config.n_embd),
            wpe=nn.Embedding(config.block_size, config.n_embd),
            drop=nn.Dropout(config.dropout),
            h=nn.ModuleList([Block(config) for _ in range(config.n_layer)]),
            ln_f=LayerNorm(config.n_embd, bias=config.bias),
        ))
        self.lm_head = nn.Linear(config.n_embd, config.vocab_size, bias=False)
        # weight tying: the token embedding is the output layer's weight (Press & Wolf 2017)
        self.transformer.wte.weight = self.lm_head.weight

        # init all weights, then scale the residual projections by 1/sqrt(2 * n_layer): each block
        # adds to the residual stream twice (GPT-2 paper)
        self.apply(self._init_weights)
        for pn, p in self.named_parameters():
            if pn.endswith('c_proj.weight'):
                torch.nn.init.normal_(p, mean=0.0, std=0.02 / math.sqrt(2 * config.n_layer))

        print("number of parameters: %.2fM" % (self.get_num_params() / 1e6,))

    def get_num_params(self, non_embedding=True):
        """The number of parameters. The position embeddings are left out by default; the token
        embedding stays in, since it is also the output layer's weight."""
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

    def forward(self, idx, targets=None, input_pos=None):
        device = idx.device
        b, t = idx.size()
        if t > self.config.block_size:
            raise ValueError(f"cannot forward a sequence of length {t}: block_size is only "
                             f"{self.config.block_size}")
        if input_pos is None:  # input_pos: where idx sits, when generating with a kv cache
            input_pos = torch.arange(0, t, dtype=torch.long, device=device)  # shape (t)

        # the GPT itself
        tok_emb = self.transformer.wte(idx)  # token embeddings of shape (b, t, n_embd)
        pos_emb = self.transformer.wpe(input_pos)  # position embeddings of shape (t, n_embd)
        x = self.transformer.drop(tok_emb + pos_emb)
        for block in self.transformer.h:
            x = block(x, input_pos)
        x = self.transformer.ln_f(x)

        if targets is not None:
            # with targets, the loss
            logits = self.lm_head(x)
            loss = F.cross_entropy(logits.view(-1, logits.size(-1)), targets.view(-1), ignore_index=-1)
        else:
            # generating: only the last position is read, so only its logits are computed
            logits = self.lm_head(x[:, -1:, :])  # a slice keeps the time dimension, and needs no host index
            loss = None

        return logits, loss

    def crop_block_size(self, block_size):
        """Shrink the context, e.g. to finetune GPT-2 (block_size 1024) with a smaller one."""
        assert block_size <= self.config.block_size
        self.config.block_size = block_size
        self.transformer.wpe.weight = nn.Parameter(self.transformer.wpe.weight[:block_size])

    @property
    def gelu_approximate(self):
        return self.transformer.h[0].mlp.gelu.approximate if len(self.transformer.h) else 'none'

    def set_gelu_approximate(self, approximate):
        """'none': the exact GELU (this model's own); 'tanh': GPT-2's 'gelu_new'. Checkpoints keep
        it beside model_args (key 'gelu_approximate'), so that GPTConfig stays the original's."""
        for block in self.transformer.h:
            block.mlp.gelu = nn.GELU(approximate=approximate)

    @classmethod
    def from_pretrained(cls, model_type, override_args=None):
        """OpenAI's GPT-2 weights through Hugging Face transformers: 'gpt2', 'gpt2-medium',
        'gpt2-large', 'gpt2-xl', or a directory holding a GPT-2 checkpoint (as export_hf.py
        writes). Only dropout may be overridden. Problems raise ImportError, OSError or
        ValueError, each with a one-line message."""
        override_args = dict(override_args or {})
        if set(override_args) - {'dropout'}:
            raise ValueError(f"only dropout can be overridden for GPT-2, got {sorted(set(override_args) - {'dropout'})}")
        if not os.path.isdir(model_type) and model_type not in GPT2_SIZES:
            raise ValueError(f"unknown pretrained model {model_type!r}: use one of {', '.join(GPT2_SIZES)} "
                             f"or a directory holding a Hugging Face GPT-2 checkpoint")
        try:
            from transformers import GPT2LMHeadModel
        except ImportError:
            raise ImportError("loading GPT-2 weights needs the transformers package: pip install transformers") from None
        print(f"loading weights from pretrained gpt: {model_type}")
        try:
            hf = GPT2LMHeadModel.from_pretrained(model_type)
        except (OSError, ValueError) as e:  # no network, no such directory content, not GPT-2
            first = next((line for line in str(e).splitlines() if line.strip()), type(e).__name__)
            raise OSError(f"cannot load GPT-2 weights from {model_type!r}: {first.strip()[:300]}") from None
        c = hf.config
        config_args = dict(n_layer=c.n_layer, n_head=c.n_head, n_embd=c.n_embd, vocab_size=c.vocab_size,
                           block_size=c.n_positions, bias=True)  # GPT-2 has biases everywhere
        if model_type in GPT2_SIZES and any(config_args[k] != v for k, v in GPT2_SIZES[model_type].items()):
            raise ValueError(f"the checkpoint for {model_type!r} does not have {model_type}'s shape")
        print(f"forcing vocab_size={c.vocab_size}, block_size={c.n_positions}, bias=True")
        # What this model hard-codes must hold for the checkpoint too. GPT-2's activation is the
        # tanh approximation of GELU ('gelu_new'): the blocks are switched to it below.
        approximate = {'gelu': 'none', 'gelu_new': 'tanh', 'gelu_pytorch_tanh': 'tanh', 'gelu_fast': 'tanh'}
        wrong = [f"activation_function={c.activation_function!r}"] if c.activation_function not in approximate else []
        wrong += [f"n_inner={c.n_inner}"] if c.n_inner not in (None, 4 * c.n_embd) else []
        wrong += [f"layer_norm_epsilon={c.layer_norm_epsilon}"] if c.layer_norm_epsilon != 1e-5 else []
        wrong += ["non-standard attention scaling"] if not c.scale_attn_weights or c.scale_attn_by_inverse_layer_idx else []
        out_w, in_w = hf.get_output_embeddings().weight, hf.get_input_embeddings().weight
        wrong += ["an output layer not tied to the token embedding"] if out_w is not in_w and not torch.equal(out_w, in_w) else []
        if wrong:
            raise ValueError(f"{model_type!r} is not a plain GPT-2 checkpoint: {'; '.join(wrong)}")
        if 'dropout' in override_args:
            print(f"overriding dropout rate to {override_args['dropout']}")
        config_args['dropout'] = override_args.get('dropout', 0.0)
        model = GPT(GPTConfig(**config_args))
        model.set_gelu_approximate(approximate[c.activation_function])
        sd = model.state_dict()
        # the .attn.bias / .attn.masked_bias buffers of older transformers are causal masks, not weights
        sd_hf = {k: v for k, v in hf.state_dict().items() if not k.endswith(('.attn.masked_bias', '.attn.bias'))}
        if set(sd_hf) != set(sd):
            raise ValueError(f"{model_type!r}: the checkpoint's keys are not GPT-2's, e.g. {sorted(set(sd_hf) ^ set(sd))[:3]}")
        with torch.no_grad():
            for k, v in sd_hf.items():
                v = v.t() if k.endswith(CONV1D_WEIGHTS) else v  # Conv1D stores the transpose
                if v.shape != sd[k].shape:
                    raise ValueError(f"{model_type!r}: {k} has shape {tuple(v.shape)}, expected {tuple(sd[k].shape)}")
                sd[k].copy_(v)
        return model

    def configure_optimizers(self, weight_decay, learning_rate, betas, device_type, fused=None):
        optim_groups = adamw_groups([p for p in self.parameters() if p.requires_grad], weight_decay)
        for kind, group in zip(('decayed', 'non-decayed'), optim_groups):
            params = group['params']
            print(f"num {kind} parameter tensors: {len(params)}, with {sum(p.numel() for p in params):,} parameters")
        optimizer = adamw(optim_groups, learning_rate, betas, device_type, fused)
        print(f"using fused AdamW: {optimizer.defaults.get('fused') is True}")
        return optimizer

    def estimate_mfu(self, fwdbwd_per_iter, dt, peak_flops=312e12):
        """Model FLOPs utilisation: the FLOP/s achieved, over peak_flops (default: an A100's bf16
        peak, 312 TFLOP/s). fwdbwd_per_iter sequences of block_size tokens took dt seconds. The
        FLOPs per token are those of the PaLM paper (Chowdhery et al. 2022, appendix B): 6N for
        the weights' matmuls forward and backward, and 12*L*H*Q*T for attention."""
        N = self.get_num_params()
        cfg = self.config
        L, H, Q, T = cfg.n_layer, cfg.n_head, cfg.n_embd // cfg.n_head, cfg.block_size
        flops_per_token = 6 * N + 12 * L * H * Q * T
        flops_per_fwdbwd = flops_per_token * T
        flops_per_iter = flops_per_fwdbwd * fwdbwd_per_iter
        flops_achieved = flops_per_iter * (1.0 / dt)  # per second
        return flops_achieved / peak_flops

    @torch.no_grad()
    def generate(self, idx, max_new_tokens, temperature=1.0, top_k=None):
        """Extend idx (LongTensor of shape (b, t)) by max_new_tokens tokens, one at a time, each
        drawn from the model's prediction for the sequence so far (its last block_size tokens).
        This is the plain algorithm, which re-runs the whole context for every token; use
        model.eval() first. nanogpt/engine.py draws the same tokens faster."""
        for _ in range(max_new_tokens):
            # past block_size, the context is cropped to the last block_size tokens
            idx_cond = idx if idx.size(1) <= self.config.block_size else idx[:, -self.config.block_size:]
            logits, _ = self(idx_cond)
            # the logits of the last position, scaled by the temperature
            logits = logits[:, -1, :] / temperature
            # keep only the top_k most likely tokens
            if top_k is not None:
                v, _ = torch.topk(logits, min(top_k, logits.size(-1)))
                logits[logits < v[:, [-1]]] = -float('Inf')
            probs = F.softmax(logits, dim=-1)
            idx_next = torch.multinomial(probs, num_samples=1)
            idx = torch.cat((idx, idx_next), dim=1)
        return idx


def adamw_groups(params, weight_decay):
    """AdamW's two parameter groups: weight decay for the matrices (Linear and Embedding weights)
    only; biases and LayerNorm gains are 1-d, and decaying them pulls activations toward zero for
    no gain. nanogpt/optim.py builds Muon's companion AdamW from these too."""
    return [{'params': [p for p in params if p.dim() >= 2], 'weight_decay': weight_decay},
            {'params': [p for p in params if p.dim() < 2], 'weight_decay': 0.0}]


def adamw(groups, learning_rate, betas, device_type, fused=None):
    """torch's AdamW over `groups`. The fused one updates all parameters in one kernel rather than a
    chain of small ones; torch has it for CUDA and (2.4+) CPUs, the default of fused=None there.
    Where it is refused, the foreach update runs."""
    if fused is None:
        fused = device_type in ('cuda', 'cpu')
    if fused:
        try:
            return torch.optim.AdamW(groups, lr=learning_rate, betas=betas, fused=True)
        except (RuntimeError, TypeError, ValueError):
            pass
    return torch.optim.AdamW(groups, lr=learning_rate, betas=betas)
