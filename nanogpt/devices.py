"""
Where and how a run computes: the device (resolve_device: auto, cpu, cuda, cuda:N, mps), the dtype
and torch.compile choice by rule (resolve_dtype, resolve_compile, compile_model with its eager
fallback, autocast_ctx), and the peak FLOP/s that MFU is measured against (peak_flops: a table of
GPU datasheets, or a short measured matmul). On a CPU, train.py and bench.py choose dtype and
compile by measurement instead (nanogpt/autotune.py). Also the oldest torch each part needs
(check_torch_version, each script's first call). Nothing here runs at import time.
"""

import importlib.util
import os
import platform
import re
import shutil
import sys
import time
from contextlib import contextmanager, nullcontext

import torch

from .errors import UserError, warn_once

__all__ = ['FSDP_MIN_TORCH', 'MIN_TORCH', 'MUON_MIN_TORCH', 'PTDTYPES', 'CompiledModel', 'autocast_ctx',
           'bf16_native', 'check_compile_setting', 'check_torch_version',
           'compile_model', 'compile_unavailable', 'cpu_has_bf16_units', 'device_type_of', 'eager_instead',
           'eval_batches', 'mps_autocast_supported', 'peak_flops', 'random_state_kept', 'resolve_compile',
           'resolve_device', 'resolve_dtype', 'sync']

PTDTYPES = {'float32': torch.float32, 'bfloat16': torch.bfloat16, 'float16': torch.float16}


# ---- device ------------------------------------------------------------------------------------

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
        if index:
            # torch's own current-device calls (the random state, bf16 support, tf32, kernels that
            # read the current stream) then mean the chosen GPU, and no context opens on cuda:0
            torch.cuda.set_device(device)
    if kind == 'mps' and not mps_available():
        raise UserError(f"device {device!r} requested but MPS is not available here: use --device=cpu")
    return device


def device_type_of(device):
    return 'cuda' if 'cuda' in device else 'mps' if 'mps' in device else 'cpu'


def planned_device_type(device):
    """The device type a run with setting `device` will train on, for a config file that shapes
    the model by it (config/train_shakespeare_char_cpu.py): 'auto' is resolved as resolve_device
    resolves it, without its line."""
    if device == 'auto':
        return 'cuda' if torch.cuda.is_available() else 'mps' if mps_available() else 'cpu'
    return device_type_of(str(device))


# ---- dtype, compile ----------------------------------------------------------------------------

# oneDNN's instruction-set levels (ONEDNN_MAX_CPU_ISA) that include bfloat16 dot products
_ONEDNN_BF16_ISAS = ('AVX512_CORE_BF16', 'AVX512_CORE_FP16', 'AVX512_CORE_AMX', 'AVX512_CORE_AMX_FP16',
                     'AVX10_1_512', 'AVX10_1_512_AMX', 'AVX10_1_512_AMX_FP16', 'AVX10_2_512',
                     'AVX10_2_512_AMX_2', 'ALL')


def cpu_has_bf16_units():
    """True where this process multiplies bfloat16 natively: the CPU has Intel AMX or AVX512-BF16,
    and PyTorch is not held below them. ATEN_CPU_CAPABILITY (torch's own kernels) and
    ONEDNN_MAX_CPU_ISA (its matmuls) can hold it to AVX2, and then bf16 is emulated, slower than
    float32, just as on a CPU without the units: so those settings test the AVX2-only case on any
    x86 machine."""
    q = torch.cpu
    hardware = bool(getattr(q, '_is_amx_tile_supported', lambda: False)()
                    or getattr(q, '_is_avx512_bf16_supported', lambda: False)())
    isa = os.environ.get('ONEDNN_MAX_CPU_ISA', '').strip().upper()
    held = (isa and isa not in _ONEDNN_BF16_ISAS) or not _aten_has_avx512()
    return hardware and not held


def _aten_has_avx512():
    """Whether torch's own CPU kernels run at AVX512 or above (ATEN_CPU_CAPABILITY may hold them lower)."""
    try:
        return torch.backends.cpu.get_cpu_capability().upper().startswith(('AVX512', 'AMX'))
    except (AttributeError, RuntimeError):
        return True  # an older torch: nothing to hold it


def mps_autocast_supported():
    """True where this torch can autocast to bfloat16 on MPS: it needs torch's MPS autocast
    (torch 2.5 and later) and macOS 14 or later, where Metal has bfloat16."""
    try:
        return bool(torch.amp.autocast_mode.is_autocast_available('mps')
                    and torch.backends.mps.is_macos_or_newer(14, 0))
    except (AttributeError, RuntimeError):
        return False


