"""Windows, simulated on Linux by the platform facts that differ there (sys.platform, signal.SIGBREAK, a console control handler called from a thread of its own, os.replace and
os.remove refused while another program holds the file): one training run per out_dir, the
process group's backend and libuv, a clean stop on Ctrl-Break and on a closed console window, and
checkpoints written while another program reads them. torch's maths is never replaced."""

import ctypes
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import types

import pytest
import torch

import train
from conftest import PROJECT, tiny_args
from nanogpt import autotune, checkpoint, distributed, files, outdir
from nanogpt.errors import UserError
from nanogpt.signals import StopSignals

# a signal that Linux delivers and that nothing else in the test process uses stands in for SIGBREAK
SIGBREAK = signal.SIGUSR1


@pytest.fixture
def windows(monkeypatch):
    """sys.platform is 'win32' (what the project's code asks; os.name stays, as pathlib, which
    pytest uses, cannot work otherwise); file operations are retried without waiting."""
    monkeypatch.setattr(sys, 'platform', 'win32')
    monkeypatch.setattr(files, 'HELD_OPEN_WAIT', 0.0)


def refused(monkeypatch, name, times, target):
    """os.<name> raises PermissionError, as Windows does while another process has `target` open,
    `times` times (-1: always); returns the list of calls that were refused."""
    real = getattr(os, name)
    calls = []

    def op(*args):
        if os.path.basename(args[-1]) == target and (times < 0 or len(calls) < times):
            calls.append(args)
            raise PermissionError(13, 'The process cannot access the file because it is being used by another process')
        return real(*args)
    monkeypatch.setattr(os, name, op)
    return calls


# ---- one training run per out_dir ------------------------------------------------------------------

