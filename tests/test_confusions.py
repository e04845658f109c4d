"""Small things that confused users (issue 32): each one now says what happened in one line."""

import importlib
import os
import warnings

import numpy as np
import pytest

from configurator import apply_overrides
from conftest import run_script, tiny_args
from nanogpt.budget import TimeBudget, warn_if_too_short
from nanogpt.data import meta_vocab_size
from nanogpt.errors import UserError


def test_a_dataset_without_meta_pkl_says_so_with_its_largest_token_id(char_dataset, capsys):
    os.remove(os.path.join(char_dataset, 'meta.pkl'))
    top = int(np.fromfile(os.path.join(char_dataset, 'train.bin'), dtype=np.uint16).max())
    assert meta_vocab_size(char_dataset) is None  # nanoGPT's rule: GPT-2's vocabulary
    line = capsys.readouterr().out.strip()
    assert line.startswith(f"no meta.pkl in {char_dataset}: GPT-2's vocabulary assumed")
    assert f"largest token id in train.bin is {top};" in line and "lost its meta.pkl" in line


def test_a_missing_dataset_stops_before_the_model_and_the_out_dir(tmp_path):
    out = tmp_path / 'out'
    r = run_script('train.py', *tiny_args(str(out), str(tmp_path / 'nothing')))
    assert r.returncode == 2 and 'missing' in r.stderr
    assert 'number of parameters' not in r.stdout and 'vocab_size' not in r.stdout
    assert not out.exists()


def test_config_files_are_plain_arguments():
    with pytest.raises(UserError, match=r"config files are plain arguments.*python \S+ config/x.py"):
        apply_overrides({'batch_size': 1}, ['--config=config/x.py'], verbose=False)
    with pytest.raises(UserError, match="config is a folder, not a config file"):
        apply_overrides({'batch_size': 1}, ['config'], verbose=False)


def test_the_closing_line_says_what_ended_the_run(tmp_path, char_dataset):
    r = run_script('train.py', *tiny_args(str(tmp_path / 'out'), char_dataset, max_iters=1, eval_interval=1,
                                          lr_decay_iters=1, warmup_iters=0, time_budget=600.0))
    assert r.returncode == 0, r.stderr
    done = next(ln for ln in r.stdout.splitlines() if ln.startswith('done:'))
    assert done.startswith('done: 1 iteration in ') and 'max_iters reached' in done and 'fitted' not in done
    assert 'using dtype: float32 (given)' in r.stdout


def test_a_given_compile_is_not_called_auto(tmp_path, char_dataset):
    r = run_script('train.py', *tiny_args(str(tmp_path / 'out'), char_dataset, max_iters=0, dtype='auto'))
    assert r.returncode == 0, r.stderr
    line = next(ln for ln in r.stdout.splitlines() if ln.startswith('using dtype:'))
    assert '(compile given; dtype auto: ' in line


def test_sample_suggests_the_cpu_recipe_without_a_gpu(tmp_path):
    r = run_script('sample.py', f'--out_dir={tmp_path / "none"}')
    assert r.returncode == 2 and 'config/train_shakespeare_char_cpu.py' in r.stderr


def test_a_budget_shorter_than_an_iteration_and_an_evaluation_is_said_at_start(capsys):
    warn_if_too_short(TimeBudget(5.0), micro_step_s=2.0, eval_iters=10, grad_accum=2)  # 4 s + 10 x 4/2/3 s
    assert "time_budget=5s leaves" in capsys.readouterr().err
    warn_if_too_short(TimeBudget(600.0), micro_step_s=2.0, eval_iters=10, grad_accum=2)
    warn_if_too_short(TimeBudget(5.0), micro_step_s=None, eval_iters=10, grad_accum=2)  # nothing measured
    assert capsys.readouterr().err == ''


def test_torch_compiles_own_script_method_warnings_are_not_the_suites():
    """torch.compile imports torch.utils.mkldnn, which warns 14 times about torch's own
    script_method; the suite filters exactly that (conftest.TORCH_OWN_WARNINGS)."""
    import torch.utils.mkldnn
    with warnings.catch_warnings(record=True) as seen:
        importlib.reload(torch.utils.mkldnn)
    assert not [w for w in seen if 'script_method' in str(w.message)]
