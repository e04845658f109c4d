"""dtype and compile chosen by measurement on the CPU (autotune.py): candidates by machine, the
choice by run length or time budget, the cache, and a trial that leaves the model and the random
streams as they were. No timing is asserted: the choice is checked against the measured numbers."""

import json

import pytest
import torch

from nanogpt import autotune
from nanogpt import devices
from conftest import tiny_args, tiny_model


@pytest.fixture
def cache_dir(tmp_path, monkeypatch):
    monkeypatch.setenv('NANOGPT_CACHE_DIR', str(tmp_path / 'cache'))
    return tmp_path / 'cache'


def tiny(dropout=0.1):
    return tiny_model(n_layer=1, vocab_size=20, dropout=dropout, training=True)


def test_pick_minimises_run_time_or_maximises_steps_in_a_budget():
    times = {('float32', False): 1.0, ('bfloat16', False): 0.8, ('bfloat16', True): 0.5}
    assert autotune.fastest(times, 100.0, steps=10) == ('bfloat16', False)  # 8 s beats 5 s + 100 s compiling
    assert autotune.fastest(times, 100.0, steps=1000) == ('bfloat16', True)  # 600 s beats 800 s
    assert autotune.fastest(times, 100.0, seconds=150) == ('bfloat16', False)  # 187 steps beat 100
    assert autotune.fastest(times, 100.0, seconds=1000) == ('bfloat16', True)  # 1800 steps beat 1250
    assert autotune.fastest({('float32', False): 1.0}, None, steps=5) == ('float32', False)


def test_measures_once_then_uses_the_cache_and_leaves_everything_as_it_was(cache_dir, monkeypatch):
    monkeypatch.setattr(devices, 'cpu_has_bf16_units', lambda: True)
    model = tiny()
    weights = {k: v.clone() for k, v in model.state_dict().items()}
    modules = [type(m) for m in model.modules()]
    rng = torch.get_rng_state()
    lines = []
    dtype, written_out_attention, compiled, compiled_model, step_s = autotune.measure_and_choose(
        model, 4, 'auto', False, run_steps=100, log=lines.append)
    assert compiled is False and compiled_model is None and written_out_attention is False  # dropout: no candidate
    assert step_s > 0  # the chosen candidate's measured time: the run's estimate starts from it
    assert 'measured)' in lines[0] and 'float32 eager' in lines[0] and 'bfloat16 eager' in lines[0]
    assert lines[-1].startswith(f'using dtype: {dtype}, compile: False (compile given; dtype auto: fastest measured)')
    with open(cache_dir / 'autotune.json') as f:
        cache = json.load(f)
    (key, entry), = cache.items()
    assert 'batch 4 x 16' in key and f'torch {torch.__version__}' in key
    assert set(entry['eager']) == {'float32', 'bfloat16'}
    assert dtype == min(entry['eager'], key=entry['eager'].get)  # the fastest measured (no written-out candidate: dropout)
    # the trial changed nothing: weights, gradients, the CPU random stream, the modules
    assert all(torch.equal(v, weights[k]) for k, v in model.state_dict().items())
    assert all(p.grad is None for p in model.parameters())
    assert torch.equal(torch.get_rng_state(), rng)
    assert [type(m) for m in model.modules()] == modules and all(b.attn.flash for b in model.transformer.h)

    lines.clear()
    again = autotune.measure_and_choose(model, 4, 'auto', False, run_steps=100, log=lines.append)
    assert again[0] == dtype and 'cached in' in lines[0]
    lines.clear()
    autotune.measure_and_choose(model, 8, 'auto', False, run_steps=100, log=lines.append)  # another batch shape
    assert 'measured)' in lines[0]


def test_a_cache_measured_on_a_busy_machine_is_measured_again(cache_dir, monkeypatch):
    """A cache entry whose winner now runs far faster than recorded (taken while something else
    held the cores) is measured again, with a line saying so, and replaced; one whose times
    hold is kept."""
    monkeypatch.setattr(devices, 'cpu_has_bf16_units', lambda: True)
    model = tiny()
    autotune.measure_and_choose(model, 4, 'auto', False, run_steps=100, log=lambda s: None)
    path = cache_dir / 'autotune.json'
    cache = json.loads(path.read_text())
    (key, entry), = cache.items()
    busy = {k: 1000 * t for k, t in entry['eager'].items()}  # as if measured while the cores were taken
    path.write_text(json.dumps({key: dict(entry, eager=busy, compile_s=99.0, compiled={'float32': 5.0})}))
    lines = []
    autotune.measure_and_choose(model, 4, 'auto', False, run_steps=100, log=lines.append)
    assert 'measured on a busier machine' in lines[0] and 'measuring again' in lines[0]
    assert 'measured)' in lines[1]
    (_, again), = json.loads(path.read_text()).items()
    assert all(again['eager'][k] < busy[k] / 10 for k in busy) and 'compile_s' not in again and 'compiled' not in again
    lines.clear()
    autotune.measure_and_choose(model, 4, 'auto', False, run_steps=100, log=lines.append)
    assert 'cached in' in lines[0]


