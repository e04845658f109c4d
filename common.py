"""
Helpers shared by train.py, sample.py and bench.py: one-line user errors, device / dtype / compile
choice, checkpoint save and load, dataset paths and tokenizers. Nothing here runs at import time.
"""

import importlib.util
import os
import pickle
import re
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


def mps_autocast_supported():
    """True where this torch can autocast to bfloat16 on MPS: it needs torch's MPS autocast
    (torch 2.5 and later) and macOS 14 or later, where Metal has bfloat16."""
    try:
        return bool(torch.amp.autocast_mode.is_autocast_available('mps')
                    and torch.backends.mps.is_macos_or_newer(14, 0))
    except (AttributeError, RuntimeError):
        return False


# On CPUs with bf16 units (AMX tiles, AVX512-BF16) a bf16 matmul runs several times faster than a
# float32 one, but autocast also casts every weight and activation each step; for narrow models
# those casts and the small, badly-shaped matmuls eat the gain. 256 keeps the original's 128-wide
# CPU recipe in float32 and gives the 384-wide shakespeare_char model bf16.
CPU_BF16_MIN_EMBD = 256


def resolve_dtype(dtype, device_type, n_embd=None):
    """'auto' -> the fastest dtype that trains as well as float32 on this device. Prints the
    choice and the reason."""
    if dtype != 'auto':
        if dtype not in PTDTYPES:
            raise UserError(f"unknown dtype {dtype!r}: use auto, float32, bfloat16 or float16")
        if dtype == 'bfloat16' and device_type == 'cuda' and not torch.cuda.is_bf16_supported():
            raise UserError("this GPU has no bfloat16 support: use --dtype=float16")
        if dtype != 'float32' and device_type == 'mps' and not mps_autocast_supported():
            raise UserError(f"--dtype={dtype} needs autocast on MPS (torch 2.5+ on macOS 14+); "
                            f"this setup lacks it: use --dtype=float32")
        if dtype == 'float16' and device_type != 'cuda':
            warn_once(f"float16 on {device_type} runs without a gradient scaler (CUDA only) and can "
                      f"underflow; bfloat16 or float32 is safer")
        if dtype == 'bfloat16' and device_type == 'cpu' and not cpu_has_bf16_units():
            warn_once("this CPU has no bf16 matrix units (AMX/AVX512-BF16): bfloat16 is emulated "
                      "and slower than float32")
        return dtype
    if device_type == 'cuda':
        chosen, why = ('bfloat16', 'GPU supports bf16') if torch.cuda.is_bf16_supported() \
            else ('float16', 'GPU lacks bf16; a gradient scaler is used')
    elif device_type == 'mps':
        chosen, why = ('bfloat16', 'MPS autocast with bf16 available') if mps_autocast_supported() \
            else ('float32', 'this torch/macOS has no bf16 autocast on MPS')
    elif not cpu_has_bf16_units():
        chosen, why = 'float32', 'CPU has no bf16 matrix units (AMX/AVX512-BF16), bf16 would be emulated'
    elif n_embd is not None and n_embd < CPU_BF16_MIN_EMBD:
        chosen, why = 'float32', f'model width {n_embd} < {CPU_BF16_MIN_EMBD}: bf16 casts cost more than they save'
    else:
        chosen, why = 'bfloat16', 'CPU has bf16 matrix units'
    print(f"using dtype: {chosen} (auto: {why})")
    return chosen


def has_cxx_compiler():
    """Whether the C++ compiler that inductor would call (CXX, else g++ / clang++ on macOS / cl
    on Windows) is on PATH."""
    cxx = os.environ.get('CXX') or ('cl' if sys.platform == 'win32' else
                                    'clang++' if sys.platform == 'darwin' else 'g++')
    return shutil.which(cxx) is not None


# On CPU, inductor spends 30 s to minutes generating and compiling C++, and what it speeds up is
# the elementwise work between the matmuls (fusing LayerNorm, GELU, dropout, residual adds);
# MKL/oneDNN run the matmuls the same either way. In float32 the matmuls are nearly all of the
# time: on a 2-core AVX2 EPYC compiling gave 0.97x (6x384 model) and 1.04x (4x128 recipe), i.e.
# nothing (README, Speed). With bf16 units the matmuls get several times faster, the elementwise
# share grows, and compiling pays once an iteration is big enough (the issue measured bf16 +
# compile + fused AdamW at 2.7x float32 eager for the 6x384 model on an AMX Xeon); below
# CPU_COMPILE_MIN_FLOPS per iteration (the 4x128 recipe does ~4 GFLOP) a whole training run is
# too short to repay the compile time.
CPU_COMPILE_MIN_FLOPS = 50e9


