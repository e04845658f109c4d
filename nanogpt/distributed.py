"""
torchrun for train.py: under_torchrun says whether this process is one of torchrun's;
init_distributed picks each process's device and joins the process group; shard (FSDP2) and
compile_and_wrap (DDP) wrap the model; full_state_dicts and load_optimizer_state move an FSDP
model's state to and from the plain format every checkpoint has, and gather_random_states puts
every process's random streams in it; mean_over_processes averages evaluation losses;
shutdown_distributed destroys the group while Python is still whole. (torch's own package is
always imported as torch.distributed.)
"""

import functools
import importlib
import os
import sys
import weakref
from typing import NamedTuple

import torch

from . import checkpoint, devices, progress
from .errors import UserError, warn_once
from .signals import abandonable

__all__ = ['under_torchrun', 'quiet_other_ranks', 'ProcessPlace', 'init_distributed', 'init_process_group',
           'PROCESS_GROUP_TIMEOUT_MINUTES', 'shutdown_distributed', 'shard', 'compile_and_wrap',
           'mean_over_processes', 'full_state_dicts', 'load_optimizer_state', 'gather_random_states']


def under_torchrun():
    """Whether this process is one of torchrun's (which sets RANK, LOCAL_RANK, WORLD_SIZE), one
    process or several, DDP or FSDP."""
    return int(os.environ.get('RANK', -1)) != -1


def quiet_other_ranks():
    """Under torchrun rank 0 alone prints: the other ranks' standard output goes to os.devnull."""
    if int(os.environ.get('RANK', 0)) != 0 and getattr(sys.stdout, 'name', None) != os.devnull:
        sys.stdout = open(os.devnull, 'w')


class ProcessPlace(NamedTuple):
    """This process's place in the job; outside torchrun (False, 0, 1, True, None)."""
    torchrun: bool  # under torchrun (DDP, or FSDP with fsdp=True)
    rank: int
    world_size: int
    master: bool  # rank 0: it alone prints and writes files
    device: str  # the device chosen for this process under torchrun; None: the setting decides


