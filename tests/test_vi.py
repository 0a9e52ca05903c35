import pytest
import torch
from torch import nn

import dplib

from conftest import trained_like


def test_learn_importance_restores_weights_modes_and_requires_grad(tiny_loader):
    model = trained_like(dplib.models.build("lenet5_bn", seed=0))
    model.train()
    model.fc1.weight.requires_grad_(False)  # a user's own freezing must survive
    before = {k: v.clone() for k, v in model.state_dict().items()}
    gated = dplib.attach_gates(model)
    importance = dplib.learn_importance(gated, tiny_loader, epochs=1, device="cpu")
    after = model.state_dict()
    for key, value in before.items():
        assert torch.equal(value, after[key]), f"{key} changed"
    assert model.training and all(m.training for m in model.modules())
    assert model.fc1.weight.requires_grad is False
    assert all(p.requires_grad for n, p in model.named_parameters() if n != "fc1.weight")
    assert importance.names == ["conv1", "conv2", "fc1", "fc2"]
    assert len(importance.history["loss"]) == 4 * len(tiny_loader)  # a pass per layer
    assert importance.history["seconds"] > 0
    # the posterior moved away from uniform
    assert importance.mean("conv1").std() > 0


def test_only_theta_moves_and_batchnorm_uses_running_statistics(tiny_loader):
    model = trained_like(dplib.models.build("lenet5_bn", seed=0))
    model.train()
    running = model.bn1.running_mean.clone()
    gated = dplib.attach_gates(model)
    thetas = {name: gate.theta.detach().clone() for name, gate in gated.named_gates()}
    dplib.learn_importance(gated, tiny_loader, epochs=0.5, device="cpu")
    assert torch.equal(model.bn1.running_mean, running)
    for name, gate in gated.named_gates():
        assert not torch.equal(gate.theta.detach(), thetas[name]), name


class Recorder(nn.Module):
    """A two-unit network whose logits show which gate sample each image received."""

    def __init__(self):
        super().__init__()
        self.hidden = nn.Linear(2, 2, bias=False)
        self.out = nn.Linear(2, 2, bias=False)
        with torch.no_grad():
            self.hidden.weight.copy_(torch.eye(2))
            self.out.weight.copy_(torch.eye(2))

    def forward(self, x):
        return self.out(self.hidden(x))


def test_sampling_averages_the_per_sample_cross_entropy():
    from torch.nn import functional as F

    from dplib.vi import elbo_loss

    model = Recorder()
    gated = dplib.attach_gates(model)
    images = torch.tensor([[1.0, 2.0], [3.0, -1.0], [0.5, 0.5]])
    labels = torch.tensor([0, 1, 1])
    torch.manual_seed(3)
    settings = dplib.DirichletSettings(samples=4, estimator="sample", alpha0=1.0, kl_weight=0.0)
    _, cross_entropy, _ = elbo_loss(gated, images, labels, settings, kl_normalizer=10)
    factors = gated.gate("hidden").current_factor()
    assert factors.shape == (4, 2)
    # each image with its own logits under each sample: mean of the 4 x 3 cross-entropies
    per_sample = [F.cross_entropy(images * factor, labels) for factor in factors]
    expected = torch.stack(per_sample).mean()
    torch.testing.assert_close(cross_entropy, expected)
    # ... which is not the cross-entropy of averaged logits
    averaged = F.cross_entropy(torch.stack([images * f for f in factors]).mean(0), labels)
    assert not torch.isclose(cross_entropy, averaged)


def test_kl_enters_divided_by_dataset_size():
    from dplib.vi import elbo_loss

    gated = dplib.attach_gates(Recorder(), phi_init=5.0)
    images, labels = torch.randn(4, 2), torch.tensor([0, 1, 0, 1])
    settings = dplib.DirichletSettings(estimator="point", alpha0=0.3, kl_weight=2.0)
    loss, cross_entropy, kl = elbo_loss(gated, images, labels, settings, kl_normalizer=50)
    assert kl > 0
    torch.testing.assert_close(loss, cross_entropy + 2.0 * kl / 50)


def test_point_estimator_and_saving(tmp_path, tiny_loader):
    gated = dplib.attach_gates(dplib.models.build("lenet300", seed=0))
    importance = dplib.learn_importance(
        gated, tiny_loader, epochs=1, estimator="point", device="cpu"
    )
    path = importance.save(tmp_path / "importance.pt")
    loaded = dplib.Importance.load(path)
    assert loaded.names == ["fc1", "fc2"]
    torch.testing.assert_close(loaded.mean("fc1"), importance.mean("fc1"))
    torch.testing.assert_close(loaded.std("fc2"), importance.std("fc2"))
    assert loaded.config["estimator"] == "point"


