# A small character-level GPT on tiny shakespeare: 6 layers, 6 heads, 384 wide, 10.65M parameters.
# Reaches a validation loss of about 1.47 after 5000 iterations on one A100 (a few minutes).
# On a CPU see config/train_shakespeare_char_cpu.py instead.

out_dir = 'out-shakespeare-char'
eval_interval = 250  # the model overfits this small dataset: evaluate often
eval_iters = 200
log_interval = 10

# keep only the best model by validation loss
always_save_checkpoint = False

wandb_log = False
wandb_project = 'shakespeare-char'
wandb_run_name = 'mini-gpt'

dataset = 'shakespeare_char'
gradient_accumulation_steps = 1
batch_size = 64
block_size = 256  # 256 characters of context

n_layer = 6
n_head = 6
n_embd = 384
dropout = 0.2

learning_rate = 1e-3  # a small model tolerates a larger step
max_iters = 5000
lr_decay_iters = 5000  # usually equal to max_iters
min_lr = 1e-4  # learning_rate / 10
beta2 = 0.99  # a little larger than GPT-2's 0.95: few tokens per iteration

warmup_iters = 100
