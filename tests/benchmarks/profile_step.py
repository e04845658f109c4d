"""
A benchmark, not a test (pytest does not collect it): where one training step's time goes, by
operator, under torch.profiler. The step is bench.py's (train.py's): the setup train.py would
choose for the config file's run (dtype, compile, attention, optimizer), on random tokens.

    python tests/benchmarks/profile_step.py                                       # the GPU recipe's model
    python tests/benchmarks/profile_step.py config/train_shakespeare_char_cpu.py  # the CPU recipe
    python tests/benchmarks/profile_step.py config/train_shakespeare_char_cpu.py --steps=5 --rows=30

Prints the operators by their own time, grouped into what docs/speed.md tabulates (matmuls,
attention, elementwise, casts and copies, optimizer, the rest), then torch.profiler's table.
"""

import argparse
import os
import sys
import time

PROJECT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

# operator -> group, by torch.profiler's operator names
GROUPS = [
    ('matmuls of the linear layers', {'aten::mm', 'aten::addmm'}),
    ("batched matmuls (attention; Muon's orthogonalisation)", {'aten::bmm', 'aten::baddbmm',
                                                               'aten::_scaled_dot_product_flash_attention_for_cpu',
                                                               'aten::_scaled_dot_product_flash_attention_for_cpu_backward'}),
    ('softmax', {'aten::_softmax', 'aten::_softmax_backward_data'}),
    ('dropout masks and products', {'aten::ge', 'aten::lt', 'aten::mul', 'aten::mul_', 'aten::masked_fill',
                                    'aten::masked_fill_', 'aten::where', 'aten::bernoulli_'}),
    ('casts and copies', {'aten::copy_', 'aten::_to_copy', 'aten::cat', 'aten::clone'}),
    ('GELU', {'aten::gelu', 'aten::gelu_backward'}),
    ('layer norm', {'aten::native_layer_norm', 'aten::native_layer_norm_backward'}),
    ('residual adds and gradient sums', {'aten::add', 'aten::add_'}),
    ('optimizer', {'aten::_fused_adamw_', 'aten::lerp', 'aten::lerp_', 'aten::linalg_vector_norm', 'aten::div',
                   'aten::div_', 'aten::_foreach_lerp_', 'aten::_foreach_lerp', 'aten::_foreach_mul_',
                   'aten::_foreach_add_', 'aten::_foreach_norm', 'aten::stack'}),
]
REST = 'the rest (Python, autograd, small operators)'


def group_of(name):
    for group, names in GROUPS:
        if name in names:
            return group
    return REST


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split('\n\n')[1])
    ap.add_argument('config', nargs='?', default='config/train_shakespeare_char.py')
    ap.add_argument('--steps', type=int, default=2, help='profiled steps (after two untimed ones)')
    ap.add_argument('--rows', type=int, default=25, help="rows of torch.profiler's table")
    args = ap.parse_args(argv)
    sys.path.insert(0, PROJECT)
    os.chdir(PROJECT)
    import torch
    from torch.profiler import ProfilerActivity, profile

    import bench
    c = bench.parse_settings([args.config])
    dev = 'cpu'
    setup = bench.chosen_setup(c, dev, 'cpu')
    step = bench.TrainStep(c, dev, setup)
    for _ in range(2):
        step.step()
    t0 = time.perf_counter()
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        for _ in range(args.steps):
            step.step()
    wall = (time.perf_counter() - t0) / args.steps
    events = prof.key_averages()
    totals = {}
    for e in events:
        g = group_of(e.key)
        if g != REST:
            totals[g] = totals.get(g, 0.0) + e.self_cpu_time_total / 1e6 / args.steps
    totals[REST] = max(0.0, wall - sum(totals.values()))
    with torch.device('meta'):
        flops = bench.build_model(c, 'meta').estimate_mfu(c.batch_size * c.gradient_accumulation_steps, 1.0, 1.0)
    print(f"\n{step.name}: {wall * 1000:.0f} ms per step under the profiler, {flops / wall / 1e9:,.0f} GFLOP/s "
          f"by nanoGPT's count ({flops / 1e9:,.0f} GFLOP a step)")
    print("| part | ms per step | share |\n| --- | --- | --- |")
    for g, s in sorted(totals.items(), key=lambda kv: -kv[1]):
        print(f"| {g} | {s * 1000:,.0f} | {s / wall * 100:.0f}% |")
    print(events.table(sort_by='self_cpu_time_total', row_limit=args.rows))


if __name__ == '__main__':
    main()