def resolve_compile(compile, device_type, flops_per_iter=None, dtype=None):
    """'auto' -> torch.compile where it is possible and pays: on CUDA; on CPU only for bf16
    autocast (dtype) with at least CPU_COMPILE_MIN_FLOPS per iteration (flops_per_iter; None =
    unknown). An explicit True that cannot work warns once and runs eager."""
    if compile not in ('auto', True, False):
        raise UserError(f"compile must be True, False or auto, got {compile!r}")
    if compile is False:
        return False
    if compile == 'auto' and device_type == 'cpu':
        if dtype == 'float32':
            print("compile: False (auto: float32 on CPU is matmul-bound; compiling gains ~nothing and "
                  "costs minutes)")
            return False
        if flops_per_iter is not None and flops_per_iter < CPU_COMPILE_MIN_FLOPS:
            print(f"compile: False (auto: {flops_per_iter / 1e9:.3g} GFLOP/iter is too little work for "
                  f"compiling to pay on CPU)")
            return False
    why = compile_unavailable(device_type)
    if why:
        if compile == 'auto' and device_type == 'mps':
            print(f"compile: False (auto: {why})")
        else:
            warn_once(f"torch.compile unavailable ({why}); running eager")
        return False
    if compile == 'auto':
        print("compile: True (auto: " + ('GPU' if device_type == 'cuda' else
              f'{dtype or "mixed precision"} at {flops_per_iter / 1e9:.3g} GFLOP/iter repays compiling'
              if flops_per_iter else 'C++ compiler found') + ")")
    return True


def compile_unavailable(device_type):
    """Why torch.compile cannot work here, or '' where it should."""
    if device_type == 'mps':
        return 'not supported on MPS'
    if device_type == 'cpu' and not has_cxx_compiler():
        return 'no C++ compiler found: install g++ or set CXX'
    if device_type == 'cuda' and importlib.util.find_spec('triton') is None:
        return 'Triton is not installed'
    try:
        from torch._dynamo.eval_frame import is_dynamo_supported
    except ImportError:
        return f'torch {torch.__version__} has no torch._dynamo'
    if not is_dynamo_supported():
        return f'not supported by torch {torch.__version__} on Python {sys.version.split()[0]} / {sys.platform}'
    return ''


class CompiledModel(torch.nn.Module):
    """torch.compile(module) that falls back to running `module` eagerly, with one warning, when
    compiling fails (a broken compiler, an unsupported op or platform). Compilation happens at
    the first call of each mode (train/eval), so failures show up there. Parameters are the
    module's own (registered as `_orig_mod`, as torch.compile does), so state_dict keys match."""

    def __init__(self, module):
        super().__init__()
        self._orig_mod = module
        self.__dict__['_eager'] = False
        try:
            self.__dict__['_compiled'] = torch.compile(module)  # not a submodule: no duplicate keys
        except Exception as e:
            self._give_up(e)

    def _give_up(self, error):
        msg = str(error).strip().splitlines()
        warn_once(f"torch.compile failed ({type(error).__name__}: {msg[0][:160] if msg else ''}); "
                  f"running eager (set --compile=False to skip the attempt)")
        self.__dict__['_eager'] = True

    def forward(self, *args, **kwargs):
        if self._eager:
            return self._orig_mod(*args, **kwargs)
        try:
            return self._compiled(*args, **kwargs)
        except Exception as e:
            compile_error = e
        # A genuine error in the model (bad input, out of memory) fails eagerly too, and is raised
        # from there without blaming the compiler.
        out = self._orig_mod(*args, **kwargs)
        self._give_up(compile_error)
        return out


def compile_model(module):
    return CompiledModel(module)


def autocast_ctx(device_type, dtype):
    """Mixed precision context for forward passes (training and evaluation); float32 runs plain."""
    if dtype == 'float32':
        return nullcontext()
    return torch.autocast(device_type=device_type, dtype=PTDTYPES[dtype])


