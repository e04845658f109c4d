# GPT-2 (124M) from scratch on OpenWebText, nanoGPT's headline run: about 2.85 validation loss after
# ~5 days on one node of 8 A100 40GB GPUs. Prepare the data first (data/openwebtext/prepare.py), then:
#   torchrun --standalone --nproc_per_node=8 train.py config/train_gpt2.py
# The model itself is train.py's default (12 layers, 12 heads, 768 wide).

wandb_log = True
wandb_project = 'owt'
wandb_run_name = 'gpt2-124M'

# ~0.5M tokens per optimizer step: 12 sequences * 1024 tokens * 40 micro-steps = 491,520
# (the 40 micro-steps are divided among the GPUs: 5 each on 8)
batch_size = 12
block_size = 1024
gradient_accumulation_steps = 5 * 8

# 600k steps of ~0.5M tokens: about 300B tokens in all
max_iters = 600000
lr_decay_iters = 600000

eval_interval = 1000
eval_iters = 200
log_interval = 10

weight_decay = 1e-1
