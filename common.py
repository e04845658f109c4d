"""
Helpers shared by train.py, sample.py and bench.py: one-line user errors, device / dtype / compile
choice, checkpoint save and load, dataset paths and tokenizers. Nothing here runs at import time.
"""

import os
import pickle
import shutil
import sys
import time
from contextlib import nullcontext

import torch

PROJECT_DIR = os.path.dirname(os.path.abspath(__file__))
PTDTYPES = {'float32': torch.float32, 'bfloat16': torch.bfloat16, 'float16': torch.float16}


class UserError(Exception):
    """A mistake in the user's input: reported as one line and exit code 2, never a traceback."""


def run_cli(main, argv=None):
    """Run main(argv) the way a command should end: user errors as `error: ...` on stderr (exit 2),
    Ctrl-C as exit 130."""
    try:
        return main(argv)
    except UserError as e:
        print(f"error: {e}", file=sys.stderr, flush=True)
        sys.exit(2)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        sys.exit(130)


_warned = set()


def warn_once(msg):
    if msg not in _warned:
        _warned.add(msg)
        print(f"warning: {msg}", file=sys.stderr, flush=True)


# ---- device, dtype, compile -------------------------------------------------------------------

def mps_available():
    return hasattr(torch.backends, 'mps') and torch.backends.mps.is_available()


def resolve_device(device):
    """'auto' -> cuda, then mps, then cpu. Explicit names are checked against the machine."""
    if device == 'auto':
        device = 'cuda' if torch.cuda.is_available() else 'mps' if mps_available() else 'cpu'
        print(f"using device: {device} (auto: cuda, then mps, then cpu)")
        return device
    kind, _, index = str(device).partition(':')
    if kind not in ('cpu', 'cuda', 'mps') or (index and (kind != 'cuda' or not index.isdigit())):
        raise UserError(f"unknown device {device!r}: use auto, cpu, cuda, cuda:N or mps (e.g. --device=cpu)")
    if kind == 'cuda':
        if not torch.cuda.is_available():
            raise UserError(f"device {device!r} requested but this torch sees no CUDA GPU: use --device=cpu")
        if index and int(index) >= torch.cuda.device_count():
            raise UserError(f"device {device!r} does not exist: this machine has "
                            f"{torch.cuda.device_count()} CUDA device(s)")
    if kind == 'mps' and not mps_available():
        raise UserError(f"device {device!r} requested but MPS is not available here: use --device=cpu")
    return device


def device_type_of(device):
    return 'cuda' if 'cuda' in device else 'mps' if 'mps' in device else 'cpu'


def cpu_has_bf16_units():
    """True where the CPU multiplies bfloat16 natively (Intel AMX or AVX512-BF16); elsewhere bf16
    matmuls are emulated and slower than float32."""
    q = torch.cpu
    return bool(getattr(q, '_is_amx_tile_supported', lambda: False)()
                or getattr(q, '_is_avx512_bf16_supported', lambda: False)())


# On CPUs with bf16 units, autocast pays once the matmuls are big enough to outweigh the casts;
# below this width float32 is as fast (measured with bench.py --compare, see README).
CPU_BF16_MIN_EMBD = 256


def resolve_dtype(dtype, device_type, n_embd=None):
    """'auto' -> the fastest dtype that trains as well as float32 on this device."""
    if dtype != 'auto':
        if dtype not in PTDTYPES:
            raise UserError(f"unknown dtype {dtype!r}: use auto, float32, bfloat16 or float16")
        if dtype == 'bfloat16' and device_type == 'cuda' and not torch.cuda.is_bf16_supported():
            raise UserError("this GPU has no bfloat16 support: use --dtype=float16")
        return dtype
    if device_type == 'cuda':
        chosen, why = ('bfloat16', 'GPU supports bf16') if torch.cuda.is_bf16_supported() \
            else ('float16', 'GPU lacks bf16; a gradient scaler is used')
    elif device_type == 'mps':
        chosen, why = 'float32', 'MPS'
    elif not cpu_has_bf16_units():
        chosen, why = 'float32', 'CPU has no bf16 matrix units (AMX/AVX512-BF16)'
    elif n_embd is not None and n_embd < CPU_BF16_MIN_EMBD:
        chosen, why = 'float32', f'model width {n_embd} < {CPU_BF16_MIN_EMBD}: bf16 casts cost more than they save'
    else:
        chosen, why = 'bfloat16', 'CPU has bf16 matrix units'
    print(f"using dtype: {chosen} (auto: {why})")
    return chosen


def has_cxx_compiler():
    return any(shutil.which(c) for c in ('g++', 'c++', 'clang++', 'cl'))


