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


def test_the_primers_first_run_is_the_checks_own_and_is_kept(tmp_path, monkeypatch):
    """00_primer runs the check's first case step by step, then hands it to synthetic_check,
    which stores it instead of running it again: the two runs must be the same run."""
    from dplib.experiments import synthetic

    monkeypatch.setenv("DPLIB_RUNS", str(tmp_path))
    steps, seed = 60, 0
    teacher, s_star, dataset = make_task(8, seed=seed)  # as the primer's cell does
    loader = dplib.data.make_loader(dataset, 256, shuffle=True, seed=seed)
    settings = dplib.DirichletSettings.as_specified().replace(epochs=steps / len(loader), lr=0.1)
    gated = dplib.attach_gates(teacher, settings=settings)
    learned = dplib.learn_importance(gated, loader, settings, device="cpu", seed=seed)
    gated.remove()
    first = synthetic.summary(8, "sample", s_star, learned, steps, seed)
    assert torch.equal(first["mean"], synthetic.recover(8, steps=steps, seed=seed)["mean"])

    monkeypatch.setattr(synthetic, "recover", lambda *args, **kwargs: pytest.fail("rerun"))
    (kept,) = synthetic.synthetic_check(
        "smoke", (8,), ("sample",), steps=steps, seed=seed, done=[first]
    )
    assert torch.equal(kept["mean"], first["mean"])
    assert [r["pearson"] for r in synthetic.load_results("smoke")] == [first["pearson"]]
    with pytest.raises(ValueError, match="took 60 steps with seed 0"):
        synthetic.synthetic_check("smoke", (8,), steps=61, seed=seed, done=[first])
    # the method's code changed: the stored run is neither reused nor drawn
    monkeypatch.setattr(synthetic, "code_version", lambda *modules: "changed")
    assert synthetic.load_results("smoke") == []
    with pytest.raises(pytest.fail.Exception, match="rerun"):
        synthetic.synthetic_check("smoke", (8,), ("sample",), steps=steps, seed=seed)