def cuda_bf16_native(device=None):
    """Whether the GPU `device` (cuda, cuda:N; None: the current one) computes in bfloat16
    natively: NVIDIA compute capability 8.0 and later (Ampere on), and ROCm GPUs. Not
    torch.cuda.is_bf16_supported(), which by default also says True for the T4, V100 and RTX
    20xx that only emulate bf16 (slowly: no tensor cores, no flash attention, and inductor does
    not compile it), and which asks about the current device, not the chosen one."""
    if torch.version.hip:
        return torch.cuda.is_bf16_supported(including_emulation=False)
    return tuple(torch.cuda.get_device_capability(device)) >= (8, 0)


def bf16_native(device_type, device=None):
    """Whether the device (a GPU `device`, None: the current one) multiplies bfloat16 natively."""
    if device_type == 'cuda':
        return cuda_bf16_native(device)
    if device_type == 'mps':
        return mps_autocast_supported()
    return cpu_has_bf16_units()


def resolve_dtype(dtype, device_type, device=None, cpu_bf16=False):
    """'auto' -> mixed precision where the device has it natively (`device`: which GPU, e.g.
    cuda:1; None means the current one). On a CPU float32, where train.py and bench.py measure
    instead (autotune.py); cpu_bf16=True (sampling) takes bfloat16 where the CPU has bf16 units,
    faster there (docs/sampling.md has the measurement). Prints the choice and the reason."""
    if dtype != 'auto':
        if dtype not in PTDTYPES:
            raise UserError(f"unknown dtype {dtype!r}: use auto, float32, bfloat16 or float16")
        if dtype == 'bfloat16' and device_type == 'cuda' and not cuda_bf16_native(device):
            raise UserError("this GPU has no native bfloat16 (compute capability below 8.0: it would "
                            "emulate it, slowly): use --dtype=float16")
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
        chosen, why = ('bfloat16', 'GPU computes bf16 natively') if cuda_bf16_native(device) \
            else ('float16', 'GPU lacks bf16 units (compute capability < 8.0); a gradient scaler is used')
    elif device_type == 'mps':
        chosen, why = ('bfloat16', 'MPS autocast with bf16 available') if mps_autocast_supported() \
            else ('float32', 'this torch/macOS has no bf16 autocast on MPS')
    elif cpu_bf16 and cpu_has_bf16_units():
        chosen, why = 'bfloat16', 'this CPU has bf16 units; --dtype=float32 gives the original\'s numbers'
    else:
        chosen, why = 'float32', 'CPU' + (' without bf16 units' if cpu_bf16 else '') + ': exact arithmetic, the original\'s numbers'
    print(f"using dtype: {chosen} (auto: {why})")
    return chosen


def has_cxx_compiler():
    """Whether the C++ compiler that inductor would call (CXX, else g++ / clang++ on macOS / cl
    on Windows) is on PATH."""
    cxx = os.environ.get('CXX') or ('cl' if sys.platform == 'win32' else
                                    'clang++' if sys.platform == 'darwin' else 'g++')
    return shutil.which(cxx) is not None


def check_compile_setting(compile):
    if compile not in ('auto', True, False):
        raise UserError(f"compile must be True, False or auto, got {compile!r}")


def eager_instead(why):
    """False (eager), after one warning, where torch.compile cannot work for reason `why`."""
    warn_once(f"torch.compile unavailable ({why}); running eager")
    return False