def test_a_second_run_stops_on_a_held_out_dir_on_windows(tmp_path, monkeypatch, capsys):
    """The lock is the OS's own on every system (filelock: LockFileEx on Windows, flock here), with
    no branch for Windows (where the old lock, without fcntl, fell back to a pid check it then
    skipped): a live holder stops a second run with one line naming it; once the holder is killed
    its lock binds nothing, and a clean release leaves no trace. (os.name stays 'posix': with 'nt'
    pathlib, which filelock uses, refuses to work on Linux.)"""
    out = str(tmp_path / 'out')
    holder = subprocess.Popen([sys.executable, '-c', f"from nanogpt import outdir; outdir.check_out_dir({out!r}); "
                               f"print('held', flush=True); input()"],
                              cwd=PROJECT, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == 'held'
        with monkeypatch.context() as m, pytest.raises(UserError) as e:
            m.setattr(sys, 'platform', 'win32')
            outdir.check_out_dir(out)
        assert f"{out} is in use by another training run (pid {holder.pid} on {socket.gethostname()}, started " in str(e.value)
        assert '\n' not in str(e.value)
    finally:
        holder.kill()
        holder.communicate()
    capsys.readouterr()
    outdir.check_out_dir(out)  # the killed holder's lock went with it
    assert f"was left by a run that no longer runs (pid {holder.pid} on" in capsys.readouterr().out
    outdir.release_out_dir()
    assert not os.path.exists(os.path.join(out, outdir.HOLDER_NAME))
    outdir.check_out_dir(out)
    outdir.release_out_dir()
    assert 'no longer runs' not in capsys.readouterr().out  # released cleanly: nothing was left


# ---- torchrun: the backend and libuv ------------------------------------------------------------------

@pytest.fixture
def one_process(monkeypatch):
    """This process as rank 0 of a one-process job, with a free port for the store."""
    with socket.socket() as s:
        s.bind(('127.0.0.1', 0))
        port = s.getsockname()[1]
    for k, v in dict(RANK='0', LOCAL_RANK='0', WORLD_SIZE='1', LOCAL_WORLD_SIZE='1', MASTER_ADDR='127.0.0.1',
                     MASTER_PORT=str(port)).items():
        monkeypatch.setenv(k, v)
    monkeypatch.delenv('TORCHELASTIC_USE_AGENT_STORE', raising=False)


def test_auto_backend_is_gloo_on_windows_and_nccl_is_one_line(one_process, monkeypatch):
    """torch's Windows builds have no nccl: on a (simulated) Windows machine with a CUDA GPU the
    group forms over gloo, and --backend=nccl stops with one line; Linux keeps nccl."""
    joined = []
    monkeypatch.setattr(torch.cuda, 'is_available', lambda: True)
    monkeypatch.setattr(torch.cuda, 'device_count', lambda: 1)
    monkeypatch.setattr(torch.cuda, 'set_device', lambda device: None)
    monkeypatch.setattr(distributed, 'init_process_group', joined.append)
    place = distributed.init_distributed('auto', 'auto', False)
    assert joined == ['nccl'] and place.device == 'cuda:0'
    monkeypatch.setattr(sys, 'platform', 'win32')
    place = distributed.init_distributed('auto', 'auto', False)
    assert joined == ['nccl', 'gloo'] and place.device == 'cuda:0'
    with pytest.raises(UserError, match=r"^backend nccl is not in torch's Windows builds: use --backend=gloo"):
        distributed.init_distributed('cuda', 'nccl', False)


def test_use_libuv_is_off_on_windows_unless_set(one_process, monkeypatch):
    """On (simulated) Windows the process group forms with USE_LIBUV=0 when the user set nothing."""
    import torch.distributed as dist
    monkeypatch.setenv('USE_LIBUV', '1')
    monkeypatch.delenv('USE_LIBUV')  # unset, and put back as it was afterwards
    monkeypatch.setattr(sys, 'platform', 'win32')
    try:
        distributed.init_process_group('gloo')
        assert os.environ.get('USE_LIBUV') == '0'
        assert dist.get_world_size() == 1
    finally:
        distributed.shutdown_distributed()
    monkeypatch.setenv('USE_LIBUV', '1')  # the user's choice is kept
    monkeypatch.setattr(dist, 'init_process_group', lambda **kw: None)
    distributed.init_process_group('gloo')
    assert os.environ['USE_LIBUV'] == '1'


# ---- stopping cleanly: Ctrl-Break and a closed console window --------------------------------------

@pytest.fixture
def sigbreak(monkeypatch):
    """signal.SIGBREAK exists (it does on Windows alone); until the run installs its own handler
    the signal is ignored, so that a run that does not handle it simply goes on."""
    monkeypatch.setattr(signal, 'SIGBREAK', SIGBREAK, raising=False)
    previous = signal.signal(SIGBREAK, lambda *a: None)
    torch.set_num_threads(1)
    yield
    signal.signal(SIGBREAK, previous)


def at_training_fetch(monkeypatch, fetch, action):
    """Call action() during the fetch-th training batch fetch of the next run."""
    original, count = train.get_batch, [0]

    def get_batch(data, c, run, batches=1):
        if sys._getframe(1).f_code.co_name == 'train':
            count[0] += 1
            if count[0] == fetch:
                action()
        return original(data, c, run, batches)
    monkeypatch.setattr(train, 'get_batch', get_batch)


def test_ctrl_break_saves_last_pt(char_dataset, tmp_path, monkeypatch, sigbreak):
    at_training_fetch(monkeypatch, 3, lambda: signal.raise_signal(signal.SIGBREAK))
    with pytest.raises(SystemExit) as stopped:
        train.main(tiny_args(str(tmp_path / 'out'), char_dataset, max_iters=50, lr_decay_iters=50, eval_interval=100))
    assert stopped.value.code == 128 + SIGBREAK
    assert torch.load(tmp_path / 'out' / 'last.pt', weights_only=True)['iter_num'] == 2


class FakeKernel32:
    """What StopSignals asks of kernel32: SetConsoleCtrlHandler, recording the routines."""

    def __init__(self):
        self.routines = []

    def SetConsoleCtrlHandler(self, routine, add):
        if add:
            self.routines.append(routine)
        else:
            self.routines.remove(routine)
        return 1


def test_closing_the_console_window_saves_last_pt_before_windows_ends_the_process(
        char_dataset, tmp_path, monkeypatch, sigbreak):
    """Windows calls the registered console handler in a thread of its own when the window closes,
    and ends the process when the handler returns: the run stops as on Ctrl-Break and the handler
    returns only once last.pt is written. Ctrl-C's and Ctrl-Break's events go on to Python's handler."""
    kernel32 = FakeKernel32()
    enter = StopSignals.__enter__

    def enter_on_windows(self):  # sys.platform only while the handlers go in: torch's lazy imports read it too
        with monkeypatch.context() as m:
            m.setattr(sys, 'platform', 'win32')
            return enter(self)
    monkeypatch.setattr(StopSignals, '__enter__', enter_on_windows)
    monkeypatch.setattr(ctypes, 'WINFUNCTYPE', ctypes.CFUNCTYPE, raising=False)
    monkeypatch.setattr(ctypes, 'windll', types.SimpleNamespace(kernel32=kernel32), raising=False)
    last = tmp_path / 'out' / 'last.pt'
    answers = []

    def close_window():
        (routine,) = kernel32.routines  # called through the C function pointer, as Windows would
        assert routine(0) == 0  # CTRL_C_EVENT: not ours
        answers.append((routine(2), os.path.exists(last)))  # CTRL_CLOSE_EVENT; no save before it

    def windows_closes_the_console():
        threading.Thread(target=close_window).start()
        time.sleep(0.2)  # the interrupt is taken at the next Python instruction of the main thread
    at_training_fetch(monkeypatch, 3, windows_closes_the_console)
    with pytest.raises(SystemExit) as stopped:
        train.main(tiny_args(str(tmp_path / 'out'), char_dataset, max_iters=50, lr_decay_iters=50, eval_interval=100))
    assert stopped.value.code == 128 + SIGBREAK
    assert torch.load(last, weights_only=True)['iter_num'] == 2
    for _ in range(100):
        if answers:
            break
        time.sleep(0.05)
    assert answers == [(1, True)]  # returned (and let Windows end the process) once last.pt was written
    assert kernel32.routines == []  # removed when the run ended
    assert StopSignals.current is None


# ---- checkpoints while another program reads them ----------------------------------------------------

def temp_files(d):
    return [n for n in os.listdir(d) if '.tmp' in n]


def test_checkpoint_replace_waits_for_a_reader(tmp_path, monkeypatch, windows):
    path = str(tmp_path / 'ckpt.pt')
    checkpoint.save_checkpoint({'iter_num': 1}, path)
    refusals = refused(monkeypatch, 'replace', 3, 'ckpt.pt')
    checkpoint.save_checkpoint({'iter_num': 2}, path)
    assert len(refusals) == 3
    assert torch.load(path, weights_only=True)['iter_num'] == 2
    assert temp_files(tmp_path) == []


def test_checkpoint_held_open_too_long_is_one_line_naming_the_cause(tmp_path, monkeypatch, windows):
    path = str(tmp_path / 'ckpt.pt')
    checkpoint.save_checkpoint({'iter_num': 1}, path)
    refusals = refused(monkeypatch, 'replace', -1, 'ckpt.pt')
    with pytest.raises(UserError) as e:
        checkpoint.save_checkpoint({'iter_num': 2}, path)
    message = str(e.value)
    assert len(refusals) == files.HELD_OPEN_TRIES
    assert message.startswith(f"cannot write checkpoint {path}: another program holds {path} open (sample.py")
    assert 'the previous ckpt.pt is intact' in message and 'disk' not in message and '\n' not in message
    assert torch.load(path, weights_only=True)['iter_num'] == 1
    assert temp_files(tmp_path) == []


def test_a_new_ckpt_pt_deletes_last_pt_even_while_it_is_read(tmp_path, monkeypatch, windows, capsys):
    """A new ckpt.pt replaces last.pt as the latest state: a reader delays the deletion; one that
    holds last.pt for good leaves it there, older than ckpt.pt, which resume then takes."""
    def state(iter_num):
        return {'model': {'w': torch.zeros(2)}, 'model_args': {}, 'iter_num': iter_num}
    checkpoint.write(state(3), str(tmp_path), 'last.pt')
    refused(monkeypatch, 'remove', 2, 'last.pt')
    checkpoint.write(state(4), str(tmp_path), 'ckpt.pt')
    assert not os.path.exists(tmp_path / 'last.pt')

    checkpoint.write(state(5), str(tmp_path), 'last.pt')
    refused(monkeypatch, 'remove', -1, 'last.pt')
    checkpoint.write(state(6), str(tmp_path), 'ckpt.pt')
    assert f"warning: cannot delete {tmp_path / 'last.pt'} (another program holds" in capsys.readouterr().err
    iters = {n: torch.load(tmp_path / n, weights_only=True)['iter_num'] for n in ('ckpt.pt', 'last.pt')}
    assert iters == {'ckpt.pt': 6, 'last.pt': 5}  # resume takes the higher iter_num: ckpt.pt


def test_left_over_temporary_files_are_removed_on_windows(tmp_path, monkeypatch, windows):
    """No process is asked about on Windows (os.kill(pid, 0) would end it): this process's own
    temporary files go, and another's once nothing has written to it for STALE_TEMP_SECONDS."""
    monkeypatch.setattr(os, 'kill', lambda *a: pytest.fail('os.kill on Windows ends the process'))
    live = os.getppid()
    mine, old, fresh = (str(tmp_path / f'.ckpt.pt.tmp{pid}') for pid in (os.getpid(), live + 1, live))
    for name in (mine, old, fresh):
        open(name, 'wb').close()
    an_hour_ago = time.time() - checkpoint.STALE_TEMP_SECONDS - 60
    os.utime(old, (an_hour_ago, an_hour_ago))
    checkpoint.save_checkpoint({'iter_num': 1}, str(tmp_path / 'ckpt.pt'))
    assert temp_files(tmp_path) == [os.path.basename(fresh)]  # a save under way elsewhere is left alone


def test_the_autotune_cache_write_names_a_program_holding_it(tmp_path, monkeypatch, windows, capsys):
    monkeypatch.setenv('NANOGPT_CACHE_DIR', str(tmp_path))
    autotune.store('key', {'a': 1})
    refused(monkeypatch, 'replace', -1, 'autotune.json')
    autotune.store('other', {'b': 2})
    assert 'another program holds' in capsys.readouterr().err
    assert autotune.load_cache() == {'key': {'a': 1}}
    assert temp_files(tmp_path) == []
