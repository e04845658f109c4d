"""What a newcomer sees: any text file, or a folder of them, becomes a dataset; training, sampling and
finetuning it; progress lines, metrics and the loss plot."""

import json
import os
import sys

import pytest

from conftest import PROJECT, offline_env, run_script, seed_cache, tiny_args


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


@pytest.mark.parametrize('case', ['binary file', 'folder without text', 'no match for --glob', '--vocab of nothing',
                                  'separator outside --vocab', 'tiny shakespeare --input not it'])
def test_prepare_text_bad_inputs_are_one_line(case, tmp_path):
    """Whatever the user points the prepare scripts at: one line, exit 2, no traceback."""
    (tmp_path / 'photo.png').write_bytes(b'\x89PNG\r\n\x1a\n\x00\x00' + bytes(range(256)))
    (tmp_path / 'folder').mkdir()
    (tmp_path / 'folder' / 'photo.png').write_bytes(b'\x00\x01' * 50)
    (tmp_path / 'folder' / 'old.txt').write_bytes('\xe9t\xe9\n'.encode('latin-1'))
    (tmp_path / 'a.txt').write_text('abc\n' * 20)
    (tmp_path / 'b.txt').write_text('abd\n' * 20)
    script, args, expected = {
        'binary file': ('data/prepare_text.py', [tmp_path / 'photo.png'], ['photo.png is a binary file', 'UTF-8']),
        'folder without text': ('data/prepare_text.py', [tmp_path / 'folder'], ['no UTF-8 text in', '2 files skipped']),
        'no match for --glob': ('data/prepare_text.py', [tmp_path / 'folder', '--glob=*.md'], ['no UTF-8 text in']),
        '--vocab of nothing': ('data/prepare_text.py', [tmp_path / 'a.txt', f'--vocab={tmp_path / "none"}'],
                               ['--vocab=', 'no dataset there']),
        'separator outside --vocab': ('data/prepare_text.py', [tmp_path / 'a.txt', tmp_path / 'b.txt',
                                                                f'--vocab={tmp_path / "ab"}', '--separator=#'],
                                      ["the separator '#' is not in the vocabulary"]),
        'tiny shakespeare --input not it': ('data/shakespeare_char/prepare.py', [f'--input={tmp_path / "a.txt"}'],
                                            ["is not tiny shakespeare's input.txt", 'python data/prepare_text.py']),
    }[case]
    if case == 'separator outside --vocab':
        assert run_script('data/prepare_text.py', tmp_path / 'a.txt', f'--dest={tmp_path / "ab"}').returncode == 0
    dest = [f'--dest={tmp_path / "out"}'] if 'prepare_text' in script else []  # shakespeare: writes nothing
    r = run_script(script, *map(str, args), *dest)
    errors = [l for l in r.stderr.splitlines() if l.startswith('error: ')]
    assert r.returncode == 2 and 'Traceback' not in r.stderr and len(errors) == 1, r.stderr
    assert all(e in errors[0] for e in expected), (expected, errors[0])


def test_plot_without_metrics_is_one_line_error(tmp_path):
    r = run_script('plot.py', f'--out_dir={tmp_path}')
    assert r.returncode == 2 and 'no metrics at' in r.stderr and 'Traceback' not in r.stderr


# ---- a folder of your own text: one dataset, trained, sampled, and finetuned -----------------------

DOCS = {  # documents of a user's folder, nested, with files that are not text among them
    'a.txt': "to be or not to be\nthat is the question\n" * 30,
    'b.txt': "whether tis nobler in the mind\n" * 12,
    'notes/c.md': "the slings and arrows\nof outrageous fortune\n" * 40,
    'notes/deeper/d.txt': "or to take arms against a sea\n" * 20,
    'e.txt': "and by opposing end them\n" * 8,
}
NOT_TEXT = {  # name -> what the warning must say
    'photo.png': (b'\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR' + bytes(range(256)), 'binary'),
    'notes/latin1.txt': ('caf\xe9 au lait\n'.encode('latin-1') * 5, 'not UTF-8'),
    'empty.txt': (b'', 'empty'),
}


