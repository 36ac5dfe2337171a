"""Exact Integrated Gradients (`quadrature="exact"`, the default for LR, MLP, DiffuseLR and DiffuseMLP): completeness to
float64 rounding on models with sharp weights, agreement with an independent float64 reference (Captum's trapezoid rule
at 20 000 steps) and with DeepLift where the two coincide, the fixed rules unchanged bit for bit, the recorded
quadrature, and the errors for what has no exact rule."""
import numpy as np
import pytest
import scipy.sparse as sp
import torch
from captum.attr import IntegratedGradients
from torch import nn

import igtcga.attribution as A
from igtcga.attribution import (Attributions, attribute, explain, gauss_legendre, ig_with_completeness,
                                integrated_gradients, linear_first)
from igtcga.models import MLP, build_model

G, C, N = 30, 5, 8
ARCHS = ["LR", "MLP", "DiffuseLR", "DiffuseMLP"]


def operator(seed, n_genes=G):
    "A sparse symmetric non-negative operator with a unit diagonal, like the normalised correlation graph."
    M = sp.random(n_genes, n_genes, density=0.15, random_state=seed)
    return (M + M.T + sp.identity(n_genes)).tocsr() * 0.4


def sharp_model(name, factor=20.0, seed=0, n_genes=G, n_classes=C, dtype=torch.float64):
    """`build_model(name)` with every Linear weight multiplied by `factor`, and for the MLPs BatchNorm running statistics
    and affine parameters far from (0, 1) (scaled like the sharpened hidden layer), in evaluation mode."""
    torch.manual_seed(seed)
    kw = dict(n_genes=n_genes) if name in ("LR", "MLP") else dict(diffusion=operator(seed, n_genes))
    model = build_model(name, n_classes=n_classes, **kw)
    g = torch.Generator().manual_seed(seed + 100)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.Linear): m.weight.mul_(factor)
        if hasattr(model, "bn"):
            H, s = model.n_hidden, 0.6 * factor  # about the spread of the sharpened hidden pre-activations
            model.bn.running_mean.copy_(0.5 * s * torch.randn(H, generator=g))
            model.bn.running_var.copy_((0.5 + 1.5 * torch.rand(H, generator=g)) * s * s)
            model.bn.weight.copy_(0.5 + torch.rand(H, generator=g))
            model.bn.bias.copy_(0.3 * torch.randn(H, generator=g))
    return model.to(dtype).eval()


def float64_copy(model, name):
    "The same network in float64, rebuilt from its constructor arguments and state."
    copy = build_model(name, **model.init_args())
    copy.load_state_dict(model.state_dict())
    return copy.double().eval()


def explained(model, output):
    return (lambda t: torch.softmax(model(t), -1)) if output == "softmax" else model


def gap(model, X, b, target, output):
    "f(x) − f(b) computed by the model itself, (n,) for one target per sample or (n, C) for all classes."
    with torch.no_grad():
        f = explained(model, output)
        d = f(X) - f(b if b.ndim == 2 else b[None])
    return d if isinstance(target, str) else d[torch.arange(len(X)), target]


@pytest.fixture(scope="module")
def data():
    g = torch.Generator().manual_seed(7)
    X = torch.randn(N, G, generator=g, dtype=torch.float64)
    return dict(X=X, y=torch.randint(0, C, (N,), generator=g),
                baselines={"zero": torch.zeros(G, dtype=torch.float64), "vector": torch.randn(G, generator=g, dtype=torch.float64),
                           "rows": torch.randn(N, G, generator=g, dtype=torch.float64)})


def assert_complete(delta, gap_):
    "|Σ IG − (f(x) − f(b))| ≤ 1e-6 |f(x) − f(b)|, or ≤ 1e-9 where the gap is about 0, on every sample (and class)."
    bound = torch.clamp(1e-6 * gap_.abs(), min=1e-9)
    worst = float((delta.abs() / bound).max())
    assert worst <= 1, f"completeness error up to {worst:.2g} × the bound"


# ---------------------------------------------------------------- completeness on sharp models