def init_distributed(device, backend, fsdp):
    """Under torchrun (which sets RANK, LOCAL_RANK, WORLD_SIZE): choose this process's device
    (cuda:LOCAL_RANK, or CPU threads shared between the local processes), check the backend and
    join the process group. Returns the ProcessPlace; outside torchrun (False, 0, 1, True, None)."""
    if under_torchrun():
        rank, local_rank = int(os.environ['RANK']), int(os.environ['LOCAL_RANK'])
        world_size = int(os.environ['WORLD_SIZE'])
        local_world = int(os.environ.get('LOCAL_WORLD_SIZE', world_size))
        if device == 'auto':  # never MPS: no torch.distributed backend works with MPS tensors
            device = 'cuda' if torch.cuda.is_available() else 'cpu'
        if device.startswith('mps'):
            raise UserError("torchrun cannot train on MPS (no distributed backend supports it): "
                            "use --device=cpu, or run train.py without torchrun")
        if device.startswith('cuda'):
            if local_rank >= torch.cuda.device_count():
                raise UserError(f"local rank {local_rank} has no GPU: this machine has {torch.cuda.device_count()} "
                                f"CUDA device(s); use --nproc_per_node={torch.cuda.device_count()} or fewer")
            device = f'cuda:{local_rank}'  # one GPU per local rank, whatever cuda:N was asked for
            torch.cuda.set_device(device)
        elif os.environ.get('OMP_NUM_THREADS', '1') == '1':
            # torchrun sets OMP_NUM_THREADS=1 unless the user chose a value: that leaves most cores
            # idle, while torch's own default (all cores in every rank) oversubscribes them, so the
            # cores this process may use are split between the local ranks
            cores = len(os.sched_getaffinity(0)) if hasattr(os, 'sched_getaffinity') else os.cpu_count() or 1
            torch.set_num_threads(max(1, cores // local_world))
        init_process_group(_backend(backend, device))
        return ProcessPlace(True, rank, world_size, rank == 0, device)
    if fsdp:
        warn_once("fsdp=True shards the model across torchrun processes; a single process "
                  "trains unsharded (launch with torchrun --nproc_per_node=N)")
    return ProcessPlace(False, 0, 1, True, None)


def _backend(backend, device):
    """The process group's backend: the setting, or for 'auto' nccl on CUDA GPUs and gloo on CPUs
    and on Windows, whose torch builds have no nccl (gloo also runs CUDA tensors' collectives, more
    slowly)."""
    windows = sys.platform == 'win32'
    be = backend if backend != 'auto' else ('nccl' if device.startswith('cuda') and not windows else 'gloo')
    if be not in ('nccl', 'gloo', 'mpi', 'ucc', 'xccl'):
        raise UserError(f"unknown backend {be!r}: use auto, nccl (CUDA) or gloo (CPU)")
    if be == 'nccl' and windows:
        raise UserError("backend nccl is not in torch's Windows builds: use --backend=gloo (or auto), or WSL2 "
                        "with Linux torch for nccl")
    if be == 'nccl' and not device.startswith('cuda'):
        raise UserError("backend nccl needs CUDA GPUs: use --backend=gloo (or auto) on CPU")
    return be


# Process 0 writes and fsyncs each checkpoint while the others wait in their next collective; for
# gpt2-xl that is ~18 GB, which on slow storage can outlast NCCL's default timeout (10 minutes)
# and kill the job. An hour covers it; a process that hangs holds the others that long.
PROCESS_GROUP_TIMEOUT_MINUTES = 60

# torch modules that bind the default process group as a default argument value when they are
# first imported (torch.distributed.nn.functional: `def broadcast(tensor, src, group=group.WORLD)`).
# DDP and FSDP import them lazily; imported after init_process_group they would keep the group
# alive for good, so destroy_process_group could never free it (see shutdown_distributed).
# Imported before, they bind None.
_GROUP_BINDING_MODULES = ('torch.distributed.nn.functional',)


def init_process_group(backend):
    """Join torchrun's process group (RANK, WORLD_SIZE, MASTER_ADDR from the environment), with
    the timeout that fits checkpoint writes; shutdown_distributed() is its counterpart."""
    import datetime
    import torch.distributed as dist
    for name in _GROUP_BINDING_MODULES:
        importlib.import_module(name)
    if sys.platform == 'win32':
        # torch's Windows builds have no libuv, which the store that init_process_group creates
        # asks for by default from torch 2.4 until torch made 0 the Windows default
        # (pytorch/pytorch#139990, #148266); USE_LIBUV=0 is torch's documented way back to the
        # older store. A value the user set is kept. torchrun's own stores ask for libuv whatever
        # USE_LIBUV says, and its launcher creates one before train.py runs (docs/distributed.md).
        os.environ.setdefault('USE_LIBUV', '0')
    dist.init_process_group(backend=backend, timeout=datetime.timedelta(minutes=PROCESS_GROUP_TIMEOUT_MINUTES))


def shutdown_distributed():
    """Destroy the process group, if any, so that its threads end while Python is still whole.

    Call it once nothing uses the DDP or FSDP model any more: their reducer and sharding state
    hold the group, and so does FSDP's mesh, which DTensor's caches keep for good (its registry of
    groups is emptied here). A collective launched during backward (DDP's gradient all-reduce,
    FSDP's reduce-scatter) carries a Python object (autograd's contextvars context) in its
    thread-local state, and the gloo worker thread that ran it frees it afterwards, which needs
    the GIL. If the interpreter is finalizing by then, taking the GIL ends the thread inside a
    C++ destructor: "terminate called without an active exception", SIGABRT at exit after a
    successful run (the abort discussed in pytorch/pytorch#190489). When this call frees the
    group, its destructor (which releases the GIL) joins those threads first. Freed later by the
    last DDP reducer instead, it would join them holding the GIL: a deadlock if one waits for it."""
    import gc
    import torch.distributed as dist
    if not (dist.is_available() and dist.is_initialized()):
        return
    gc.collect()  # DDP and FSDP objects sit in reference cycles: free them before the group
    for ref in _meshes:
        mesh = ref()  # alive in DTensor's caches (sharding propagation, redistribution plans)
        if mesh is not None and isinstance(getattr(mesh, '_pg_registry', None), dict):
            mesh._pg_registry.clear()
    _meshes.clear()
    dist.destroy_process_group()


_meshes = []  # weak references to the meshes shard_model made


def shard(model, run):
    """FSDP2 over all processes, when run.fsdp (fsdp=True under torchrun): each transformer block
    one unit, gathered only while it runs, then the whole model (the root unit: embeddings, the
    tied lm_head, the final LayerNorm). The parameters become sharded DTensors in place. The
    mesh is built for the device training runs on: without mesh=, fully_shard builds one for the
    machine's accelerator (cuda on a GPU machine run with --device=cpu, whose batches stay on the
    CPU; mps on a Mac, where no backend works). Returns the mesh, or None."""
    if not run.fsdp:
        return None
    import torch.distributed as dist
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import fully_shard
    mesh = init_device_mesh(run.device_type, (dist.get_world_size(),))
    _meshes.append(weakref.ref(mesh))  # for shutdown_distributed
    for block in model.transformer.h:
        fully_shard(block, mesh=mesh)
    fully_shard(model, mesh=mesh)
    return mesh


def compile_and_wrap(model, compiled, run, batch_size):
    """(the model to train: compiled when run.compile, in DDP under torchrun without FSDP; the
    model to evaluate: the eager one, whose eval mode needs no second compile, never in DDP).
    `compiled`: the model autotune.py compiled already, or None. Outside torchrun the compiling
    happens here, on a batch of batch_size (CompiledModel.warm_up), where a stop signal may
    abandon it; under DDP the wrapper changes the graph, so it happens in the first iteration."""
    raw = model
    if run.compile:
        if compiled is None:
            print("compiling the model... (the first iterations are slow)")
        model = compiled or devices.compile_model(model)  # eager, with one warning, if compiling fails
        if not run.torchrun and not model.warm:
            with progress.phase("compiling the model"):
                abandonable(model.warm_up, batch_size, run.device, run.dtype)
    if run.torchrun and not run.fsdp:
        from torch.nn.parallel import DistributedDataParallel as DDP
        device_ids = [int(os.environ['LOCAL_RANK'])] if run.device_type == 'cuda' else None
        # evaluation goes around the wrapper, whose forward may talk to the other processes
        return DDP(model, device_ids=device_ids), raw
    return model, raw


def mean_over_processes(losses, run):
    """{split: a 0-dim loss tensor} -> {split: float}, averaged over the processes under torchrun
    (a sum, then a division: gloo has no average). One host sync."""
    t = torch.stack(list(losses.values())).float()
    if run.torchrun:
        import torch.distributed as dist
        t = t.to(run.device)
        dist.all_reduce(t)
        t /= run.world_size
    return dict(zip(losses, t.tolist()))


def full_state_dicts(model, optimizer, run):
    """The model's and the optimizer's state dicts, whole: under FSDP gathered from the shards
    (collective: every process calls it; rank 0 gets the tensors), else as they are."""
    if run.fsdp:
        return full_sharded_state(model, optimizer)
    return model.state_dict(), optimizer.state_dict()


def optimizer_param_names(model, optimizer):
    """The optimizer's parameters by name, in its own order: the order in which a plain
    optimizer.state_dict() numbers them 0, 1, 2, ..."""
    names = {id(p): n for n, p in model.named_parameters()}
    return [names[id(p)] for group in optimizer.param_groups for p in group['params']]


def full_sharded_state(model, optimizer):
    """Full (unsharded) model and optimizer state dicts of an FSDP model, in the plain format a
    single process saves (optimizer state numbered, not named), so any reader can load them.
    Collective: every rank must call it; only rank 0 gets the tensors, the others empty dicts."""
    from torch.distributed.checkpoint.state_dict import (StateDictOptions, get_model_state_dict,
                                                         get_optimizer_state_dict)
    opts = StateDictOptions(full_state_dict=True, cpu_offload=True)
    model_sd = get_model_state_dict(model, options=opts)
    optim_sd = get_optimizer_state_dict(model, optimizer, options=opts)
    if not optim_sd:
        return model_sd, optim_sd
    index = {n: i for i, n in enumerate(optimizer_param_names(model, optimizer))}
    return model_sd, {'state': {index[k]: v for k, v in optim_sd['state'].items()},
                      'param_groups': [dict(g, params=[index[n] for n in g['params']])
                                       for g in optim_sd['param_groups']]}


def load_full_optimizer_state(model, optimizer, optim_sd):
    """Load a plain (numbered) optimizer state dict, as in any ckpt.pt, into the optimizer of an
    FSDP model: each rank keeps the shards of its own parameters."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, set_optimizer_state_dict
    names = optimizer_param_names(model, optimizer)

    def name(k):  # numbered by a plain optimizer, or already named
        return names[k] if isinstance(k, int) else k
    named = {'state': {name(k): v for k, v in optim_sd['state'].items()},
             'param_groups': [dict(g, params=[name(k) for k in g['params']]) for g in optim_sd['param_groups']]}
    set_optimizer_state_dict(model, optimizer, named, options=StateDictOptions(full_state_dict=True))



def load_optimizer_state(model, optimizer, ckpt, run):
    """A resumed run's optimizer state (checkpoint.load_optimizer_state); under FSDP each process
    keeps the shards of its own parameters."""
    load = functools.partial(load_full_optimizer_state, model, optimizer) if run.fsdp else None
    checkpoint.load_optimizer_state(optimizer, ckpt, run.optimizer, load)


def gather_random_states(state, run):
    """Under torchrun, every process's random streams (state['rng']) into state['rng_ranks'], so
    that a resume on as many processes continues each (checkpoint.restore_random_state).
    Collective: every process calls it."""
    if run.torchrun:
        import torch.distributed as dist
        state['rng_ranks'] = [None] * run.world_size
        dist.all_gather_object(state['rng_ranks'], state['rng'])