def resolve_compile(compile, device_type):
    """'auto' -> torch.compile on CUDA, and on CPU where a C++ compiler is present (inductor
    generates C++ there); never on MPS. An explicit True that cannot work warns and falls back."""
    if compile not in ('auto', True, False):
        raise UserError(f"compile must be True, False or auto, got {compile!r}")
    possible, why = True, ''
    if device_type == 'mps':
        possible, why = False, 'torch.compile is not supported on MPS'
    elif device_type == 'cpu' and not has_cxx_compiler():
        possible, why = False, 'no C++ compiler found (install g++)'
    elif sys.platform == 'win32':
        possible, why = False, 'torch.compile needs Triton / a supported C++ toolchain on Windows'
    if compile == 'auto':
        print(f"compile: {possible}" + (f" ({why})" if why else " (auto)"))
        return possible
    if compile and not possible:
        warn_once(f"compile=True ignored: {why}; running eager")
        return False
    return bool(compile)


def autocast_ctx(device_type, dtype):
    """Mixed precision context for forward passes; float32 runs plain."""
    if dtype == 'float32':
        return nullcontext()
    return torch.autocast(device_type=device_type, dtype=PTDTYPES[dtype])


# ---- peak FLOP/s for MFU -----------------------------------------------------------------------

GPU_PEAK_FLOPS = {  # dense bf16 / fp16 tensor-core peak, FLOP/s
    'H200': 989e12, 'H100': 989e12, 'H800': 989e12, 'GH200': 989e12, 'B200': 2250e12,
    'A100': 312e12, 'A800': 312e12, 'A10G': 125e12, 'A10': 125e12, 'L40S': 362e12, 'L4': 121e12,
    'RTX 4090': 165e12, 'RTX 3090': 71e12, 'V100': 125e12, 'T4': 65e12,
}
_measured_peak = {}


def measure_matmul_peak(device, dtype, n=1024, seconds=0.3):
    """Best FLOP/s of a square matmul on this device, measured once per run (cached)."""
    key = (device, dtype)
    if key not in _measured_peak:
        g = torch.Generator(device=device).manual_seed(0)  # leave the global RNG untouched
        a = torch.randn(n, n, device=device, dtype=PTDTYPES[dtype], generator=g)
        b = torch.randn(n, n, device=device, dtype=PTDTYPES[dtype], generator=g)
        a @ b  # warm-up
        best, t_end = 0.0, time.perf_counter() + seconds
        while time.perf_counter() < t_end:
            t0 = time.perf_counter()
            a @ b
            if device.startswith('cuda'):
                torch.cuda.synchronize()
            best = max(best, 2 * n ** 3 / (time.perf_counter() - t0))
        _measured_peak[key] = best
    return _measured_peak[key]


def peak_flops(device, dtype, override=0.0):
    """Peak FLOP/s that MFU is measured against: `override` if set, a table for known GPUs,
    otherwise a short measured matmul peak."""
    if override:
        return float(override), 'set by peak_flops'
    if device.startswith('cuda'):
        name = torch.cuda.get_device_name(device)
        for k, v in GPU_PEAK_FLOPS.items():
            if k in name:
                return (v if dtype != 'float32' else v / 2), name  # tf32 runs at about half
    return measure_matmul_peak(device, dtype), f'measured {dtype} matmul on {device}'


# ---- checkpoints ---------------------------------------------------------------------------------

def save_checkpoint(obj, path):
    """torch.save that never leaves a half-written file: write a temporary file in the same
    directory, fsync it, then rename over `path` (atomic on POSIX)."""
    d = os.path.dirname(os.path.abspath(path))
    tmp = os.path.join(d, f".{os.path.basename(path)}.tmp{os.getpid()}")
    try:
        with open(tmp, 'wb') as f:
            torch.save(obj, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)
    try:  # make the rename itself durable
        fd = os.open(d, os.O_RDONLY)
        os.fsync(fd)
        os.close(fd)
    except OSError:
        pass


def load_checkpoint(path, device='cpu'):
    """Load a ckpt.pt with weights_only=True (no code can run), with one-line errors."""
    if not os.path.exists(path):
        raise UserError(f"no checkpoint at {path}: train one first, e.g. "
                        f"python train.py config/train_shakespeare_char.py")
    try:
        ckpt = torch.load(path, map_location=device, weights_only=True)
    except Exception as e:
        raise UserError(f"{path} is not a loadable checkpoint (truncated or corrupt?): "
                        f"{type(e).__name__}: {str(e).splitlines()[0][:200] if str(e) else ''}")
    if not isinstance(ckpt, dict) or not {'model', 'model_args'} <= set(ckpt):
        raise UserError(f"{path} is not a nanoGPT checkpoint: it lacks the 'model' and 'model_args' keys")
    return ckpt