def test_same_seed_same_importance(tiny_loader):
    results = []
    for _ in range(2):
        gated = dplib.attach_gates(dplib.models.build("lenet300", seed=0))
        loader = dplib.data.make_loader(tiny_loader.dataset, 64, shuffle=True, seed=5)
        results.append(dplib.learn_importance(gated, loader, device="cpu", seed=7))
    torch.testing.assert_close(results[0].mean("fc1"), results[1].mean("fc1"), rtol=0, atol=0)


def test_learn_importance_rejects_bad_arguments(tiny_loader):
    gated = dplib.attach_gates(dplib.models.build("lenet300"))
    with pytest.raises(ValueError, match="estimator"):
        dplib.learn_importance(gated, tiny_loader, estimator="mcmc")
    with pytest.raises(ValueError, match="samples"):
        dplib.learn_importance(gated, tiny_loader, samples=0)
    with pytest.raises(TypeError, match="attach_gates"):
        dplib.learn_importance(dplib.models.build("lenet300"), tiny_loader)
    with pytest.raises(TypeError, match="no knob 'epoch'.*epochs"):
        dplib.learn_importance(gated, tiny_loader, epoch=1)


def test_batchnorm_train_mode_is_restored_with_its_statistics(tiny_loader):
    model = trained_like(dplib.models.build("lenet5_bn", seed=0))
    before = {k: v.clone() for k, v in model.state_dict().items()}
    gated = dplib.attach_gates(model, position="before_bn")
    importance = dplib.learn_importance(
        gated, tiny_loader, epochs=0.5, batchnorm="train", device="cpu"
    )
    for key, value in model.state_dict().items():
        assert torch.equal(value, before[key]), key
    assert importance.config["batchnorm"] == "train" and not model.training


def test_joint_training_moves_the_weights(tiny_loader):
    model = dplib.models.build("lenet300", seed=0)
    weight = model.fc1.weight.detach().clone()
    gated = dplib.attach_gates(model)
    dplib.learn_importance(gated, tiny_loader, epochs=0.5, weights_lr=0.01, device="cpu")
    assert not torch.equal(model.fc1.weight, weight)
    assert model.fc1.weight.requires_grad and model.fc1.weight.grad is None


def test_ranking_statistics():
    phi = {"fc1": torch.tensor([10.0, 1.0, 3.0, 3.0])}
    importance = dplib.Importance(scores={"fc1": phi["fc1"] / 17}, concentration=phi)
    torch.testing.assert_close(importance.ranked_by("mean").scores["fc1"], phi["fc1"] / 17)
    risky = importance.ranked_by("mean-2std").scores["fc1"]
    torch.testing.assert_close(risky, importance.mean("fc1") - 2 * importance.std("fc1"))
    quantile = importance.ranked_by("quantile:0.1").scores["fc1"]
    from scipy.stats import beta

    expected = beta.ppf(0.1, phi["fc1"].numpy(), (17 - phi["fc1"]).numpy())
    torch.testing.assert_close(quantile, torch.tensor(expected, dtype=torch.float32))
    assert quantile[0] < importance.mean("fc1")[0]
    with pytest.raises(ValueError, match="unknown statistic"):
        importance.ranked_by("median")


def test_dirichlet_settings_hold_each_default_once(tiny_loader):
    settings = dplib.DirichletSettings()
    gated = dplib.attach_gates(dplib.models.build("lenet300", seed=0))
    assert next(g for _, g in gated.named_gates()).phi_init == settings.phi_init
    specified = dplib.DirichletSettings.as_specified()
    assert (specified.phi_init, specified.alpha0, specified.kl_weight) == (1.0, 1.0, 1.0)
    assert specified.kl_divided_by_n and specified.replace(lr=0.3).lr == 0.3
    with pytest.raises(TypeError, match="DirichletSettings has no knob 'alpha'"):
        settings.replace(alpha=1.0)
    with pytest.raises(ValueError, match="unknown estimator 'mcmc'"):
        dplib.DirichletSettings(estimator="mcmc")
    with pytest.raises(ValueError, match="alpha0 must be positive"):
        dplib.DirichletSettings(alpha0=0)
    with pytest.raises(ValueError, match="kl_weight and weights_lr must be >= 0"):
        dplib.DirichletSettings(weights_lr=-0.1)
    # settings whose gate knobs differ from the attached gates are refused before any step
    with pytest.raises(ValueError, match="attach them with dplib.attach_gates"):
        dplib.learn_importance(gated, tiny_loader, settings=specified)
    with pytest.raises(ValueError, match="knobs of the gates"):
        dplib.learn_importance(gated, tiny_loader, phi_init=3.0)
    learned = dplib.learn_importance(
        gated, tiny_loader, settings.replace(epochs=0.25), device="cpu"
    )
    assert learned.config["epochs"] == 0.25 and learned.config["alpha0"] == settings.alpha0


