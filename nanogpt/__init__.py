"""
The machinery behind the entry points at the project's root (train.py, sample.py, bench.py, ...):
each module one concept, plugged into the story files through small named calls. The map is in
docs/layout.md.

    settings     train.py's settings checked, and the Run record of what they resolved to
    devices      device, dtype and compile rules; random states; peak FLOP/s for MFU
    autotune     dtype and compile measured where they are 'auto' (a CPU; compile on CUDA too)
    cpu          CPU training at matmul speed: fast dropout masks, the written-out attention
    memory       what a run needs in memory, checked before the model is built; out of memory as one line
    distributed  torchrun: process group, DDP and FSDP wrapping, sharded state and random streams
    data         datasets (memory-maps of train.bin, val.bin), meta.pkl, tokenizers
    optim        AdamW or Muon
    checkpoint   checkpoint files: crash-safe writes, safe loads, what init_from names, what a resume takes back
    signals      Ctrl-C and SIGTERM: stop at the next iteration, or abandon an evaluation at once
    budget       the time budget: when a run closes, where the schedule stands
    control      what train.py's loop calls (RunControl), and the units behind it
    progress     the heartbeat in any silence, and the run's estimate
    metrics      the console lines, metrics.jsonl, wandb
    engine       sampling: the key/value cache, generate, the sampling numerics
    errors       one-line errors for the user's mistakes
"""
