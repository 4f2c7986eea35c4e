"""Host side: per-worker gradients equal an independent autograd loop; data; PS."""

import pytest
import torch
from conftest import requires_cuda
from torch import nn

from host import data as datasets
from host import models
from host.ps import ParameterServer
from host.worker import EpochSampler, WorkerPool
from innet import aggregators


@pytest.fixture(scope="module")
def digits():
    return datasets.load("digits")


def reference_gradients(model, x, y):
    """One autograd backward per worker, nothing batched."""
    rows = []
    for i in range(x.shape[0]):
        model.zero_grad()
        nn.functional.cross_entropy(model(x[i]), y[i]).backward()
        rows.append(torch.cat([p.grad.reshape(-1) for p in model.parameters()]))
    return torch.stack(rows)


@pytest.mark.parametrize("name", ["mlp", "cnn"])
def test_vmap_gradients_match_per_worker_autograd(name, digits):
    torch.manual_seed(0)
    model = models.build(name, digits.image_shape, 10)
    pool = WorkerPool(model, digits, p=5, batch=8, seed=3)
    x, y = pool.minibatches()
    pool.sampler = EpochSampler(len(digits.y_train), 3)  # replay the same batches
    G, losses = pool.gradients()
    assert G.shape == (5, models.num_parameters(model))
    torch.testing.assert_close(G, reference_gradients(model, x, y), rtol=1e-5, atol=1e-6)


def test_batchnorm_models_use_the_loop_and_match():
    model = models.ResNet18(channels=1, num_classes=10)
    small = datasets.Dataset(
        "tiny", torch.rand(16, 1, 8, 8), torch.randint(0, 10, (16,)),
        torch.rand(4, 1, 8, 8), torch.randint(0, 10, (4,)), 10,
    )
    pool = WorkerPool(model, small, p=2, batch=4, seed=0)
    x, y = pool.minibatches()
    pool.sampler = EpochSampler(len(small.y_train), 0)  # replay the same batches
    G, losses = pool.gradients()
    assert G.shape == (2, models.num_parameters(model))
    # per-worker batch statistics: each row is that worker's own autograd gradient
    # (a batched pass over both workers' images would mix their statistics)
    torch.testing.assert_close(G, reference_gradients(model, x, y), rtol=1e-4, atol=1e-5)
    mixed = model(x.reshape(-1, *x.shape[2:]))  # one batch-norm over all 8 images
    assert not torch.allclose(mixed[:4], model(x[0]))


def test_resnet18_has_the_cifar_size():
    assert 11.1e6 < models.num_parameters(models.ResNet18()) < 11.3e6


def test_minibatches_are_disjoint_within_a_step(digits):
    sampler = EpochSampler(len(digits.y_train), seed=0)
    for _ in range(5):
        idx = sampler.take(480)
        assert len(set(idx.tolist())) == 480


def test_digits_split(digits):
    assert digits.x_train.shape == (1437, 1, 8, 8) and digits.x_test.shape == (360, 1, 8, 8)
    assert 0.0 <= float(digits.x_train.min()) and float(digits.x_train.max()) <= 1.0


def test_missing_datasets_give_clear_errors(tmp_path):
    with pytest.raises(datasets.DatasetError, match="unknown dataset"):
        datasets.load("imagenet")
    with pytest.raises(datasets.DatasetError, match="root"):
        datasets.load("mnist")
    with pytest.raises(datasets.DatasetError, match="torchvision|--download"):
        datasets.load("mnist", root=str(tmp_path))


def test_mnist1d_is_generated_offline_cached_and_shaped(tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    first = datasets.load("mnist1d")
    assert first.x_train.shape == (4000, 1, 1, 40) and first.x_test.shape == (1000, 1, 1, 40)
    assert set(first.y_train.tolist()) == set(range(10))
    cached = list((tmp_path / "innet").glob("mnist1d-*.npz"))
    assert len(cached) == 1
    import mnist1d.data

    def never(*a, **k):  # the second load reads the cache; nothing is regenerated
        raise AssertionError("regenerated")

    monkeypatch.setattr(mnist1d.data, "make_dataset", never)
    again = datasets.load("mnist1d")
    assert torch.equal(first.x_train, again.x_train) and torch.equal(first.y_test, again.y_test)
    cached[0].write_bytes(b"garbage")  # a damaged cache is regenerated, not trusted
    monkeypatch.undo()
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    assert torch.equal(datasets.load("mnist1d").x_train, first.x_train)


def test_ps_replaces_nonfinite_rows_and_counts_them():
    model = nn.Linear(3, 1)
    ps = ParameterServer(model, aggregators.get("median"), lr=0.1)
    n = sum(p.numel() for p in model.parameters())
    G = torch.randn(5, n)
    G[2, 0] = float("nan")
    before = [p.detach().clone() for p in model.parameters()]
    ps.step(G)
    assert ps.nonfinite_rows == 1
    assert all(torch.isfinite(p).all() for p in model.parameters())
    assert any(not torch.equal(a, b) for a, b in zip(before, model.parameters()))
    strict = ParameterServer(model, aggregators.get("median"), lr=0.1, nonfinite="error")
    with pytest.raises(aggregators.NonFiniteGradientError):
        strict.step(G)


def test_ps_sgd_step_matches_torch_sgd():
    torch.manual_seed(0)
    a, b = nn.Linear(4, 2), nn.Linear(4, 2)
    b.load_state_dict(a.state_dict())
    ps = ParameterServer(a, aggregators.get("mean"), lr=0.05, momentum=0.9, weight_decay=1e-3)
    opt = torch.optim.SGD(b.parameters(), lr=0.05, momentum=0.9, weight_decay=1e-3)
    for _ in range(3):
        G = torch.randn(3, 10)
        ps.step(G)
        g = G.mean(0)
        b.weight.grad, b.bias.grad = g[:8].view(2, 4).clone(), g[8:].clone()
        opt.step()
    for p, q in zip(a.parameters(), b.parameters()):
        torch.testing.assert_close(p, q)


@requires_cuda
@pytest.mark.cuda
def test_aggregators_on_cuda_match_cpu():
    G = torch.randn(15, 4096, dtype=torch.float64)
    for name in aggregators.NAMES:
        rule_cpu = aggregators.get(name, f=3)
        rule_gpu = aggregators.get(name, f=3)
        torch.testing.assert_close(rule_gpu(G.cuda()).cpu(), rule_cpu(G), rtol=1e-6, atol=1e-8)


@requires_cuda
@pytest.mark.cuda
def test_worker_pool_on_cuda_takes_cpu_data_and_matches_cpu(digits):
    """A pool built around a CUDA model with the CPU dataset moves the data itself
    (capture_packets and the quantisation capture build it that way), and its
    gradients equal the CPU pool's."""
    torch.manual_seed(0)
    model = models.build("mlp", digits.image_shape, 10)
    G_cpu, _ = WorkerPool(model, digits, p=4, batch=8, seed=1).gradients()
    G_gpu, _ = WorkerPool(model.cuda(), digits, p=4, batch=8, seed=1).gradients()
    assert G_gpu.is_cuda
    torch.testing.assert_close(G_gpu.cpu(), G_cpu, rtol=1e-4, atol=1e-6)
