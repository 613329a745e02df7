"""``run.watch``: gradient and parameter histograms of a real PyTorch model, every ``log_freq``
calls, equal to numpy's histograms of the same tensors; ``unwatch`` stops them."""

import pytest

torch = pytest.importorskip("torch")
np = pytest.importorskip("numpy")

import trackside
from trackside._run import UsageError
from trackside.hooks.torch import histogram


def mlp():
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Linear(8, 16), torch.nn.ReLU(), torch.nn.Linear(16, 1))


def train(run, model, steps):
    """Plain training; returns {step: {name: (grad, param before the update)}} as numpy arrays."""
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    x, y = torch.randn(32, 8), torch.randn(32, 1)
    seen = {}
    for step in range(steps):
        params = {n: p.detach().clone().numpy() for n, p in model.named_parameters()}
        opt.zero_grad()
        loss = torch.nn.functional.mse_loss(model(x), y)
        loss.backward()
        seen[step] = {n: (p.grad.numpy().copy(), params[n]) for n, p in model.named_parameters()}
        opt.step()
        run.log({"loss": loss.item()})
    return seen


def check_equal(hist, array):
    counts, edges = np.histogram(array, bins=64)
    assert hist.histogram == counts.tolist()
    assert hist.bins == edges.tolist()


def test_watch_logs_histograms_equal_to_numpy_every_log_freq_steps(ts):
    run = trackside.init(project="p")
    model = mlp()
    run.watch(model, log="all", log_freq=3)
    seen = train(run, model, 7)
    run.finish()
    r = trackside.Api(ts.root).run(run.id)
    rows = {row["_step"]: row for row in r.history(objects=True)}
    assert sorted(rows) == list(range(7))
    names = [n for n, _ in model.named_parameters()]
    for step, row in rows.items():
        logged = sorted(k for k in row if k.startswith(("gradients/", "parameters/")))
        if step % 3:
            assert logged == []
            continue
        assert logged == sorted([f"gradients/{n}" for n in names] + [f"parameters/{n}" for n in names])
        for n in names:
            grad, param = seen[step][n]
            check_equal(row[f"gradients/{n}"], grad)
            check_equal(row[f"parameters/{n}"], param)


def test_unwatch_stops_logging_and_gradients_only_is_the_default(ts):
    run = trackside.init(project="p")
    model = mlp()
    run.watch(model, log_freq=1)
    train(run, model, 2)
    run.unwatch(model)
    train(run, model, 2)
    run.finish()
    rows = trackside.Api(ts.root).run(run.id).history()
    assert [sorted(k.split("/")[0] for k in row if "/" in k) for row in rows] == [["gradients"] * 4] * 2 + [[], []]


def test_histogram_of_special_tensors_matches_numpy():
    for t in (
        torch.full((10,), 3.0),
        torch.arange(100, dtype=torch.float16),
        torch.tensor([1.0, float("nan"), 2.0]),
        torch.tensor([float("-inf"), 0.5, float("inf"), -3.0, 7.25]),
        torch.randint(0, 5, (50,)),
    ):
        finite = t.float().numpy()
        finite = finite[np.isfinite(finite)]
        counts, edges = histogram(t)
        want_counts, want_edges = np.histogram(finite, bins=64)
        assert counts == want_counts.tolist() and edges == want_edges.tolist(), t
    assert histogram(torch.tensor([float("inf")])) is None
    assert histogram(torch.tensor([float("nan"), float("-inf")])) is None
    assert histogram(torch.zeros(0)) is None


def test_watch_rejects_bad_arguments(ts):
    run = trackside.init(project="p")
    model = mlp()
    with pytest.raises(UsageError, match="log='weights'"):
        run.watch(model, log="weights")
    with pytest.raises(UsageError, match="log_freq=0"):
        run.watch(model, log_freq=0)
    with pytest.raises(UsageError, match="not list"):
        run.watch([[model]])
    run.watch(model)
    with pytest.raises(UsageError, match="watched already"):
        run.watch(model)
    run.finish()
    assert not model._forward_pre_hooks  # finish() removed the hooks


def test_a_disabled_run_watches_nothing():
    run = trackside.init(mode="disabled")
    model = mlp()
    run.watch(model, log="all", log_freq=1)
    assert not model._forward_pre_hooks


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device: the histogram on the GPU")
def test_histogram_on_a_cuda_tensor_matches_numpy():
    t = torch.randn(10_000, device="cuda")
    t[::97] = float("nan")
    counts, edges = histogram(t)
    finite = t.cpu().numpy()
    want_counts, want_edges = np.histogram(finite[np.isfinite(finite)], bins=64)
    assert counts == want_counts.tolist() and edges == want_edges.tolist()
