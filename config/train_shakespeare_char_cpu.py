# Character-level Shakespeare on a CPU in about five minutes (see README, "CPU recipe").
# The 10.65M GPU recipe (config/train_shakespeare_char.py) needs hours on a laptop CPU; this one
# spends the same few minutes on a model small enough to see ~3M tokens.
#   python train.py config/train_shakespeare_char_cpu.py
#   python sample.py --out_dir=out-shakespeare-char-cpu --start="ROMEO:" --num_samples=5

out_dir = 'out-shakespeare-char-cpu'
dataset = 'shakespeare_char'
eval_interval = 250
eval_iters = 20  # 20 batches x 2048 tokens per split: enough to rank checkpoints, cheap on a CPU
log_interval = 50
always_save_checkpoint = False

gradient_accumulation_steps = 1
batch_size = 32
block_size = 64

n_layer = 4
n_head = 4
n_embd = 128
dropout = 0.0  # a few epochs of data at most: this model underfits, so dropout only slows it down

learning_rate = 3e-3  # small models take a larger step (3e-3 beat 2e-3 here: 1.68 vs 1.73)
max_iters = 1500
lr_decay_iters = 1500
min_lr = 3e-4
beta2 = 0.99
warmup_iters = 50
