"""Watching a run learn (nanogpt/watch.py): a sample after each evaluation but the first, framed
and stored in metrics.jsonl, that changes no loss; out_dir/loss.png when the run ends, or one line
where matplotlib is missing; the best validation loss in bits per character or token."""

import json
import math
import os
import pickle
import re
import sys

import pytest

import train
from conftest import PROJECT, tiny_args
from nanogpt.metrics import bits_per


def events(out, kind):
    with open(os.path.join(out, 'metrics.jsonl')) as f:
        return [e for e in map(json.loads, f) if e['event'] == kind]


def test_a_sample_after_each_evaluation_but_the_first(char_dataset, tmp_path, capsys):
    out = str(tmp_path / 'out')
    summary = train.main(tiny_args(out, char_dataset, sample_every_eval=True, sample_start='ROMEO:',
                                   sample_max_new_tokens=40))
    stdout = capsys.readouterr().out
    evals = sorted(summary['evals'])
    assert evals == [0, 5, 10]
    headers = re.findall(r'^  sample at step (\d+):$', stdout, flags=re.M)
    assert [int(s) for s in headers] == evals[1:]
    lines = stdout.splitlines()
    samples = events(out, 'sample')
    assert [e['iter'] for e in samples] == evals[1:]
    for step, e in zip(evals[1:], samples):  # right under its step line, the prompt and 40 characters, framed
        assert e['start'] == 'ROMEO:' and len(e['text']) == 40
        at = lines.index(f'  sample at step {step}:')
        assert lines[at - 1].startswith(f'step {step}: train loss ')
        shown = ('ROMEO:' + e['text']).strip('\n').split('\n')
        assert lines[at + 1:at + 1 + len(shown)] == ['  | ' + line for line in shown]


def test_samples_change_no_loss(char_dataset, tmp_path):
    """The sample draws with its own seed inside fork_rng: every float32 loss, of the iterations and
    of the evaluations, is the same bit for bit with samples on and off (dropout on: the batches
    and the dropout masks would both move if the sample touched a random stream)."""
    runs = {}
    for on in (False, True):
        runs[on] = train.main(tiny_args(str(tmp_path / f'out{on}'), char_dataset, dropout=0.1,
                                        sample_every_eval=on, max_iters=12, eval_interval=4))
    assert runs[True]['losses'] == runs[False]['losses'] and len(runs[True]['losses']) == 13
    assert runs[True]['evals'] == runs[False]['evals']
    assert len(events(str(tmp_path / 'outTrue'), 'sample')) == 3
    assert events(str(tmp_path / 'outFalse'), 'sample') == []


def test_the_same_sample_each_time_for_the_same_model(char_dataset, tmp_path):
    """Fixed prompt and seed: a model that did not change draws the same sample again (here a
    learning rate of 1e-12 keeps the float32 weights as they are), so one evaluation's sample compares with the next."""
    out = str(tmp_path / 'out')
    train.main(tiny_args(out, char_dataset, sample_every_eval=True, learning_rate=1e-12, decay_lr=False,
                         weight_decay=0.0))
    texts = [e['text'] for e in events(out, 'sample')]
    assert len(texts) == 2 and texts[0] == texts[1]


def test_the_originals_config_prints_no_sample_unless_asked(char_dataset, tmp_path, capsys):
    config = os.path.join(PROJECT, 'config', 'train_shakespeare_char.py')
    train.main([config, *tiny_args(str(tmp_path / 'a'), char_dataset)])
    quiet = capsys.readouterr().out
    assert 'step 10: train loss' in quiet and 'sample at step' not in quiet and '  | ' not in quiet
    assert events(str(tmp_path / 'a'), 'sample') == []
    train.main([config, *tiny_args(str(tmp_path / 'b'), char_dataset), '--sample_every_eval=True'])
    assert capsys.readouterr().out.count('sample at step') == 2
    assert train.DEFAULTS['sample_every_eval'] is False


