# Character-level Shakespeare on a CPU in five minutes (docs/training.md, "The CPU recipe").
#   python train.py config/train_shakespeare_char_cpu.py
#   python sample.py --out_dir=out-shakespeare-char-cpu --start="ROMEO:" --num_samples=5
# The shape follows the CPU (docs/training.md, "The CPU recipe"): with bf16 units (AVX512-BF16,
# AMX) bfloat16 runs at about four times float32's speed and a 4x256 model fits; on an AVX2-only
# CPU everything runs in float32 and a 4x128 model learns more in the same five minutes.
from nanogpt.devices import cpu_has_bf16_units

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
if not cpu_has_bf16_units():
    n_embd = 128
    print("CPU recipe: 4x128 (no bf16 units here: float32 only, so a smaller model fits more iterations)")
dropout = 0.0  # a few epochs at most: dropout only slows learning here (docs/training.md)

optimizer = 'auto'  # Muon for the block matrices (orthogonalised in float32 where bfloat16 is emulated)
muon_lr = 0.04
learning_rate = 2e-3  # AdamW: the embeddings (and, without Muon, everything)
min_lr = 2e-4
beta2 = 0.99
# with a time budget the schedule runs on the fraction of the budget spent, placed at
# progress * lr_decay_iters: warmup takes 4% of the time, the cosine the rest
warmup_iters = 40
lr_decay_iters = 1000