def resolve_compile(compile, device_type):
    """'auto' -> torch.compile on CUDA (on a CPU train.py and bench.py measure instead, see
    autotune.py; elsewhere 'auto' is eager). An explicit True that cannot work warns once and
    runs eager."""
    check_compile_setting(compile)
    if compile is False:
        return False
    if compile == 'auto' and device_type == 'cpu':
        print("compile: False (auto: on a CPU only a measurement chooses compiling)")
        return False
    why = compile_unavailable(device_type)
    if why:
        if compile == 'auto' and device_type == 'mps':
            print(f"compile: False (auto: {why})")
            return False
        return eager_instead(why)
    if compile == 'auto':
        print("compile: True (auto: GPU)")
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
    module's own (registered as `_orig_mod`, as torch.compile does), so state_dict keys match.
    `fell_back`: True once it runs eagerly."""

    def __init__(self, module):
        super().__init__()
        self._orig_mod = module
        self.__dict__['fell_back'] = False
        self.__dict__['warm'] = False  # compiled for training already (warm_up, or autotune.py's trial)
        try:
            self.__dict__['_compiled'] = torch.compile(module)  # not a submodule: no duplicate keys
        except Exception as e:
            self._give_up(e)

    def _give_up(self, error):
        msg = str(error).strip().splitlines()
        warn_once(f"torch.compile failed ({type(error).__name__}: {msg[0][:160] if msg else ''}); "
                  f"running eager (set --compile=False to skip the attempt)")
        self.__dict__['fell_back'] = True

    def forward(self, *args, **kwargs):
        if self.fell_back:
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


    def warm_up(self, batch_size, device, dtype):
        """Compile the training graph now, on one forward+backward of random tokens of the
        training shape, rather than inside the first iteration: so that compiling is a phase the
        heartbeat names and a stop signal may abandon. The weights are untouched, the gradients
        dropped and the random streams put back, so the run computes what it would have."""
        if self.fell_back or self.warm:
            return
        cfg = self._orig_mod.config
        x = torch.randint(cfg.vocab_size, (batch_size, cfg.block_size), generator=torch.Generator().manual_seed(0))
        x = x.to(device)
        try:
            with random_state_kept(device):
                with autocast_ctx(torch.device(device).type, dtype):
                    _, loss = self(x, x)
                loss.backward()
        finally:
            self._orig_mod.zero_grad(set_to_none=True)
        self.__dict__['warm'] = True


def random_state(device):
    """{'cpu': the CPU generator's state, and where `device` is a GPU 'cuda' or 'mps': its own
    (the CUDA one of that device, named: torch.cuda.get_rng_state() alone reads the current one's)}."""
    device = torch.device(device)
    state = {'cpu': torch.get_rng_state()}
    if device.type == 'cuda':
        state['cuda'] = torch.cuda.get_rng_state(device)
    elif device.type == 'mps':
        state['mps'] = torch.mps.get_rng_state()
    return state


def set_random_state(state, device):
    """Put back a random_state(); a GPU state it lacks (saved on another device) is left as it is."""
    device = torch.device(device)
    torch.set_rng_state(state['cpu'])
    if device.type == 'cuda' and 'cuda' in state:
        torch.cuda.set_rng_state(state['cuda'], device)
    elif device.type == 'mps' and 'mps' in state:
        torch.mps.set_rng_state(state['mps'])


@contextmanager
def random_state_kept(device):
    """Put back the CPU's random state, and `device`'s where it is a GPU, on leaving: for work that
    draws random numbers (dropout) but must leave a run's streams as they were."""
    state = random_state(device)
    try:
        yield
    finally:
        set_random_state(state, device)


def torch_version():
    """(major, minor) of the installed torch: '2.6.0+cu124' -> (2, 6)."""
    return tuple(int(v) for v in torch.__version__.split('+')[0].split('.')[:2])


# The oldest torch for each part (requirements.txt says the first): torch.amp.GradScaler,
# torch.compiler.is_compiling and the fused CPU AdamW are used everywhere; fully_shard (FSDP2) is
# public from 2.6; torch.optim.Muon arrived in 2.9.
MIN_TORCH = (2, 4)
FSDP_MIN_TORCH = (2, 6)
MUON_MIN_TORCH = (2, 9)


def _release(version):
    return '.'.join(map(str, version))


def check_torch_version():
    """Each script's first call: stop with one line where the installed torch is older than
    MIN_TORCH, before anything reaches for what it lacks (an AttributeError otherwise). PyTorch
    built its last wheels for Intel Macs at 2.2.2 (pytorch/pytorch#114602): there the line says
    where to turn instead (docs/platforms.md)."""
    if torch_version() >= MIN_TORCH:
        return
    if sys.platform == 'darwin' and platform.machine() == 'x86_64':
        fix = ("PyTorch's last release for Intel Macs is 2.2.2, so run on Linux (or Colab), "
               "or build torch from source (README, \"Platforms\")")
    else:
        fix = f"pip install 'torch>={_release(MIN_TORCH)}'"
    raise UserError(f"this is torch {torch.__version__}, and nanoGPT needs torch {_release(MIN_TORCH)} or later "
                    f"({_release(FSDP_MIN_TORCH)} for --fsdp=True, {_release(MUON_MIN_TORCH)} for "
                    f"optimizer=muon): {fix}")


def compile_model(module):
    return CompiledModel(module)


def autocast_ctx(device_type, dtype):
    """Mixed precision context for forward passes (training and evaluation); float32 runs plain."""
    if dtype == 'float32':
        return nullcontext()
    return torch.autocast(device_type=device_type, dtype=PTDTYPES[dtype])


def eval_batches(c, vocab_size, device_type, max_tokens=2 ** 18, max_logits=2 ** 28):
    """How many of an evaluation's eval_iters batches go through one forward: on a GPU as many as
    keep a forward within max_tokens tokens and max_logits logits (a divisor of eval_iters, so
    every forward has the same shape and each batch weighs the same in the mean); 1 on a CPU,
    where larger batches gain nothing and one batch at a time keeps the original's numbers."""
    if device_type == 'cpu':
        return 1
    tokens = c.batch_size * c.block_size
    fits = max(1, min(max_tokens // tokens, max_logits // (tokens * vocab_size)))
    return max(k for k in range(1, min(fits, c.eval_iters) + 1) if c.eval_iters % k == 0)


# ---- peak FLOP/s for MFU -----------------------------------------------------------------------

# Dense (no sparsity) peak FLOP/s from NVIDIA's datasheets, SXM/flagship variants unless named:
# (bf16/fp16 tensor core, tf32 tensor core, plain fp32). None: the card has no such unit (V100 and
# T4 have no bf16 or tf32). A key matches whole words of the device name (see gpu_table_peak).
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


# Words that make a card another model than its desktop namesake: "NVIDIA GeForce RTX 4090 Laptop
# GPU" has about half the desktop card's peak. Such names are unknown unless the table names them.
_GPU_VARIANT_WORDS = ('laptop', 'mobile')


def _name_words(name):
    """A GPU name as lower-case words of letters and digits: 'NVIDIA A100-SXM4-80GB' -> nvidia, a100, sxm4, 80gb."""
    return re.findall(r'[a-z0-9]+', name.lower())


def gpu_table_peak(name, dtype, tf32=True):
    """Peak FLOP/s of a named GPU for dtype from GPU_PEAK_FLOPS, or None if unknown. A key matches
    consecutive whole words of the name, the longest key first: 'A40' is not "RTX A4000" and 'L4'
    not "L40S"; 'H100 PCIe' wins over 'H100'. float32 matmuls run on tf32 tensor cores when tf32
    is allowed (train.py allows it)."""
    words = _name_words(name)
    for key in sorted(GPU_PEAK_FLOPS, key=len, reverse=True):
        kw = _name_words(key)
        if any(v in words and v not in kw for v in _GPU_VARIANT_WORDS):
            continue
        if any(words[i:i + len(kw)] == kw for i in range(len(words) - len(kw) + 1)):
            half, tf32_peak, fp32 = GPU_PEAK_FLOPS[key]
            if dtype != 'float32':
                return half
            return tf32_peak if tf32 and tf32_peak else fp32
    return None


def sync(device):
    """Wait for the work queued on `device` (a name or a torch.device): GPU kernels run
    asynchronously, so a timing must wait for them."""
    device = torch.device(device)
    if device.type == 'cuda':
        torch.cuda.synchronize(device)
    elif device.type == 'mps':
        torch.mps.synchronize()


def matmul_peak_plan(device):
    """(n, launches): how measure_matmul_peak times a device, n x n matmuls, `launches` of them
    between two synchronisations. A GPU (cuda, which includes ROCm, or mps) runs a 1024-cubed
    matmul in microseconds, about what one launch and one sync cost, so timing single launches
    measures latency and the peak comes out several times too low (MFU above 100%): it gets a
    batch of large ones. A CPU computes synchronously; 1024 keeps its measurement short."""
    if device.startswith(('cuda', 'mps')):
        return 4096, 20
    return 1024, 1


class MatmulProbe:
    """n x n matmuls in dtype on a device (matmul_peak_plan), ready to time: rate() runs one batch
    and returns its FLOP/s. Uses its own generator: the global RNG, and so training, is untouched.
    bench.py times one between its iterations, so that the peak and the step share the machine's
    phase."""

    def __init__(self, device, dtype):
        self.device = device
        self.n, self.launches = matmul_peak_plan(device)
        g = torch.Generator(device=device).manual_seed(0)
        self.a, self.b = (torch.randn(self.n, self.n, device=device, dtype=PTDTYPES[dtype], generator=g)
                          for _ in range(2))
        self.out = torch.empty(self.n, self.n, device=device, dtype=PTDTYPES[dtype])
        self.rate()  # warm-up: thread pools, kernel selection, clocks

    def rate(self):
        t0 = time.perf_counter()
        for _ in range(self.launches):
            torch.matmul(self.a, self.b, out=self.out)
        sync(self.device)
        return self.launches * 2 * self.n ** 3 / max(time.perf_counter() - t0, 1e-9)


def measure_matmul_peak(device, dtype, seconds=0.3):
    """Best FLOP/s of MatmulProbe's matmuls over ~`seconds`, measured once per run (cached)."""
    key = (device, dtype)
    if key not in _measured_peak:
        probe = MatmulProbe(device, dtype)
        best, t_end = 0.0, time.perf_counter() + seconds
        while True:
            best = max(best, probe.rate())
            if time.perf_counter() >= t_end:
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
