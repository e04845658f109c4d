"""
A benchmark, not a test (pytest does not collect it): the CPU recipe's training step with
StackedMuon (nanogpt/optim.py, what train.py builds) against the same step with torch.optim.Muon,
two models from one seed in one process, their steps interleaved so machine load hits both alike.

    python tests/benchmarks/bench_muon.py                  # 12 steps each, medians
    python tests/benchmarks/bench_muon.py --steps=30
"""

import argparse
import os
import sys

PROJECT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split('\n\n')[1])
    ap.add_argument('--steps', type=int, default=12)
    args = ap.parse_args(argv)
    sys.path.insert(0, PROJECT)
    os.chdir(PROJECT)
    import torch

    import bench
    c = bench.parse_settings(['config/train_shakespeare_char_cpu.py'])
    setup = bench.chosen_setup(c, 'cpu', 'cpu')._replace(optimizer='muon')
    stacked, plain = bench.TrainStep(c, 'cpu', setup), bench.TrainStep(c, 'cpu', setup)
    mine = plain.optimizer.muon
    plain.optimizer.muon = torch.optim.Muon(mine.param_groups[0]['params'], lr=mine.defaults['lr'],
                                            momentum=mine.defaults['momentum'],
                                            weight_decay=mine.defaults['weight_decay'])
    plain.optimizer.optimizers = (plain.optimizer.adamw, plain.optimizer.muon)
    for st in (stacked, plain):
        st.step()
        st.step()
    times = {'StackedMuon': [], 'torch.optim.Muon': []}
    for _ in range(args.steps):
        times['StackedMuon'].append(stacked.step())
        times['torch.optim.Muon'].append(plain.step())
    for name, t in times.items():
        print(f"{stacked.name.replace('Muon', name)}: {sorted(t)[len(t) // 2] * 1000:.1f} ms per step (median of {len(t)})")


if __name__ == '__main__':
    main()