@pytest.mark.parametrize("name", ARCHS)
@pytest.mark.parametrize("output", ["softmax", "logit"])
@pytest.mark.parametrize("target", ["per_sample", "all"])
@pytest.mark.parametrize("baseline", ["zero", "vector", "rows"])
def test_exact_completeness_on_sharp_models(name, output, target, baseline, data):
    model = sharp_model(name)
    X, b = data["X"], data["baselines"][baseline]
    t = data["y"] if target == "per_sample" else "all"
    attr, delta = integrated_gradients(model, X, t, b, output=output, quadrature="exact", return_convergence_delta=True, quiet=True)
    assert attr.shape == ((N, G) if target == "per_sample" else (N, C, G)) and attr.dtype == torch.float64
    g = gap(model, X, b, t, output)
    torch.testing.assert_close(attr.sum(-1) - g, delta, rtol=0, atol=1e-12)  # the delta is what it says
    assert_complete(delta, g)


@pytest.mark.parametrize("name", ["MLP", "DiffuseMLP"])
def test_the_sharp_models_defeat_3000_gauss_legendre_nodes(name, data):
    "The models above are hard: with 3000 Gauss–Legendre nodes the completeness bound fails, so the test above can fail."
    model = sharp_model(name)
    X, y = data["X"], data["y"]
    _, delta = integrated_gradients(model, X, y, 0.0, n_steps=3000, quadrature="gausslegendre", return_convergence_delta=True, quiet=True)
    with pytest.raises(AssertionError, match="completeness error"):
        assert_complete(delta, gap(model, X, torch.zeros(G, dtype=torch.float64), y, "softmax"))


def test_exact_on_nn_sequential_and_all_classes_equal_each_target(data):
    "An nn.Sequential Linear → BatchNorm → ReLU → Linear is exact too; target='all' is every single target at once."
    torch.manual_seed(4)
    model = nn.Sequential(nn.Dropout(0.1), nn.Linear(G, 12), nn.BatchNorm1d(12), nn.ReLU(), nn.Linear(12, C)).double()
    with torch.no_grad():
        model[1].weight.mul_(15); model[4].weight.mul_(15)
        model[2].running_mean.normal_(0, 3); model[2].running_var.uniform_(4, 40)
    model.eval()
    assert linear_first(model).kind == "bn_relu_linear"
    X, b = data["X"], data["baselines"]["rows"]
    every, delta = integrated_gradients(model, X, "all", b, quadrature="exact", return_convergence_delta=True, quiet=True)
    assert_complete(delta, gap(model, X, b, "all", "softmax"))
    scale = float(every.abs().max())
    for k in range(C):  # two formulas (the all-class one sums the softmax Jacobian): equal up to float64 rounding
        torch.testing.assert_close(every[:, k], integrated_gradients(model, X, k, b, quadrature="exact", quiet=True),
                                   rtol=1e-10, atol=1e-13 * scale)


def test_diffusion_models_are_factored_exactly():
    "`linear_first` sees DiffuseLR / DiffuseMLP as LR / MLP on the effective weight W Â: the exact rule applies."
    for name, kind in [("DiffuseLR", "identity"), ("DiffuseMLP", "bn_relu_linear")]:
        model = sharp_model(name)
        lf = linear_first(model)
        assert lf.kind == kind
        dense = torch.as_tensor(operator(0).toarray())
        torch.testing.assert_close(lf.weight, model.first_linear.weight @ dense.T, rtol=1e-6, atol=1e-6)  # float32 operator


# ---------------------------------------------------------------- independent references

