"""
The optimizer train.py and bench.py build: nanoGPT's AdamW, or Muon for the blocks' weight
matrices with AdamW for everything else.

    python train.py config/train_shakespeare_char_cpu.py --optimizer=muon --muon_lr=0.02

Muon (Jordan et al. 2024, "Muon: An optimizer for hidden layers in neural networks";
Liu et al. 2025, "Muon is Scalable for LLM Training") replaces each 2-D update of a hidden layer
by the nearest semi-orthogonal matrix (a Newton-Schulz iteration), so that every direction of the
matrix learns at the same rate. It is defined for hidden weight matrices only: the token
embedding (tied to the output layer), the position embedding, LayerNorm gains and biases stay
with AdamW, as in modded-nanogpt and nanochat. PyTorch ships Muon as torch.optim.Muon (2.9+),
which orthogonalises in bfloat16; where bfloat16 is emulated (CPUs without AVX512-BF16 or AMX,
GPUs before compute capability 8.0) the same update is orthogonalised in float32. StackedMuon is
torch.optim.Muon with the matrices of one shape orthogonalised together, in either dtype.
"""

import math

import torch

from model import adamw, adamw_groups

from . import devices
from .errors import UserError

__all__ = ['StackedMuon', 'MuonAdamW', 'build_optimizer', 'clip_gradients', 'resolve_optimizer', 'set_lr']


def muon_param_split(model):
    """(names for Muon, names for AdamW): the blocks' 2-D weights go to Muon."""
    muon, adamw = [], []
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        (muon if p.dim() == 2 and '.h.' in f'.{name}' else adamw).append(name)
    return muon, adamw


class MuonAdamW:
    """Two optimizers stepped as one: torch.optim.Muon over the blocks' matrices and AdamW over the
    rest. Exposes what train.py uses (param_groups, step, zero_grad, state_dict, load_state_dict);
    each group remembers its own peak learning rate in 'peak_lr', which the schedule scales."""

    kind = 'muon'

    def __init__(self, muon, adamw):
        self.muon, self.adamw = muon, adamw
        self.optimizers = (adamw, muon)

    @property
    def param_groups(self):
        return [g for o in self.optimizers for g in o.param_groups]

    @property
    def defaults(self):
        return self.adamw.defaults

    @property
    def state(self):
        return {**self.adamw.state, **self.muon.state}

    def step(self):
        for o in self.optimizers:
            o.step()

    def zero_grad(self, set_to_none=True):
        for o in self.optimizers:
            o.zero_grad(set_to_none=set_to_none)

    def state_dict(self):
        return {'kind': 'muon', 'adamw': self.adamw.state_dict(), 'muon': self.muon.state_dict()}

    def load_state_dict(self, sd):
        if not isinstance(sd, dict) or sd.get('kind') != 'muon':
            raise ValueError("the checkpoint's optimizer state is AdamW's, not Muon's")
        self.adamw.load_state_dict(sd['adamw'])
        self.muon.load_state_dict(sd['muon'])

    def inner_states(self, sd):
        """(optimizer, its part of state dict sd) pairs, for checks that go optimizer by optimizer."""
        return [(self.adamw, sd['adamw']), (self.muon, sd['muon'])]


def orthogonalize(updates, coefficients, steps, eps):
    """torch.optim.Muon's quintic Newton-Schulz iteration (Jordan et al. 2024) on a stack of
    same-shaped updates (n, rows, cols) at once, in their dtype: each matrix scaled to spectral
    norm at most 1 (by its Frobenius norm), then `steps` rounds of X <- aX + (bA + cA^2)X with
    A = XX^T, worked on the wide orientation so that A is the smaller Gram matrix. One batched
    matmul per product for the whole stack instead of one small matmul per matrix."""
    a, b, c = coefficients
    x = updates
    tall = x.size(-2) > x.size(-1)
    if tall:
        x = x.mT
    x = x / torch.linalg.vector_norm(x, dim=(-2, -1), keepdim=True).clamp(min=eps)
    for _ in range(steps):
        gram = x @ x.mT  # (n, rows, rows)
        x = torch.baddbmm(x, torch.baddbmm(gram, gram, gram, beta=b, alpha=c), x, beta=a)
    return x.mT if tall else x