def make_folder(root):
    for name, text in DOCS.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_text(text, encoding='utf-8')
    for name, (data, _) in NOT_TEXT.items():
        (root / name).write_bytes(data)
    (root / '.git').mkdir()
    (root / '.git' / 'HEAD').write_text('ref: refs/heads/main\n')  # hidden: never a document
    return root


def split_texts(dest):
    """The text of train.bin and val.bin, decoded with the dataset's own meta.pkl."""
    import pickle
    import numpy as np
    meta = pickle.load(open(dest / 'meta.pkl', 'rb'))
    return meta, {s: ''.join(meta['itos'][i] for i in np.fromfile(dest / f'{s}.bin', dtype=np.uint16).tolist())
                  for s in ('train', 'val')}


def test_folder_to_dataset_train_sample_and_finetune(tmp_path):
    folder = make_folder(tmp_path / 'my texts')
    dest = tmp_path / 'mine'
    r = run_script('data/prepare_text.py', str(folder), f'--dest={dest}')
    assert r.returncode == 0 and 'Traceback' not in r.stderr, r.stderr
    for name, (_, why) in NOT_TEXT.items():  # each file that is not text is named, with the reason
        assert any(str(folder / name) in l and why in l for l in r.stderr.splitlines()), (name, r.stderr)
    assert 'HEAD' not in r.stderr + r.stdout
    assert f"{sum(map(len, DOCS.values())):,} (5 documents, joined by '\u2403')" in r.stdout
    meta, texts = split_texts(dest)
    assert meta['separator'] == '\u2403' and '\u2403' in meta['stoi']
    # whole documents in each split, joined by the separator, every document in exactly one split
    docs = {s: t.split('\u2403') for s, t in texts.items()}
    assert sorted(docs['train'] + docs['val']) == sorted(DOCS.values()) and docs['train'] and docs['val']
    for split in ('train', 'val'):
        n = len(docs[split])
        assert (f"{split} has {len(texts[split]):,} tokens ({n} document{'s' * (n != 1)}, "
                f"{sum(map(len, docs[split])):,} characters)") in r.stdout

    out = tmp_path / 'out-mine'
    tiny = tiny_args(str(out), str(dest), max_iters=8, eval_interval=4, time_budget=0)
    r = run_script('train.py', 'config/train_shakespeare_char_cpu.py', *tiny)
    assert r.returncode == 0, r.stderr
    r = run_script('sample.py', f'--out_dir={out}', '--start=', '--num_samples=1', '--max_new_tokens=30',
                   '--dtype=float32')
    assert r.returncode == 0, r.stderr
    # an empty prompt starts a new document: the sample begins with the separator
    assert r.stdout.split('Loading meta from')[1].splitlines()[1].startswith('\u2403')

    # finetune that model on new text, encoded with its vocabulary ('!' is not in it: dropped, named)
    new = tmp_path / 'letter.txt'
    new.write_text("to be, or not to be!\nthe question of the mind\n" * 20, encoding='utf-8')
    r = run_script('data/prepare_text.py', str(new), f'--vocab={dest}', f'--dest={tmp_path / "letter"}')
    assert r.returncode == 0, r.stderr
    assert "dropped 2 character(s) that the vocabulary lacks: '!' (20), ',' (20)" in r.stderr
    assert pickle_load(tmp_path / 'letter' / 'meta.pkl')['stoi'] == meta['stoi']
    ft = tmp_path / 'out-letter'
    r = run_script('train.py', 'config/train_shakespeare_char_cpu.py', f'--init_from={out}',
                   *tiny_args(str(ft), str(tmp_path / 'letter'), max_iters=4, eval_interval=4, time_budget=0,
                              n_layer=3, n_embd=48))
    assert r.returncode == 0, r.stderr
    assert f'Initializing from {out}/ckpt.pt (8 iterations on {dest})' in r.stdout
    assert 'note: the model keeps the shape it was trained with (n_layer=2, n_embd=32)' in r.stdout
    import torch
    before, after = (torch.load(d / 'ckpt.pt', weights_only=True) for d in (out, ft))
    assert after['model_args'] == before['model_args'] and after['iter_num'] == 4  # its shape; iteration 0 on
    assert after['config']['init_from'] == str(out) and after['config']['dataset'] == str(tmp_path / 'letter')
    events = [json.loads(l) for l in open(ft / 'metrics.jsonl')]
    assert [e['iter'] for e in events if e['event'] == 'eval'] == [0, 4]
    # started from the trained weights: its first evaluation is the trained model's, not a new one's
    new_model = [json.loads(l) for l in open(out / 'metrics.jsonl')][0]
    assert events[0]['val_loss'] < new_model['val_loss'] - 0.1  # 8 iterations take off about 0.2
    r = run_script('sample.py', f'--out_dir={ft}', '--start=to be', '--num_samples=1', '--max_new_tokens=20')
    assert r.returncode == 0 and 'to be' in r.stdout, r.stderr