@pytest.mark.parametrize("name,output", [(a, "softmax") for a in ARCHS] + [("MLP", "logit"), ("DiffuseMLP", "logit")])
def test_exact_agrees_with_a_fine_trapezoid_rule(name, output):
    """Captum's trapezoid rule on a float64 copy at 20 000 steps, as the independent reference.

    Captum's trapezoid weights are float32(1/n) (halved at the ends) on n nodes linspace(0, 1, n): they add up to
    (n − 1)·float32(1/n) instead of 1, so the reference is divided by that sum (for 20 000 steps the bias is 5e-5).
    What is left is the rule's own error: O(h) across each ReLU kink and O(h²) on the smooth parts, so the change from
    10 000 to 20 000 steps is about the 20 000-step error or larger; the tolerance is twice the largest change. Captum's
    nodes are float32 (off by up to 3e-8 from j/(n − 1)), which moves the sum by up to 3e-8 × the integrand's variation:
    1e-7 of the largest attribution is added for that."""
    g = torch.Generator().manual_seed(2)
    n_genes, n_classes = 12, 4
    X, b = torch.randn(4, n_genes, generator=g), torch.randn(1, n_genes, generator=g)  # float32 values: the same inputs for both
    y = torch.randint(0, n_classes, (4,), generator=g)
    model = sharp_model(name, factor=10.0, n_genes=n_genes, n_classes=n_classes, dtype=torch.float32)
    ref64 = float64_copy(model, name)
    ig = IntegratedGradients(explained(ref64, output))
    trap = {n: ig.attribute(X.double(), baselines=b.double(), target=y, n_steps=n, method="riemann_trapezoid")
               / ((n - 1) * float(torch.tensor(1 / n, dtype=torch.float32))) for n in (10_000, 20_000)}
    ref = trap[20_000]
    tol = 2 * float((trap[20_000] - trap[10_000]).abs().max()) + 1e-7 * float(ref.abs().max())
    exact = integrated_gradients(ref64, X.double(), y, b.double(), output=output, quadrature="exact", quiet=True)
    assert float((exact - ref).abs().max()) <= tol
    exact32 = integrated_gradients(model, X, y, b, output=output, quadrature="exact", quiet=True)  # float64 inside
    assert exact32.dtype == torch.float32
    torch.testing.assert_close(exact32.double(), exact, rtol=1e-6, atol=1e-6 * float(exact.abs().max()))


@pytest.mark.parametrize("name", ["MLP", "DiffuseMLP"])
def test_exact_logit_ig_is_deeplift_for_one_hidden_relu_layer(name, data):
    """For one hidden ReLU layer and the logits, DeepLift's rescale multiplier (relu(a_x) − relu(a_b)) / (a_x − a_b) is the
    ReLU's gradient averaged along the straight path, so DeepLift equals IG exactly: Captum's DeepLift is a second,
    quadrature-free reference."""
    model = sharp_model(name)
    X, y, b = data["X"], data["y"], data["baselines"]["rows"]
    dl = attribute(model, X, y, b, output="logit", method="deeplift", quiet=True)
    torch.testing.assert_close(integrated_gradients(model, X, y, b, output="logit", quadrature="exact", quiet=True), dl,
                               rtol=1e-9, atol=1e-12)


def test_logit_nodes_are_the_pieces_between_kinks(data):
    "For logits the exact rule uses one node per piece: 1 + the number of hidden units whose sign differs at b and x."
    model = sharp_model("MLP")
    X, y, b = data["X"], data["y"], data["baselines"]["vector"]
    _, _, nodes = ig_with_completeness(model, X, y, b, output="logit", tol=1e-9, quiet=True)
    with torch.no_grad():
        ax, ab = model.bn(model.fc1(X)), model.bn(model.fc1(b[None]))
    assert torch.equal(nodes, 1 + (ax * ab < 0).sum(1))
    _, _, soft = ig_with_completeness(model, X, y, b, tol=1e-9, quiet=True)
    assert (soft % A._EXACT_NODES == 0).all() and (soft >= A._EXACT_NODES * nodes).all()


def test_exact_chunks_do_not_change_results(data):
    "Samples sorted by node count and chunked by memory: each row is what the sample gives alone."
    model = sharp_model("DiffuseMLP")
    X, y, b = data["X"], data["y"], data["baselines"]["rows"]
    whole = integrated_gradients(model, X, y, b, quiet=True)
    for kw in (dict(batch_size=1), dict(batch_size=3), dict(memory_mb=0.01)):
        torch.testing.assert_close(integrated_gradients(model, X, y, b, quiet=True, **kw), whole, rtol=1e-12, atol=1e-15)
    for i in (0, N - 1):
        torch.testing.assert_close(integrated_gradients(model, X[i:i + 1], y[i:i + 1], b[i:i + 1], quiet=True), whole[i:i + 1],
                                   rtol=1e-12, atol=1e-15)