# ---- peak FLOP/s for MFU -----------------------------------------------------------------------

# Dense (no sparsity) peak FLOP/s from NVIDIA's datasheets, SXM/flagship variants unless named:
# (bf16/fp16 tensor core, tf32 tensor core, plain fp32). None: the card has no such unit (V100 and
# T4 have no bf16 or tf32). Matched as a substring of the device name, longest name first.
GPU_PEAK_FLOPS = {
    'B200': (2250e12, 1100e12, 75e12),
    'H200 NVL': (835e12, 418e12, 60e12), 'H200': (989e12, 495e12, 67e12),
    'H100 PCIe': (756e12, 378e12, 51e12), 'H100 NVL': (835e12, 418e12, 60e12),
    'H100': (989e12, 495e12, 67e12), 'H800': (989e12, 495e12, 67e12), 'GH200': (989e12, 495e12, 67e12),
    'A100': (312e12, 156e12, 19.5e12), 'A800': (312e12, 156e12, 19.5e12),
    'L40S': (362e12, 183e12, 91.6e12), 'L40': (181e12, 90.5e12, 90.5e12), 'L4': (121e12, 60e12, 30.3e12),
    'A10G': (125e12, 62.5e12, 31.2e12),  # no public datasheet; taken as the A10 it derives from
    'A10': (125e12, 62.5e12, 31.2e12), 'A40': (150e12, 74.8e12, 37.4e12), 'A6000': (155e12, 77.4e12, 38.7e12),
    'RTX 4090': (165e12, 82.6e12, 82.6e12), 'RTX 3090': (71e12, 35.6e12, 35.6e12),
    'V100': (125e12, None, 15.7e12), 'T4': (65e12, None, 8.1e12),
}
_measured_peak = {}


def gpu_table_peak(name, dtype, tf32=True):
    """Peak FLOP/s of a named GPU for dtype from GPU_PEAK_FLOPS, or None if unknown. float32
    matmuls run on tf32 tensor cores when tf32 is allowed (train.py allows it)."""
    for key in sorted(GPU_PEAK_FLOPS, key=len, reverse=True):
        if key.lower() in name.lower():
            half, tf32_peak, fp32 = GPU_PEAK_FLOPS[key]
            if dtype != 'float32':
                return half
            return tf32_peak if tf32 and tf32_peak else fp32
    return None


def _sync(device):
    if device.startswith('cuda'):
        torch.cuda.synchronize(device)
    elif device.startswith('mps'):
        torch.mps.synchronize()


def measure_matmul_peak(device, dtype, n=1024, seconds=0.3):
    """Best FLOP/s of an n x n matmul in dtype on this device over ~`seconds`, measured once per
    run (cached). Uses its own generator: the global RNG, and so training, is untouched."""
    key = (device, dtype)
    if key not in _measured_peak:
        g = torch.Generator(device=device).manual_seed(0)
        a = torch.randn(n, n, device=device, dtype=PTDTYPES[dtype], generator=g)
        b = torch.randn(n, n, device=device, dtype=PTDTYPES[dtype], generator=g)
        a @ b  # warm-up: thread pools, kernel selection
        _sync(device)
        best, t_end = 0.0, time.perf_counter() + seconds
        while True:
            t0 = time.perf_counter()
            a @ b
            _sync(device)
            t1 = time.perf_counter()
            best = max(best, 2 * n ** 3 / max(t1 - t0, 1e-9))
            if t1 >= t_end:
                break
        _measured_peak[key] = best
    return _measured_peak[key]


def peak_flops(device, dtype, override=0.0):
    """(peak FLOP/s, where it comes from) that MFU is measured against: `override` if set, the
    table for known GPUs, otherwise a short measured matmul peak (CPU, MPS, unknown GPUs)."""
    if override:
        if override < 0:
            raise UserError(f"peak_flops must be positive (FLOP/s, e.g. --peak_flops=312e12), got {override}")
        return float(override), 'set by peak_flops'
    if device.startswith('cuda'):
        name = torch.cuda.get_device_name(device)
        peak = gpu_table_peak(name, dtype, torch.backends.cuda.matmul.allow_tf32)
        if peak:
            kind = 'tf32' if dtype == 'float32' and torch.backends.cuda.matmul.allow_tf32 else dtype
            return peak, f'{name} {kind} peak, datasheet'
    # The machine's limit is the faster of the dtype's matmul and float32's: a CPU without bf16
    # units emulates bf16 matmuls far below its float32 rate, and MFU against that would be >100%.
    peak = measure_matmul_peak(device, dtype)
    if dtype != 'float32':
        fp32 = measure_matmul_peak(device, 'float32')
        if fp32 > peak:
            return fp32, f'measured float32 matmul on {device}, faster than {dtype} here'
    return peak, f'measured {dtype} matmul on {device}'


