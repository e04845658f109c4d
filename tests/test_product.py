"""What a newcomer sees: any text file becomes a dataset, progress lines, metrics and the loss plot."""

import json
import os

from conftest import run_script, tiny_args


def write_text(path, n=3000):
    words = "to be or not to be that is the question whether tis nobler in the mind".split()
    text = '\n'.join(' '.join(words[(i + j) % len(words)] for j in range(7)) for i in range(n // 40))
    path.write_text(text, encoding='utf-8')
    return path


def test_own_text_to_dataset_train_sample_and_plot(tmp_path):
    src = write_text(tmp_path / 'hamlet.txt')
    dest = tmp_path / 'hamlet'
    r = run_script('data/prepare_text.py', str(src), f'--dest={dest}')
    assert r.returncode == 0, r.stderr
    assert 'vocab size:' in r.stdout and f'--dataset={dest}' in r.stdout
    assert {'train.bin', 'val.bin', 'meta.pkl'} <= set(os.listdir(dest))
    assert not [f for f in os.listdir(dest) if '.tmp' in f]  # no temporary files left behind

    out = tmp_path / 'out'
    r = run_script('train.py', *tiny_args(str(out), str(dest), max_iters=12, eval_interval=6, log_interval=3))
    assert r.returncode == 0, r.stderr
    iter_lines = [l for l in r.stdout.splitlines() if l.startswith('iter ')]
    assert iter_lines and all(', mfu ' in l and ' tok/s' in l for l in iter_lines)
    # the time left from the second iteration on (the first holds evaluation and start-up)
    assert ' tok/s, eta ' not in iter_lines[0] and all(' tok/s, eta ' in l for l in iter_lines[1:])
    assert 'step 6: train loss' in r.stdout and 'elapsed' in r.stdout
    assert 'best val loss' in r.stdout and f'python sample.py --out_dir={out}' in r.stdout

    events = [json.loads(l) for l in open(out / 'metrics.jsonl')]
    assert [e['iter'] for e in events if e['event'] == 'eval'] == [0, 6, 12]
    assert [e['iter'] for e in events if e['event'] == 'iter'] == [0, 3, 6, 9, 12]
    assert all(e['lr'] > 0 for e in events)

    r = run_script('sample.py', f'--out_dir={out}', '--start=to be', '--num_samples=1', '--max_new_tokens=20')
    assert r.returncode == 0, r.stderr
    assert f'Loading meta from {dest}' in r.stdout and '---------------' in r.stdout

    r = run_script('plot.py', f'--out_dir={out}')
    assert r.returncode == 0, r.stderr
    with open(out / 'loss.png', 'rb') as f:
        assert f.read(8) == b'\x89PNG\r\n\x1a\n'


def test_prepare_text_errors(tmp_path):
    r = run_script('data/prepare_text.py', str(tmp_path / 'missing.txt'), f'--dest={tmp_path / "x"}')
    assert r.returncode == 2 and 'input file not found' in r.stderr and 'Traceback' not in r.stderr
    bad = tmp_path / 'latin1.txt'
    bad.write_bytes('caf\xe9 au lait'.encode('latin-1') * 10)
    r = run_script('data/prepare_text.py', str(bad), f'--dest={tmp_path / "y"}')
    assert r.returncode == 2 and 'not UTF-8' in r.stderr


def test_plot_without_metrics_is_one_line_error(tmp_path):
    r = run_script('plot.py', f'--out_dir={tmp_path}')
    assert r.returncode == 2 and 'no metrics at' in r.stderr and 'Traceback' not in r.stderr
