"""
The machinery behind the entry points at the project's root (train.py, sample.py, bench.py, ...):
each module one concept, plugged into the story files through small named calls. The map is in
docs/layout.md.

    settings     train.py's settings checked, and the Run record of what they resolved to
    devices      device, dtype and compile rules; peak FLOP/s for MFU
    autotune     dtype and compile measured where 'auto' allows (a CPU; compile on CUDA too)
    cpu          CPU training at matmul speed: fast dropout masks, the written-out attention
    distributed  torchrun: process group, DDP and FSDP wrapping, sharded state dicts
    data         datasets (memory-maps of train.bin, val.bin), meta.pkl, tokenizers
    optim        AdamW or Muon
    checkpoint   crash-safe writes, safe loads, what a resumed run takes back
    control      the loop's companion: signals, the time budget, timing (RunControl)
    metrics      the console lines, metrics.jsonl, wandb
    engine       sampling: the key/value cache, generate, the sampling numerics
    errors       one-line errors for the user's mistakes
"""