# ---- checkpoints ---------------------------------------------------------------------------------

def _temp_prefix(path):
    """Temporary files of a save to `path` are `.<name>.tmp<pid>` beside it: hidden, and never
    ending in .pt, so nothing takes one for a checkpoint."""
    d, name = os.path.split(os.path.abspath(path))
    return d, f".{name}.tmp"


def _pid_alive(pid):
    if pid == os.getpid():
        return False  # a save in this process removes its own temporary file when it ends
    try:
        os.kill(pid, 0)  # signal 0 only asks whether the process exists
    except ProcessLookupError:
        return False
    except OSError:
        return True
    return True


def remove_stale_temp_files(path):
    """Delete temporary files that a killed process (SIGKILL, out of memory, power loss) left
    while saving `path`: nothing reads them, but each is as large as a checkpoint."""
    if os.name == 'nt':
        return  # os.kill(pid, 0) would terminate the process on Windows
    d, prefix = _temp_prefix(path)
    try:
        names = os.listdir(d)
    except OSError:
        return
    for name in names:
        pid = name[len(prefix):]
        if name.startswith(prefix) and pid.isdigit() and not _pid_alive(int(pid)):
            try:
                os.remove(os.path.join(d, name))
            except OSError:
                pass


def save_checkpoint(obj, path):
    """torch.save that never leaves a half-written file: write a temporary file in the same
    directory, fsync it, then rename over `path` (atomic on POSIX). Killed at any instant, the
    previous file at `path` stays complete."""
    d, prefix = _temp_prefix(path)
    tmp = os.path.join(d, f"{prefix}{os.getpid()}")
    remove_stale_temp_files(path)
    try:
        with open(tmp, 'wb') as f:
            torch.save(obj, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except (OSError, RuntimeError) as e:  # torch.save reports a full disk as a RuntimeError
        reason = getattr(e, 'strerror', None) or f"the write failed, is the disk full? ({str(e).splitlines()[0][:120]})"
        raise UserError(f"cannot write checkpoint {path}: {reason}; the previous "
                        f"{os.path.basename(path)} (if any) is intact; free disk space or "
                        f"choose another --out_dir") from None
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
    """Load a ckpt.pt with weights_only=True, with one-line errors. weights_only rebuilds only
    tensors and plain Python values: a checkpoint naming any other class or function (the way a
    pickle runs code) is refused instead of trusted."""
    if not os.path.exists(path):
        d = os.path.dirname(path) or '.'
        if os.path.basename(path) == 'ckpt.pt' and os.path.exists(os.path.join(d, 'last.pt')):
            raise UserError(f"no checkpoint at {path} yet: {d} holds only last.pt, the state of a run stopped "
                            f"before its first evaluation; continue it with: "
                            f"python train.py --init_from=resume --out_dir={d}")
        raise UserError(f"no checkpoint at {path}: train one first, e.g. "
                        f"python train.py config/train_shakespeare_char.py")
    try:
        ckpt = torch.load(path, map_location=device, weights_only=True)
    except pickle.UnpicklingError as e:
        named = re.search(r'GLOBAL (\S+)', str(e))
        raise UserError(f"refusing to load {path}: it holds a pickled Python object "
                        f"({named.group(1) if named else 'not a tensor or plain value'}) that could run "
                        f"code when loaded; only checkpoints of tensors and plain values are accepted") from None
    except Exception as e:
        raise UserError(f"{path} is not a loadable checkpoint (truncated or corrupt?): "
                        f"{type(e).__name__}: {str(e).splitlines()[0][:200] if str(e) else ''}") from None
    if not isinstance(ckpt, dict) or not {'model', 'model_args'} <= set(ckpt):
        raise UserError(f"{path} is not a nanoGPT checkpoint: it lacks the 'model' and 'model_args' keys")
    return ckpt


def clean_state_dict(state_dict):
    """Strip the prefixes that torch.compile ('_orig_mod.') and DDP ('module.') add to keys, in
    any nesting (DDP around a compiled model gives 'module._orig_mod.')."""
    out = {}
    for k, v in state_dict.items():
        stripped = True
        while stripped:
            stripped = False
            for prefix in ('_orig_mod.', 'module.'):
                if k.startswith(prefix):
                    k, stripped = k[len(prefix):], True
        out[k] = v
    return out


MODEL_ARG_KEYS = ('n_layer', 'n_head', 'n_embd', 'block_size', 'vocab_size')


def model_from_checkpoint(ckpt, **override):
    """A GPT with the checkpoint's architecture and weights."""
    from model import GPT, GPTConfig
    args = dict(ckpt['model_args'])
    missing = [k for k in MODEL_ARG_KEYS if k not in args]
    if missing:
        raise UserError(f"the checkpoint's model_args lack {missing}: it was not written by nanoGPT")
    args.update(override)
    try:
        model = GPT(GPTConfig(**args))
    except TypeError as e:
        raise UserError(f"the checkpoint's model_args do not fit this GPTConfig: {e}") from None
    if ckpt.get('gelu_approximate', 'none') != 'none':  # finetuned GPT-2 keeps its tanh GELU
        model.set_gelu_approximate(ckpt['gelu_approximate'])
    try:
        model.load_state_dict(clean_state_dict(ckpt['model']))
    except RuntimeError as e:
        detail = next((line.strip() for line in str(e).splitlines()[1:] if line.strip()), str(e))
        raise UserError(f"checkpoint weights do not fit its model_args: {detail[:300]}") from None
    return model


# ---- datasets and tokenizers -------------------------------------------------------------------

def dataset_dir(dataset):
    """data/<dataset> inside the project (whatever the working directory), or a directory path."""
    if os.sep in dataset or '/' in dataset or dataset.startswith('.'):
        return os.path.abspath(dataset)
    return os.path.join(PROJECT_DIR, 'data', dataset)


class _RefusedGlobal(pickle.UnpicklingError):
    pass


class _PlainUnpickler(pickle.Unpickler):
    """Accepts only dicts, lists, tuples, strings, numbers, booleans and None: a pickle that names
    any class or function (the way pickles run code) is refused before anything is called."""

    def find_class(self, module, name):
        raise _RefusedGlobal(f"{module}.{name}")

    def persistent_load(self, pid):
        raise _RefusedGlobal(f"persistent id {pid!r}")


def load_meta(path):
    """Read a meta.pkl safely and check it has what a character tokenizer needs."""
    try:
        with open(path, 'rb') as f:
            meta = _PlainUnpickler(f).load()
    except _RefusedGlobal as e:
        raise UserError(f"refusing to load {path}: it names {e}, and a pickle that names code can run "
                        f"it; a meta.pkl holds only plain data. Delete it and re-run the dataset's "
                        f"prepare.py") from None
    except Exception as e:
        raise UserError(f"cannot read {path} (truncated or not a pickle?): {type(e).__name__}: "
                        f"{str(e)[:200]}; re-run the dataset's prepare.py") from None
    if not isinstance(meta, dict):
        raise UserError(f"{path} must hold a dict, found {type(meta).__name__}: re-run the dataset's prepare.py")
    missing = [k for k in ('vocab_size', 'stoi', 'itos') if k not in meta]
    if missing:
        # a BPE dataset may record only vocab_size; a char tokenizer needs all three
        if missing != ['stoi', 'itos'] or not isinstance(meta.get('vocab_size'), int):
            raise UserError(f"{path} lacks key(s) {missing}: re-run the dataset's prepare.py")
    vocab_size = meta.get('vocab_size')
    if not isinstance(vocab_size, int) or isinstance(vocab_size, bool) or vocab_size < 1:
        raise UserError(f"{path}: vocab_size must be a positive int, found {vocab_size!r}")
    for k in ('stoi', 'itos'):
        if k in meta and not isinstance(meta[k], dict):
            raise UserError(f"{path}: {k} must be a dict, found {type(meta[k]).__name__}; "
                            f"re-run the dataset's prepare.py")
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

