# Evaluate OpenAI's gpt2 (124M parameters; n_layer=12, n_head=12, n_embd=768) on the current
# dataset (OpenWebText by default): one estimate of train and val loss, then exit.
#   python train.py config/eval_gpt2.py
batch_size = 8
eval_iters = 500  # more batches than training's 200: a steadier estimate
eval_only = True
wandb_log = False
init_from = 'gpt2'