def test_float32_model_computes_in_float64_returns_float32(data):
    model = sharp_model("MLP", dtype=torch.float32)
    X, y = data["X"].float(), data["y"]
    attr = integrated_gradients(model, X, y, 0.0, quiet=True)
    assert attr.dtype == torch.float32
    ref = float64_copy(model, "MLP")
    g = gap(ref, X.double(), torch.zeros(G, dtype=torch.float64), y, "softmax")
    err = (attr.double().sum(1) - g).abs()
    assert float(err.max()) <= 1e-6 * float(g.abs().max())  # float32 rounding of the returned scores only


# ---------------------------------------------------------------- the fixed rules, unchanged

def _old_softmax_head_grad(z, y, w, output):
    "The fast path's code before the exact rule existed, kept verbatim to check that Gauss–Legendre is unchanged."
    n, S, C_ = z.shape
    if output == "logit":
        eye = torch.eye(C_, dtype=z.dtype, device=z.device) * w.sum()
        return eye.expand(n, C_, C_).clone() if y is None else eye[y]
    p = torch.softmax(z, dim=-1)
    if y is None:
        wp = p * w[None, :, None]
        return torch.diag_embed(wp.sum(1)) - wp.transpose(1, 2) @ p
    wpy = w[None, :, None] * p.gather(2, y.view(n, 1, 1).expand(n, S, 1))
    g = -(wpy * p).sum(1)
    g[torch.arange(n, device=z.device), y] += wpy.sum((1, 2))
    return g


def _old_mlp_head_grad(lf, hx, hb, y, alphas, w, output):
    s, W2 = lf.scale, lf.weight2
    ax, ab = hx * s + lf.shift, hb * s + lf.shift
    a = ab[:, None, :] + alphas[None, :, None] * (ax - ab)[:, None, :]
    m = (a > 0).to(a.dtype)
    if output == "logit":
        count = torch.einsum("s,nsh->nh", w, m)
        return s * W2[None] * count[:, None, :] if y is None else s * W2[y] * count
    p = torch.softmax((a * m) @ W2.T + lf.bias2, dim=-1)
    q = p @ W2
    if y is None:
        wp = (p * w[None, :, None]).transpose(1, 2)
        return s * (W2[None] * (wp @ m) - wp @ (m * q))
    py = p.gather(2, y.view(-1, 1, 1).expand(-1, p.shape[1], 1))
    return s * torch.einsum("s,nsh->nh", w, py * (W2[y][:, None, :] - q) * m)


def _old_fast_ig(lf, x, b, y, alphas, w, output):
    hx = x @ lf.weight.T + lf.bias
    hb = (b @ lf.weight.T + lf.bias).expand_as(hx)
    with torch.no_grad():
        if lf.kind == "bn_relu_linear": v = _old_mlp_head_grad(lf, hx, hb, y, alphas, w, output)
        else: v = _old_softmax_head_grad(hb[:, None, :] + alphas[None, :, None] * (hx - hb)[:, None, :], y, w, output)
    diff = x - b
    return (diff[:, None, :] if y is None else diff) * (v @ lf.weight)


@pytest.mark.parametrize("name", ARCHS)
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_gausslegendre_3000_is_bit_for_bit_the_previous_fast_path(name, dtype, data):
    model = sharp_model(name, dtype=dtype)
    X, y = data["X"].to(dtype), data["y"]
    lf = linear_first(model).to(torch.device("cpu"), dtype)
    nodes, weights = (torch.as_tensor(a, dtype=dtype) for a in gauss_legendre(3000))
    for output in ("softmax", "logit"):
        for target in (y, "all"):
            for b in (torch.zeros(1, G, dtype=dtype), data["baselines"]["rows"].to(dtype)):
                ours = integrated_gradients(model, X, target, b, n_steps=3000, output=output, quadrature="gausslegendre", quiet=True)
                old = _old_fast_ig(lf, X, b, None if isinstance(target, str) else target, nodes, weights, output)
                assert torch.equal(ours, old), (output, target if isinstance(target, str) else "per sample")


