"""
torchrun setup and teardown for train.py: init_distributed picks each rank's device and joins the
process group, shard_model wraps the model in FSDP2, shutdown_distributed destroys the group while
Python is still whole. (torch's own package is always imported as torch.distributed.)
"""

import importlib
import os
import weakref
from typing import NamedTuple

import torch

from errors import UserError, warn_once


class Procs(NamedTuple):
    """This process's place in the job; outside torchrun (False, 0, 1, True)."""
    ddp: bool  # under torchrun (DDP, or FSDP with fsdp=True)
    rank: int
    world_size: int
    master: bool  # rank 0: it alone prints and writes files


def init_distributed(c):
    """Under torchrun (which sets RANK, LOCAL_RANK, WORLD_SIZE): pick this rank's device in c.device
    (cuda:LOCAL_RANK, or CPU threads shared between the local ranks), check the backend and join the
    process group. Returns Procs(ddp, rank, world_size, master); outside torchrun (False, 0, 1, True)."""
    ddp = int(os.environ.get('RANK', -1)) != -1
    if ddp:
        rank, local_rank = int(os.environ['RANK']), int(os.environ['LOCAL_RANK'])
        world_size = int(os.environ['WORLD_SIZE'])
        local_world = int(os.environ.get('LOCAL_WORLD_SIZE', world_size))
        if c.device == 'auto':  # never MPS: no torch.distributed backend works with MPS tensors
            c.device = 'cuda' if torch.cuda.is_available() else 'cpu'
        if c.device.startswith('mps'):
            raise UserError("torchrun cannot train on MPS (no distributed backend supports it): "
                            "use --device=cpu, or run train.py without torchrun")
        if c.device.startswith('cuda'):
            if local_rank >= torch.cuda.device_count():
                raise UserError(f"local rank {local_rank} has no GPU: this machine has {torch.cuda.device_count()} "
                                f"CUDA device(s); use --nproc_per_node={torch.cuda.device_count()} or fewer")
            c.device = f'cuda:{local_rank}'  # one GPU per local rank, whatever cuda:N was asked for
            torch.cuda.set_device(c.device)
        elif os.environ.get('OMP_NUM_THREADS', '1') == '1':
            # torchrun sets OMP_NUM_THREADS=1 unless the user chose a value: that leaves most cores
            # idle, while torch's own default (all cores in every rank) oversubscribes them, so the
            # cores this process may use are split between the local ranks
            cores = len(os.sched_getaffinity(0)) if hasattr(os, 'sched_getaffinity') else os.cpu_count() or 1
            torch.set_num_threads(max(1, cores // local_world))
        be = c.backend if c.backend != 'auto' else ('nccl' if c.device.startswith('cuda') else 'gloo')
        if be not in ('nccl', 'gloo', 'mpi', 'ucc', 'xccl'):
            raise UserError(f"unknown backend {be!r}: use auto, nccl (CUDA) or gloo (CPU)")
        if be == 'nccl' and not c.device.startswith('cuda'):
            raise UserError("backend nccl needs CUDA GPUs: use --backend=gloo (or auto) on CPU")
        init_process_group(be)
        master = rank == 0
    else:
        rank, world_size, master = 0, 1, True
        if c.fsdp:
            warn_once("fsdp=True shards the model across torchrun processes; a single process "
                      "trains unsharded (launch with torchrun --nproc_per_node=N)")
    return Procs(ddp, rank, world_size, master)


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


def shard_model(model, device_type):
    """FSDP2 over all processes: each transformer block one unit, gathered only while it runs, then
    the whole model (the root unit: embeddings, tied lm_head, final LayerNorm). The mesh is built
    for the device training runs on: without mesh=, fully_shard builds one for the machine's
    accelerator (cuda on a GPU machine run with --device=cpu, whose batches stay on the CPU; mps
    on a Mac, where no backend works). Returns the mesh."""
    import torch.distributed as dist
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import fully_shard
    mesh = init_device_mesh(device_type, (dist.get_world_size(),))
    _meshes.append(weakref.ref(mesh))  # for shutdown_distributed
    for block in model.transformer.h:
        fully_shard(block, mesh=mesh)
    fully_shard(model, mesh=mesh)
    return mesh
