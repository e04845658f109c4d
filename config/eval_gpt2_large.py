# Evaluate OpenAI's gpt2-large (774M parameters; n_layer=36, n_head=20, n_embd=1280) on the current
# dataset (OpenWebText by default): one estimate of train and val loss, then exit.
#   python train.py config/eval_gpt2_large.py
batch_size = 8
eval_iters = 500  # more batches than training's 200: a steadier estimate
eval_only = True
wandb_log = False
init_from = 'gpt2-large'
