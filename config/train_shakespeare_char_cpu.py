# Character-level Shakespeare on a CPU in five minutes (docs/training.md, "The CPU recipe").
#   python train.py config/train_shakespeare_char_cpu.py
#   python sample.py --out_dir=out-shakespeare-char-cpu --start="ROMEO:" --num_samples=5
# The shape follows the device the run trains on (docs/training.md, "The CPU recipe"): on a CPU
# with bf16 units (AVX512-BF16, AMX) bfloat16 runs at about four times float32's speed and a 4x256
# model fits; on any other CPU training runs in float32 and a 4x128 model learns more in the same
# five minutes. A GPU takes 4x256: MPS too, which trains even models this small faster than the
# Mac's own CPU (docs/platforms.md, "Apple's GPU or its CPU").
from configurator import final_value
from nanogpt.devices import cpu_has_bf16_units, planned_device_type

out_dir = 'out-shakespeare-char-cpu'
dataset = 'shakespeare_char'
time_budget = 300  # seconds from start to the last checkpoint: the run ends by itself
max_iters = 100000  # only a cap: the budget ends the run first
eval_interval = 500  # evaluation time is training time lost: a few cheap ones for the loss curve
eval_iters = 10  # too few to rank checkpoints (+-0.02): re-evaluate with more batches to report
log_interval = 50
always_save_checkpoint = True  # the loss falls to the end: the last model is the one to keep
sample_every_eval = True  # a short sample after each evaluation: watch the text turn into Shakespeare

gradient_accumulation_steps = 1
batch_size = 32
block_size = 128  # 64 characters of context learned less in the same time (docs/training.md)

n_layer = 4
n_head = 4
n_embd = 256
_device = planned_device_type(final_value('device', device))  # a --device after this file counts too
if _device != 'cpu':
    _why = "a GPU: the larger model" + (", faster there than on the Mac's CPU; --device=cpu for the CPU"
                                        if _device == 'mps' else '')
elif cpu_has_bf16_units():
    _why = "bf16 units: bfloat16 at about four times float32's speed"
else:
    n_embd = 128
    _why = "float32 here, as bfloat16 is fast only with AMX or AVX512-BF16: a smaller model fits more iterations"
print(f"five-minute recipe: 4x{n_embd} on {_device} ({_why})")
dropout = 0.0  # a few epochs at most: dropout only slows learning here (docs/training.md)

optimizer = 'auto'  # Muon for the block matrices (orthogonalised in float32 where bfloat16 is emulated)
muon_lr = 0.04
learning_rate = 2e-3  # AdamW: the embeddings (and, without Muon, everything)
min_lr = 0.0  # decayed all the way: 0.019 and 0.031 lower at 1245 iterations than a floor of 2e-4 (docs/training.md)
beta2 = 0.99
# with a time budget the schedule runs on the fraction of the budget spent, placed at
# progress * lr_decay_iters: warmup takes 4% of the time, the cosine the rest
warmup_iters = 40
lr_decay_iters = 1000