# torch.optim.Muon is new in torch 2.9: before it the class stands on Optimizer, so that this module
# imports on every torch the project supports; check_muon_available stops a Muon run there first
class StackedMuon(getattr(torch.optim, 'Muon', torch.optim.Optimizer)):
    """torch.optim.Muon's update, with the matrices of one shape orthogonalised together
    (orthogonalize on a stack): the 4-layer CPU recipe's 16 matrices are 4 stacks, so its
    Newton-Schulz iteration runs as 4 batched matmuls per product instead of 16 small ones. The
    same hyperparameters and state ('momentum_buffer'): a checkpoint moves between this and
    torch.optim.Muon. `ns_dtype`: bfloat16 as torch.optim.Muon, or float32 where bfloat16 is
    emulated (CPUs without AVX512-BF16 or AMX, GPUs before compute capability 8.0)."""

    def __init__(self, params, ns_dtype=torch.bfloat16, **kwargs):
        super().__init__(params, **kwargs)
        self.ns_dtype = ns_dtype

    @torch.no_grad()
    def step(self, closure=None):
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            lr, momentum = group['lr'], group['momentum']
            by_shape = {}
            for p in group['params']:
                if p.grad is None:
                    continue
                state = self.state[p]
                if 'momentum_buffer' not in state:
                    state['momentum_buffer'] = torch.zeros_like(p.grad, memory_format=torch.preserve_format)
                by_shape.setdefault((p.shape, p.device), []).append(p)
            for (shape, _), params in by_shape.items():
                grads = [p.grad for p in params]
                bufs = [self.state[p]['momentum_buffer'] for p in params]
                torch._foreach_lerp_(bufs, grads, 1 - momentum)
                updates = torch._foreach_lerp(grads, bufs, momentum) if group['nesterov'] else bufs
                stack = torch.stack([u.to(self.ns_dtype) for u in updates])  # (n, rows, cols)
                ortho = orthogonalize(stack, group['ns_coefficients'], group['ns_steps'], group['eps'])
                # the 'original' adjustment: a (rows, cols) update is scaled by sqrt(max(1, rows/cols))
                rows, cols = shape[:2]
                torch._foreach_mul_(params, 1 - lr * group['weight_decay'])
                torch._foreach_add_(params, [o.to(p.dtype) for o, p in zip(ortho.unbind(0), params)],
                                    alpha=-lr * math.sqrt(max(1, rows / cols)))
        return loss


def check_muon_available():
    have = devices.torch_version()
    if have < devices.MUON_MIN_TORCH or not hasattr(torch.optim, 'Muon'):
        raise UserError(f"optimizer=muon needs torch.optim.Muon, in torch {'.'.join(map(str, devices.MUON_MIN_TORCH))} "
                        f"and later; this is torch {torch.__version__}: pip install 'torch>=2.9', or "
                        f"use --optimizer=adamw")


def resolve_optimizer(name, device_type, device=None, sharded=False):
    """'auto' -> 'muon' (Muon for the block matrices, AdamW for the rest), where torch has
    torch.optim.Muon and the matrices are whole; prints why. Where bfloat16 is emulated (CPUs
    without AVX512-BF16 or AMX, GPUs before compute capability 8.0) build_optimizer takes
    StackedMuon orthogonalising in float32: measured there against AdamW at equal
    time, it still won (docs/training.md, the CPU recipe's ablation)."""
    if name != 'auto':
        return name
    if sharded:
        chosen, why = 'adamw', 'FSDP shards the matrices Muon must see whole'
    elif not hasattr(torch.optim, 'Muon'):
        chosen, why = 'adamw', f'torch {torch.__version__} has no torch.optim.Muon (2.9+)'
    elif devices.bf16_native(device_type, device):
        chosen, why = 'muon', 'this device multiplies bfloat16 natively, as torch.optim.Muon\'s orthogonalisation needs'
    else:
        chosen, why = 'muon', 'bfloat16 is emulated here: orthogonalised in float32, still ahead of AdamW at equal time'
    print(f"using optimizer: {chosen} (auto: {why})")
    return chosen