def pickle_load(path):
    import pickle
    with open(path, 'rb') as f:
        return pickle.load(f)


def test_split_documents_keeps_whole_documents_and_a_tenth_for_val():
    sys.path.insert(0, os.path.join(PROJECT, 'data'))
    from prepare_text import split_documents
    for sizes in ([100] * 20, [5, 1000, 7, 30, 900, 60, 2, 400], [1000, 10], [3, 3]):
        train, val = split_documents(sizes)
        assert sorted(train + val) == list(range(len(sizes))) and train and val
        assert sum(sizes[i] for i in val) <= max(0.1 * sum(sizes), min(sizes))
        assert split_documents(sizes) == (train, val)  # seeded: the same split every time
    assert len(split_documents([100] * 20)[1]) == 2


def test_prepare_text_gpt2_documents_are_joined_by_endoftext(tmp_path):
    """--bpe on several files: each split is its documents' tokens with <|endoftext|> between, and
    meta.pkl names the encoding (sample.py decodes with it)."""
    import numpy as np
    cache = seed_cache(str(tmp_path / 'tiktoken'), set_env=False)
    folder = make_folder(tmp_path / 'texts')
    r = run_script('data/prepare_text.py', str(folder), '--bpe', '--glob=*.txt', f'--dest={tmp_path / "bpe"}',
                   env=offline_env(cache))
    assert r.returncode == 0, r.stderr
    assert "(4 documents, joined by '<|endoftext|>' (token 50256))" in r.stdout  # c.md left out by --glob
    assert 'photo.png' not in r.stderr and 'latin1.txt' in r.stderr
    assert pickle_load(tmp_path / 'bpe' / 'meta.pkl') == {'vocab_size': 50257, 'tokenizer': 'gpt2'}
    import tiktoken
    os.environ['TIKTOKEN_CACHE_DIR'] = cache
    try:
        enc = tiktoken.get_encoding('gpt2')
    finally:
        del os.environ['TIKTOKEN_CACHE_DIR']
    found = []
    for split in ('train', 'val'):
        ids = np.fromfile(tmp_path / 'bpe' / f'{split}.bin', dtype=np.uint16).tolist()
        found += enc.decode(ids).split('<|endoftext|>')
    assert sorted(found) == sorted(t for n, t in DOCS.items() if n.endswith('.txt'))


def test_a_vocabulary_without_separator_lends_an_unused_character():
    sys.path.insert(0, os.path.join(PROJECT, 'data'))
    from prepare_text import unused_character
    stoi = {c: i for i, c in enumerate('\n $&3ab')}
    assert unused_character(['a b\n', 'b$a'], stoi) == '&'  # punctuation first, none that a document uses
    assert unused_character(['a b\n', 'b$a&'], stoi) == '3'
    assert unused_character(['\n $&3ab'], stoi) == '\n\n'  # every character used: a blank line