def clean_state_dict(state_dict):
    """Strip the prefixes that torch.compile ('_orig_mod.') and DDP ('module.') add to keys."""
    out = {}
    for k, v in state_dict.items():
        for prefix in ('_orig_mod.', 'module.'):
            while k.startswith(prefix):
                k = k[len(prefix):]
        out[k] = v
    return out


def model_from_checkpoint(ckpt, **override):
    """A GPT with the checkpoint's architecture and weights."""
    from model import GPT, GPTConfig
    args = dict(ckpt['model_args'])
    args.update(override)
    model = GPT(GPTConfig(**args))
    try:
        model.load_state_dict(clean_state_dict(ckpt['model']))
    except RuntimeError as e:
        raise UserError(f"checkpoint weights do not fit its model_args: {str(e).splitlines()[1:2]}")
    return model


# ---- datasets and tokenizers -------------------------------------------------------------------

def dataset_dir(dataset):
    """data/<dataset> inside the project (whatever the working directory), or a directory path."""
    if os.sep in dataset or '/' in dataset or dataset.startswith('.'):
        return os.path.abspath(dataset)
    return os.path.join(PROJECT_DIR, 'data', dataset)


class _PlainUnpickler(pickle.Unpickler):
    """Accepts only dicts, lists, tuples, strings, numbers, booleans and None: a pickle that names
    any class or function (the way pickles run code) is refused."""

    def find_class(self, module, name):
        raise pickle.UnpicklingError(f"refusing to load {module}.{name}")


def load_meta(path):
    """Read a meta.pkl safely and check it has what a character tokenizer needs."""
    try:
        with open(path, 'rb') as f:
            meta = _PlainUnpickler(f).load()
    except pickle.UnpicklingError as e:
        raise UserError(f"{path} is not a plain-data pickle ({e}); it may be malicious: "
                        f"delete it and re-run the dataset's prepare.py")
    except Exception as e:
        raise UserError(f"cannot read {path}: {type(e).__name__}: {e}")
    if not isinstance(meta, dict):
        raise UserError(f"{path} must hold a dict, found {type(meta).__name__}")
    missing = [k for k in ('vocab_size', 'stoi', 'itos') if k not in meta]
    if missing:
        # a BPE dataset may record only vocab_size; a char tokenizer needs all three
        if missing != ['stoi', 'itos'] or not isinstance(meta.get('vocab_size'), int):
            raise UserError(f"{path} lacks key(s) {missing}: re-run the dataset's prepare.py")
    if not isinstance(meta.get('vocab_size'), int) or meta['vocab_size'] < 1:
        raise UserError(f"{path}: vocab_size must be a positive int, found {meta.get('vocab_size')!r}")
    return meta


class Tokenizer:
    """encode(str) -> list[int], decode(list[int]) -> str, from meta.pkl (characters) or GPT-2 BPE."""

    def __init__(self, meta=None, meta_path=None):
        self.meta_path = meta_path
        if meta is not None and 'stoi' in meta:
            self.kind = 'char'
            self.stoi, self.itos = meta['stoi'], meta['itos']
            self.vocab_size = meta['vocab_size']
            self.eot = None
        else:
            import tiktoken
            enc = tiktoken.get_encoding('gpt2')
            self.kind = 'gpt2'
            self.enc = enc
            self.vocab_size = enc.n_vocab
            self.eot = enc.eot_token

    def encode(self, s):
        if self.kind == 'gpt2':
            return self.enc.encode(s, allowed_special={'<|endoftext|>'})
        unknown = sorted({c for c in s if c not in self.stoi})
        if unknown:
            raise UserError(f"prompt has character(s) not in the vocabulary of {self.meta_path}: "
                            f"{', '.join(repr(c) for c in unknown)}")
        return [self.stoi[c] for c in s]

    def decode(self, ids):
        if self.kind == 'gpt2':
            return self.enc.decode(ids)
        return ''.join(self.itos[i] for i in ids)

    def decode_bytes(self, ids):
        """Raw bytes of tokens, for streaming BPE output without splitting UTF-8 characters."""
        if self.kind == 'gpt2':
            return self.enc.decode_bytes(ids)
        return self.decode(ids).encode('utf-8')


def tokenizer_for_dataset(dataset):
    """The dataset's meta.pkl tokenizer when it exists, else GPT-2 BPE; prints which (as nanoGPT does)."""
    if dataset:
        meta_path = os.path.join(dataset_dir(dataset), 'meta.pkl')
        if os.path.exists(meta_path):
            shown = meta_path if dataset_dir(dataset) == os.path.abspath(dataset) else f"data/{dataset}/meta.pkl"
            print(f"Loading meta from {shown}...")
            meta = load_meta(meta_path)
            return Tokenizer(meta, meta_path)
    print("No meta.pkl found, assuming GPT-2 encodings...")
    return Tokenizer()