def build_optimizer(model, c, kind, device_type, fused=None):
    """AdamW (kind 'adamw') exactly as nanoGPT builds it (model.configure_optimizers), or MuonAdamW
    ('muon'). `c` holds learning_rate, muon_lr, muon_momentum, weight_decay, beta1, beta2; `fused`:
    the AdamW kernel (None: model.adamw's default)."""
    if kind == 'adamw':
        return model.configure_optimizers(c.weight_decay, c.learning_rate, (c.beta1, c.beta2), device_type, fused)
    if kind != 'muon':
        raise UserError(f"unknown optimizer {kind!r}: use adamw or muon (e.g. --optimizer=muon)")
    check_muon_available()
    params = dict(model.named_parameters())
    muon_names, adamw_names = muon_param_split(model)
    # AdamW keeps nanoGPT's two groups: embeddings decay, 1-D gains and biases do not
    groups = [dict(g, peak_lr=c.learning_rate) for g in adamw_groups([params[n] for n in adamw_names], c.weight_decay)]
    adamw_part = adamw(groups, c.learning_rate, (c.beta1, c.beta2), device_type, fused)
    # the 'original' learning-rate adjustment: an update of a (rows, cols) matrix is scaled by
    # sqrt(max(1, rows/cols)), so muon_lr is a step size per unit of spectral norm
    ns_dtype = torch.bfloat16 if devices.bf16_native(device_type) else torch.float32
    muon = StackedMuon([{'params': [params[n] for n in muon_names], 'peak_lr': c.muon_lr}], ns_dtype=ns_dtype,
                       lr=c.muon_lr, momentum=c.muon_momentum, weight_decay=c.weight_decay)
    n_muon = sum(params[n].numel() for n in muon_names)
    n_adamw = sum(params[n].numel() for n in adamw_names)
    print(f"Muon for {len(muon_names)} block matrices ({n_muon:,} parameters, lr {c.muon_lr}"
          f"{', float32 orthogonalisation: bfloat16 is emulated here' if ns_dtype == torch.float32 else ''}); "
          f"AdamW for {len(adamw_names)} embedding, gain and bias tensors ({n_adamw:,} parameters, "
          f"lr {c.learning_rate})")
    return MuonAdamW(muon, adamw_part)


def set_lr(optimizer, lr, learning_rate):
    """Apply the schedule's learning rate `lr` (which peaks at `learning_rate`): AdamW's groups
    take it as it is, as in nanoGPT; a group with its own peak ('peak_lr') follows in proportion."""
    for group in optimizer.param_groups:
        peak = group.get('peak_lr', learning_rate)
        group['lr'] = lr if peak == learning_rate else peak * (lr / learning_rate)


def clip_gradients(parameters, grad_clip):
    """Clip the gradients' total norm to grad_clip (0: leave them as they are) and return that
    norm as it was before clipping, a tensor (read it when logging: on a GPU reading is a sync).
    Under FSDP the norm of the sharded gradients is gathered into one number."""
    params = [p for p in parameters if p.grad is not None]
    if grad_clip != 0.0:
        norm = torch.nn.utils.clip_grad_norm_(params, grad_clip)
    elif hasattr(torch.nn.utils, 'get_total_norm'):  # torch 2.6+
        norm = torch.nn.utils.get_total_norm([p.grad for p in params])
    else:
        norm = torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(p.grad) for p in params]))
    return norm.full_tensor() if hasattr(norm, 'full_tensor') else norm