def test_the_cpu_recipe_turns_samples_on():
    settings = dict(train.DEFAULTS)  # a config file runs among train.py's settings
    exec(open(os.path.join(PROJECT, 'config', 'train_shakespeare_char_cpu.py')).read(), settings)
    assert settings['sample_every_eval'] is True


def test_a_prompt_outside_the_vocabulary_is_one_line(char_dataset, tmp_path):
    from nanogpt.errors import UserError
    with pytest.raises(UserError, match=r"sample_start='Zürich'.*not in the vocabulary.*--sample_start="):
        train.main(tiny_args(str(tmp_path / 'out'), char_dataset, sample_every_eval=True, sample_start='Zürich'))


def test_the_loss_plot_is_drawn_when_the_run_ends(char_dataset, tmp_path, capsys):
    out = str(tmp_path / 'out')
    train.main(tiny_args(out, char_dataset, loss_plot=True))
    png = os.path.join(out, 'loss.png')
    with open(png, 'rb') as f:
        assert f.read(8) == b'\x89PNG\r\n\x1a\n'
    closing = capsys.readouterr().out.splitlines()
    assert closing[-1] == f'loss plot: {png}'
    assert closing[-3].startswith('done: ')


def test_without_matplotlib_one_line_says_how_to_get_it(char_dataset, tmp_path, capsys, monkeypatch):
    monkeypatch.setitem(sys.modules, 'matplotlib', None)  # as if not installed: import fails
    out = str(tmp_path / 'out')
    train.main(tiny_args(out, char_dataset, loss_plot=True))
    stdout = capsys.readouterr().out
    said = [line for line in stdout.splitlines() if 'install matplotlib' in line or 'loss plot' in line]
    assert len(said) == 1 and 'pip install matplotlib' in said[0], said
    assert said[0] == stdout.splitlines()[-1]
    assert not os.path.exists(os.path.join(out, 'loss.png'))


def test_no_plot_for_eval_only(char_dataset, tmp_path, capsys):
    out = str(tmp_path / 'out')
    train.main(tiny_args(out, char_dataset, loss_plot=True))
    os.remove(os.path.join(out, 'loss.png'))
    capsys.readouterr()
    train.main(tiny_args(out, char_dataset, init_from='resume', eval_only=True, loss_plot=True))
    assert 'loss plot' not in capsys.readouterr().out
    assert not os.path.exists(os.path.join(out, 'loss.png'))


def test_bits_per_character_beside_the_best_val_loss(char_dataset, tmp_path, capsys):
    summary = train.main(tiny_args(str(tmp_path / 'out'), char_dataset))
    best = summary['best_val_loss']
    line = next(l for l in capsys.readouterr().out.splitlines() if l.startswith('done: '))
    assert f"best val loss {best:.4f} ({best / math.log(2):.3f} bits per character)" in line


def test_bits_per_token_where_the_tokens_are_not_characters(tmp_path):
    words = tmp_path / 'words'
    words.mkdir()
    with open(words / 'meta.pkl', 'wb') as f:
        pickle.dump({'vocab_size': 3, 'stoi': {'the': 0, 'king': 1, ' ': 2}, 'itos': {0: 'the', 1: 'king', 2: ' '}}, f)
    assert bits_per(math.log(2), str(words)) == '1.000 bits per token'
    gpt2 = tmp_path / 'gpt2'
    gpt2.mkdir()
    (gpt2 / 'train.bin').write_bytes(b'')  # no meta.pkl: GPT-2 BPE tokens
    assert bits_per(2 * math.log(2), str(gpt2)) == '2.000 bits per token'


def test_loss_plot_false_draws_nothing(char_dataset, tmp_path, capsys):
    out = str(tmp_path / 'out')
    train.main(tiny_args(out, char_dataset, loss_plot=False))
    assert 'loss plot' not in capsys.readouterr().out
    assert not os.path.exists(os.path.join(out, 'loss.png'))