def test_layerwise_learns_one_gate_at_a_time_with_the_others_off(tiny_loader):
    model = dplib.models.build("lenet300", seed=0)
    gated = dplib.attach_gates(model)
    seen = []

    def spy(module, _inputs, _output):  # which gates scale the batch while fc1's is learnt
        seen.append({name: gate.mode for name, gate in gated.named_gates()})

    handle = model.fc2.register_forward_hook(spy)
    importance = dplib.learn_importance(
        gated, tiny_loader, epochs=0.5, layerwise=True, estimator="sample", device="cpu"
    )
    handle.remove()
    steps = 2  # half of the 4 batches, per layer
    seen = seen[-2 * steps :]  # the learning steps (a check of the data runs first)
    assert len(importance.history["loss"]) == 2 * steps
    assert importance.history["epochs"] == 1.0  # two layers of half an epoch
    assert [s["fc1"] for s in seen[:steps]] == ["sample"] * steps
    assert [s["fc2"] for s in seen[:steps]] == ["identity"] * steps
    assert [s["fc2"] for s in seen[steps:]] == ["sample"] * steps
    assert set(importance.history["spread"]) == {"fc1", "fc2"}
    assert all(gate.mode == "mean" for _, gate in gated.named_gates())


def test_no_kl_leaves_the_loss_the_data_term():
    from dplib.vi import elbo_loss

    gated = dplib.attach_gates(Recorder(), phi_init=5.0)
    images, labels = torch.randn(4, 2), torch.tensor([0, 1, 0, 1])
    settings = dplib.DirichletSettings(estimator="point", alpha0=0.3, kl_weight=0.0)
    loss, cross_entropy, kl = elbo_loss(gated, images, labels, settings, kl_normalizer=1)
    assert kl > 0 and not kl.requires_grad  # recorded, not learnt from
    torch.testing.assert_close(loss, cross_entropy)


def test_the_authors_recipe_is_one_named_configuration():
    authors = dplib.DirichletSettings.authors()
    assert authors.scale == "none" and authors.estimator == "point" and authors.layerwise
    assert authors.phi_init == pytest.approx(0.3133, abs=1e-4)  # softplus(-1)
    assert (authors.lr, authors.alpha0, authors.kl_weight) == (1e-3, 2.0, 0.0)
    assert authors.batchnorm == "train"


def test_a_posterior_that_stays_flat_is_reported_and_warned_about(tiny_loader):
    gated = dplib.attach_gates(dplib.models.build("lenet300", seed=0), phi_init=1000.0)
    with pytest.warns(UserWarning, match=r"fc1 \(0\.0.*raise lr, lower phi_init"):
        importance = dplib.learn_importance(gated, tiny_loader, epochs=0.25, lr=0.01)
    assert max(importance.history["spread"].values()) < dplib.vi.FLAT_SPREAD
    assert set(importance.history["late_change"]) == {"fc1", "fc2"}


def test_movement_measures_spread_and_late_change():
    from dplib.vi import movement

    uniform = torch.full((4,), 0.25)
    moved = torch.tensor([0.4, 0.3, 0.2, 0.1])
    snapshots = [{"fc": uniform}, {"fc": uniform}, {"fc": moved.flip(0)}, {"fc": moved}]
    result = movement(snapshots, {"fc": moved})
    assert result["spread"]["fc"] == pytest.approx(float((4 * moved).std()))
    assert result["late_change"]["fc"] == pytest.approx(0.0)  # the ranking at 3/4 is final
    reversed_late = movement(snapshots[:3], {"fc": moved})
    assert reversed_late["late_change"]["fc"] == pytest.approx(2.0)  # tau -1