def test_auto_without_an_exact_rule_is_gausslegendre_bit_for_bit(data):
    model = nn.Sequential(nn.Linear(G, 8), nn.Tanh(), nn.Linear(8, C)).double().eval()
    X, y = data["X"], data["y"]
    assert torch.equal(integrated_gradients(model, X, y, 0.0, n_steps=300, quiet=True),
                       integrated_gradients(model, X, y, 0.0, n_steps=300, quadrature="gausslegendre", quiet=True))


@pytest.mark.parametrize("rule", ["riemann_left", "riemann_right", "riemann_middle", "riemann_trapezoid"])
def test_riemann_rules_fast_path_equals_captum(rule, data):
    X, y, b = data["X"], data["y"], data["baselines"]["vector"]
    for name in ("LR", "MLP"):
        model = sharp_model(name, factor=3.0)
        ours = integrated_gradients(model, X, y, b, n_steps=50, quadrature=rule, path="fast", quiet=True)
        captum_path = integrated_gradients(model, X, y, b, n_steps=50, quadrature=rule, path="captum", quiet=True)
        ref = IntegratedGradients(explained(model, "softmax")).attribute(X, baselines=b[None], target=y, n_steps=50, method=rule)
        torch.testing.assert_close(ours, ref, rtol=1e-10, atol=1e-13)
        torch.testing.assert_close(captum_path, ref, rtol=1e-10, atol=1e-13)


def test_fixed_rules_still_double_their_steps(data):
    model = sharp_model("MLP", factor=3.0)
    X, y = data["X"], data["y"]
    _, err, steps = ig_with_completeness(model, X, y, 0.0, n_steps=8, tol=1e-4, max_steps=8 * 2**9, quadrature="riemann_middle",
                                         quiet=True)
    assert float(err.max()) <= 1e-4 and (steps > 8).any() and set(steps.tolist()) <= {8 * 2**k for k in range(10)}


# ---------------------------------------------------------------- completeness control with the exact rule

def test_ig_with_completeness_makes_one_exact_pass(data, monkeypatch):
    model = sharp_model("MLP")
    X, y = data["X"], data["y"]
    calls = []
    exact_ig = A._exact_ig
    monkeypatch.setattr(A, "_exact_ig", lambda *a, **k: calls.append(1) or exact_ig(*a, **k))
    monkeypatch.setattr(A, "_fixed_ig", lambda *a, **k: pytest.fail("a fixed rule was used"))
    attr, err, steps = ig_with_completeness(model, X, "all", 0.0, n_steps=3000, tol=1e-10, quiet=True)
    assert len(calls) == 1 and float(err.max()) <= 1e-10
    assert steps.shape == (N, C) and (steps == steps[:, :1]).all() and (steps != 3000).any()  # nodes used, per sample
    model32 = sharp_model("MLP", dtype=torch.float32)
    with pytest.warns(UserWarning, match="exact quadrature.*cannot reduce it"):
        ig_with_completeness(model32, X.float(), y, 0.0, tol=1e-15, quiet=True)
    assert len(calls) == 2  # one pass each, no doubling


# ---------------------------------------------------------------- recorded with the attributions

