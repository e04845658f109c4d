# Finetune OpenAI's largest GPT-2 (XL, 1558M) on tiny shakespeare in BPE tokens:
#   python data/shakespeare/prepare.py && python train.py config/finetune_shakespeare.py
#   python sample.py --out_dir=out-shakespeare
# Minutes on one A100; a smaller GPU may need --init_from=gpt2-medium or gpt2 (and --dtype=float16).
import time

out_dir = 'out-shakespeare'
eval_interval = 5
eval_iters = 40
wandb_log = False
wandb_project = 'shakespeare'
wandb_run_name = 'ft-' + str(time.time())

dataset = 'shakespeare'
init_from = 'gpt2-xl'

# the model overfits quickly: keep only the checkpoint with the best validation loss
always_save_checkpoint = False

# 1 sequence * 32 micro-steps * 1024 tokens = 32,768 tokens per step; the 301,966 training tokens
# make one epoch about 9.2 steps, so 20 steps is about two epochs
batch_size = 1
gradient_accumulation_steps = 32
max_iters = 20

# a small constant learning rate: the pretrained weights need only a nudge
learning_rate = 3e-5
decay_lr = False
