"""The default settings on a planted problem, where the answer is known: the synthetic teacher of
``dplib.experiments.synthetic`` scales its hidden units by a sparse s* ~ Dir(0.01), so a few
units carry almost all of its mass. The network gated is the teacher itself (s* folded into its
first layer), at its optimum as a pretrained network is; importance learnt on its labels must
move away from uniform and put the planted units first."""

import pytest
import torch

import dplib
from dplib.experiments.synthetic import make_task

HIDDEN = 50


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_the_defaults_move_the_posterior_and_rank_the_planted_units_first(seed):
    net, s_star, dataset = make_task(HIDDEN, seed=seed)
    with torch.no_grad():  # relu((H s*) * (W x + b)) = relu((H s* W) x + H s* b), as s* >= 0
        net.fc1.weight.mul_(HIDDEN * s_star[:, None])
        net.fc1.bias.mul_(HIDDEN * s_star)
    loader = dplib.data.make_loader(dataset, 128, shuffle=True, seed=seed)
    gated = dplib.attach_gates(net)
    # five passes of the 5,000 inputs: 200 steps, fewer than one epoch of Fashion-MNIST
    importance = dplib.learn_importance(gated, loader, epochs=5, device="cpu", seed=seed)
    gated.remove()
    planted = set((s_star > 0.2).nonzero().flatten().tolist())  # most of the teacher's mass
    assert len(planted) >= 2
    ranked_first = set(importance.ranking("fc1")[: len(planted)].tolist())
    assert ranked_first == planted, f"planted {sorted(planted)}, ranked first {ranked_first}"
    spread = importance.history["spread"]["fc1"]
    assert spread >= dplib.vi.FLAT_SPREAD, f"the posterior came back flat (spread {spread:.3f})"