def test_explain_records_the_quadrature_and_it_round_trips(tmp_path, data):
    model = sharp_model("MLP")
    X, y = data["X"].numpy(), data["y"].numpy()
    a = explain(model, X, labels=y, quiet=True)
    assert a.quadrature == a.settings["quadrature"] == "exact" and a.settings["path"] == "fast"
    assert "(exact)" in repr(a) and (a.info()["quadrature"] == "exact").all()
    _, _, nodes = ig_with_completeness(model, X, torch.as_tensor(y), 0.0, quiet=True)
    assert np.array_equal(a.n_steps, nodes.numpy()) and a.completeness.max() <= 1e-9
    assert a.subset([0, 2]).quadrature == "exact"
    back = Attributions.load(a.save(tmp_path / "exact.npz"))
    assert back.quadrature == "exact" and np.array_equal(back.n_steps, a.n_steps)
    gl = explain(model, X, labels=y, n_steps=500, quadrature="gausslegendre", tol=None, quiet=True)
    assert gl.quadrature == "gausslegendre" and (gl.n_steps == 500).all()
    assert Attributions.load(gl.save(tmp_path / "gl.npz")).quadrature == "gausslegendre"
    every = explain(model, X, labels=y, target="all", tol=None, quiet=True)
    assert every.n_steps.shape == (N * C,) and np.array_equal(every.n_steps, np.repeat(a.n_steps, C))
    # a file written before the field existed
    with np.load(tmp_path / "exact.npz") as z: arrays = {k: z[k] for k in z.files if k != "quadrature"}
    np.savez_compressed(tmp_path / "old.npz", **arrays)
    old = Attributions.load(tmp_path / "old.npz")
    assert old.quadrature is None and np.array_equal(old.scores, a.scores) and repr(old).startswith("Attributions(integrated_gradients:")
    assert explain(model, X, labels=y, method="saliency", quiet=True).quadrature is None
    tanh = nn.Sequential(nn.Linear(G, 8), nn.Tanh(), nn.Linear(8, C)).double().eval()
    assert explain(tanh, X, labels=y, n_steps=64, tol=None, quiet=True).quadrature == "gausslegendre"


def test_attribute_passes_the_quadrature_on(data):
    model = sharp_model("LR")
    X, y = data["X"], data["y"]
    torch.testing.assert_close(attribute(model, X, y, 0.0, n_steps=40, quadrature="gausslegendre", quiet=True),
                               integrated_gradients(model, X, y, 0.0, n_steps=40, quadrature="gausslegendre", quiet=True))
    assert not torch.equal(attribute(model, X, y, 0.0, n_steps=4, quiet=True),
                           attribute(model, X, y, 0.0, n_steps=4, quadrature="gausslegendre", quiet=True))


# ---------------------------------------------------------------- errors

def test_bad_quadrature_is_refused(data):
    X, y = data["X"], data["y"]
    mlp = sharp_model("MLP")
    tanh = nn.Sequential(nn.Linear(G, 8), nn.Tanh(), nn.Linear(8, C)).double().eval()

    class NotLinearFirst(nn.Module):
        def __init__(self): super().__init__(); self.fc = nn.Linear(G, C)
        def forward(self, x): return self.fc(torch.sin(x))

    with pytest.raises(ValueError, match=r"no exact quadrature for Sequential: .*quadrature='auto' or 'gausslegendre'"):
        integrated_gradients(tanh, X, y, 0.0, quadrature="exact")
    with pytest.raises(ValueError, match="no exact quadrature for NotLinearFirst: its first layer is not linear"):
        integrated_gradients(NotLinearFirst().double(), X, y, 0.0, quadrature="exact")
    with pytest.raises(ValueError, match="path='captum' applies Captum's fixed rules"):
        integrated_gradients(mlp, X, y, 0.0, quadrature="exact", path="captum")
    with pytest.raises(ValueError, match="no exact quadrature"):
        explain(tanh, X.numpy(), labels=y.numpy(), quadrature="exact", quiet=True)
    for bad in ("simpson", "Exact", "method"):
        with pytest.raises(ValueError, match="quadrature must be one of"):
            integrated_gradients(mlp, X, y, 0.0, quadrature=bad)
    with pytest.raises(ValueError, match="riemann_left needs n_steps >= 2"):
        integrated_gradients(mlp, X, y, 0.0, n_steps=1, quadrature="riemann_left")
    with pytest.raises(ValueError, match="n_steps must be an integer >= 1"):
        integrated_gradients(mlp, X, y, 0.0, n_steps=0)  # checked even where the exact rule does not use it