def test_without_bf16_units_only_float32_is_a_candidate(cache_dir, monkeypatch):
    monkeypatch.setattr(devices, 'cpu_has_bf16_units', lambda: False)
    lines = []
    assert autotune.measure_and_choose(tiny(), 4, 'auto', False, run_steps=100, log=lines.append)[:3] == ('float32', False, False)
    assert not any('bfloat16' in line for line in lines)
    assert not (cache_dir / 'autotune.json').exists()  # nothing to measure: one candidate


def test_compiling_is_not_tried_for_a_short_run(cache_dir, monkeypatch):
    monkeypatch.setattr(devices, 'cpu_has_bf16_units', lambda: False)
    lines = []
    dtype, _, compiled, _, _ = autotune.measure_and_choose(tiny(), 4, 'auto', 'auto', run_steps=50, log=lines.append)
    assert compiled is False
    assert any(line.startswith('auto compile: not tried') for line in lines)
    lines.clear()
    autotune.measure_and_choose(tiny(), 4, 'auto', 'auto', run_steps=None, budget_s=30, log=lines.append)
    assert any('would not repay' in line for line in lines)


def test_train_reports_and_stores_the_measured_choice(char_dataset, tmp_path, cache_dir, capsys):
    import train
    s = train.main(tiny_args(str(tmp_path / 'out'), char_dataset, dtype='auto', compile='auto', max_iters=2,
                             eval_interval=2))
    out = capsys.readouterr().out
    assert 'auto dtype/compile: forward+backward of this model and batch' in out
    assert s['config']['dtype'] in ('float32', 'bfloat16') and s['config']['compile'] is False
    assert f"using dtype: {s['config']['dtype']}, compile: False" in out


def test_without_dropout_written_out_attention_is_a_bf16_candidate(cache_dir, monkeypatch):
    monkeypatch.setattr(devices, 'cpu_has_bf16_units', lambda: True)
    model = tiny(dropout=0.0)
    lines = []
    dtype, written_out_attention, _, _, _ = autotune.measure_and_choose(model, 4, 'auto', False, run_steps=100,
                                                                        log=lines.append)
    with open(cache_dir / 'autotune.json') as f:
        (entry,) = json.load(f).values()
    assert set(entry['eager']) == {'float32', 'bfloat16', 'bfloat16+written_out_attention'}
    best = min(entry['eager'], key=entry['eager'].get)
    assert (dtype, written_out_attention) == (best.partition('+')[0], best.endswith('+written_out_attention'))
    assert all(blk.attn.flash for blk in model.transformer.h)  # the trial put it back
    assert autotune.candidates(model, 'float32') == ['float32']  # float32 keeps the fused kernel


def test_compile_is_tried_for_long_runs_only_at_each_device_types_guesses():
    """Before any compile was measured: the shakespeare_char GPU recipe on a GPU (~5000 steps of ~10 ms eager)
    tries compiling, a short GPU run does not; the five-minute CPU recipe (4 layers, a 300 s
    budget) does not either (compiling would take much of its budget)."""
    gpu_guess = autotune.compile_guess({}, 6, 'cuda')
    assert autotune.worth_trying_compile(5001 * 0.010, gpu_guess, 'cuda')
    assert not autotune.worth_trying_compile(201 * 0.010, gpu_guess, 'cuda')
    assert not autotune.worth_trying_compile(300.0, autotune.compile_guess({}, 4, 'cpu'), 'cpu')
    assert autotune.worth_trying_compile(3000.0, autotune.compile_guess({}, 6, 'cpu'), 'cpu')


def test_a_measured_compile_on_this_machine_replaces_the_guess():
    machine = autotune.machine_name('cpu')
    cache = {'a': {'compile_s': 30.0, 'n_layer': 3, 'cpu': machine},
             'b': {'compile_s': 8.0, 'n_layer': 2, 'cpu': machine},
             'c': {'compile_s': 900.0, 'n_layer': 1, 'cpu': 'another machine'}}
    assert autotune.compile_guess(cache, 6, 'cpu') == pytest.approx(60.0)  # the slowest per layer here: 10 s


def test_choose_dtype_and_compile_applies_the_rule_where_nothing_is_auto(cache_dir):
    choice = autotune.choose_dtype_and_compile(tiny(), 4, 'float32', False, 'cpu', 'cpu', run_steps=100)
    assert choice == autotune.Choice('float32', False, False, None, None)
    assert not (cache_dir / 'autotune.json').exists()
    with pytest.raises(Exception, match="compile must be True, False or auto, got 'yes'"):
        autotune.choose_dtype_and_compile(tiny(), 4, 'auto', 'yes', 'cpu', 'cpu', run_steps=100)
