"""Integrated Gradients (fast path and Captum path), completeness control, baselines, targets, other methods,
statistical rankings and the `Attributions` object (with what evaluation needs: model inputs, baseline, correct rows,
ground truth), checked against Captum, SciPy, scikit-learn and direct computations written here."""
import warnings

import numpy as np
import pytest
import scipy.sparse as sp
import torch
from captum.attr import IntegratedGradients
from scipy import stats
from torch import nn

import igtcga.attribution as A
from igtcga.attribution import (Attributions, Baseline, attribute, explain, gauss_legendre, ig_with_completeness,
                                integrated_gradients, linear_first, make_baseline, statistical_ranking, ttest_scores,
                                anova_scores, mutual_info_scores, lr_weight_scores)
from igtcga.models import LR, MLP, DiffuseLR, DiffuseMLP, GeneModel

G, C, N = 24, 4, 7


def softmax_fn(model, output="softmax"):
    return (lambda t: torch.softmax(model(t), dim=-1)) if output == "softmax" else model


def captum(model, X, target, base, n_steps, output="softmax"):
    "Captum's IG in its default Gauss-Legendre mode; per class stacked for target='all'."
    ig = IntegratedGradients(softmax_fn(model, output))
    b = base if base.ndim == 2 else base[None]
    if isinstance(target, str):
        return torch.stack([ig.attribute(X, baselines=b, target=k, n_steps=n_steps, method="gausslegendre") for k in range(C)], 1)
    return ig.attribute(X, baselines=b, target=target, n_steps=n_steps, method="gausslegendre")


def with_running_stats(model, seed=0):
    "One training-mode pass so BatchNorm's running statistics are far from (0, 1); then evaluation mode."
    g = torch.Generator().manual_seed(seed)
    model.train()
    with torch.no_grad(): model(2.5 * torch.randn(128, G, generator=g, dtype=torch.float64) - 0.7)
    return model.eval()


def operator(seed=0):
    "A sparse symmetric non-negative G × G operator with a unit diagonal, like the normalised correlation graph."
    M = sp.random(G, G, density=0.15, random_state=seed)
    return (M + M.T + sp.identity(G)).tocsr() * 0.4


class CustomHead(GeneModel):
    "A GeneModel with a head that needs autograd: Linear -> Tanh -> Linear."
    def __init__(self):
        super().__init__()
        self.n_genes, self.n_classes = G, C
        self.fc1, self.fc2 = nn.Linear(G, 6), nn.Linear(6, C)
    @property
    def first_linear(self): return self.fc1
    def head(self, h): return self.fc2(torch.tanh(h))
    def forward(self, x): return self.head(self.fc1(x))


def make_models():
    torch.manual_seed(3)
    return {
        "LR": LR(G, C).double().eval(),
        "MLP": with_running_stats(MLP(G, C).double()),
        "DiffuseLR": DiffuseLR(operator(1), C).double().eval(),
        "DiffuseMLP": with_running_stats(DiffuseMLP(operator(2), C).double()),
        "Sequential-BN": with_running_stats(nn.Sequential(nn.Dropout(0.2), nn.Linear(G, 9), nn.BatchNorm1d(9), nn.ReLU(),
                                                          nn.Dropout(0.1), nn.Linear(9, C)).double()),
        "Sequential-2hidden": nn.Sequential(nn.Linear(G, 8), nn.ReLU(), nn.Linear(8, 5), nn.Tanh(), nn.Linear(5, C)).double().eval(),
        "GeneModel-custom-head": CustomHead().double().eval(),
    }


MODELS = make_models()


@pytest.fixture(scope="module")
def data():
    g = torch.Generator().manual_seed(11)
    X = 1.5 * torch.randn(N, G, generator=g, dtype=torch.float64)
    base = torch.randn(G, generator=g, dtype=torch.float64)
    rows = torch.randn(N, G, generator=g, dtype=torch.float64)
    y = torch.randint(0, C, (N,), generator=g)
    return X, base, rows, y


# ---------------------------------------------------------------- quadrature

@pytest.mark.parametrize("n", [1, 2, 3, 10, 97, 1000, 3000])
def test_gauss_legendre_is_captums(n):
    from captum.attr._utils.approximation_methods import approximation_parameters
    step_sizes, alphas = approximation_parameters("gausslegendre")
    nodes, weights = gauss_legendre(n)
    assert np.array_equal(nodes, np.array(alphas(n)))
    assert np.array_equal(weights, torch.tensor(step_sizes(n)).float().double().numpy())


@pytest.mark.parametrize("n", [5, 64, 2049])
def test_leggauss_bit_identical_to_numpy(n):
    x, w = np.polynomial.legendre.leggauss(n)
    ours = A._leggauss(n)
    np.testing.assert_array_equal(ours[0], x)
    np.testing.assert_array_equal(ours[1], w)


def test_gauss_legendre_integrates_polynomials():
    nodes, weights = gauss_legendre(9)
    for degree in range(2 * 9):
        assert abs(weights @ nodes**degree - 1 / (degree + 1)) < 1e-7  # float32-rounded weights


# ---------------------------------------------------------------- fast path == Captum

@pytest.mark.parametrize("name", list(MODELS))
def test_fast_path_recognised(name):
    lf = linear_first(MODELS[name])
    assert lf is not None
    expected = {"LR": "identity", "DiffuseLR": "identity", "MLP": "bn_relu_linear", "DiffuseMLP": "bn_relu_linear",
                "Sequential-BN": "bn_relu_linear"}.get(name, "module")
    assert lf.kind == expected


@pytest.mark.parametrize("name", list(MODELS))
@pytest.mark.parametrize("output", ["softmax", "logit"])
@pytest.mark.parametrize("per_row_baseline", [False, True])
def test_fast_path_equals_captum(name, output, per_row_baseline, data):
    X, base, rows, y = data
    model = MODELS[name]
    b = rows if per_row_baseline else base
    ours = integrated_gradients(model, X, y, b, n_steps=40, output=output, quadrature="gausslegendre", path="fast", quiet=True)
    ref = captum(model, X, y, b, 40, output)
    assert ours.shape == X.shape
    torch.testing.assert_close(ours, ref, rtol=1e-10, atol=1e-13)


@pytest.mark.parametrize("name", list(MODELS))
@pytest.mark.parametrize("output", ["softmax", "logit"])
def test_fast_path_all_classes_equals_captum(name, output, data):
    X, base, rows, y = data
    model = MODELS[name]
    ours = integrated_gradients(model, X, "all", rows, n_steps=30, output=output, quadrature="gausslegendre", path="fast", quiet=True)
    assert ours.shape == (N, C, G)
    torch.testing.assert_close(ours, captum(model, X, "all", rows, 30, output), rtol=1e-10, atol=1e-13)
    for k in range(C):  # every single target too
        torch.testing.assert_close(integrated_gradients(model, X, k, base, n_steps=30, output=output, quadrature="gausslegendre",
                                                        path="fast", quiet=True),
                                   captum(model, X, torch.full((N,), k), base, 30, output), rtol=1e-10, atol=1e-13)


def test_auto_uses_fast_path_and_captum_otherwise(data, monkeypatch):
    X, base, rows, y = data
    def no_captum(*a, **k): raise AssertionError("Captum path used")
    monkeypatch.setattr(A, "_captum_ig", no_captum)
    for model in MODELS.values():
        integrated_gradients(model, X, y, base, n_steps=8, quiet=True)
    monkeypatch.undo()

    class NotLinearFirst(nn.Module):
        def __init__(self): super().__init__(); self.fc = nn.Linear(G, C)
        def forward(self, x): return self.fc(torch.sin(x))
    model = NotLinearFirst().double()
    def no_fast(*a, **k): raise AssertionError("fast path used")
    monkeypatch.setattr(A, "_fast_ig", no_fast)
    torch.testing.assert_close(integrated_gradients(model, X, y, base, n_steps=16, quiet=True), captum(model, X, y, base, 16))
    with pytest.raises(ValueError, match="no exact fast path"):
        integrated_gradients(model, X, y, base, path="fast")


def test_captum_path_equals_captum(data):
    X, base, rows, y = data
    model = MODELS["MLP"]
    ours = integrated_gradients(model, X, y, base, n_steps=20, path="captum", batch_size=3, quiet=True)
    torch.testing.assert_close(ours, captum(model, X, y, base, 20), rtol=1e-10, atol=1e-13)


def test_float32_fast_path_close_to_captum():
    torch.manual_seed(0)
    model = MLP(300, 6)
    model.train(); model(torch.randn(64, 300) * 2); model.eval()
    X, y = torch.randn(5, 300), torch.randint(0, 6, (5,))
    ours = integrated_gradients(model, X, y, 0.0, n_steps=500, quadrature="gausslegendre", quiet=True)
    assert ours.dtype == torch.float32
    ref = IntegratedGradients(softmax_fn(model)).attribute(X, baselines=torch.zeros(1, 300), target=y, n_steps=500)
    assert float((ours - ref).abs().max() / ref.abs().max()) < 1e-5


def test_chunking_does_not_change_results(data):
    X, base, rows, y = data
    for model in (MODELS["MLP"], MODELS["Sequential-2hidden"]):
        for rule in ("auto", "gausslegendre"):  # exact for the MLP, Gauss-Legendre for both
            kw = dict(n_steps=25, quadrature=rule, quiet=True)
            whole = integrated_gradients(model, X, y, rows, **kw)
            torch.testing.assert_close(integrated_gradients(model, X, y, rows, batch_size=1, **kw), whole, rtol=1e-12, atol=1e-14)
            torch.testing.assert_close(integrated_gradients(model, X, y, rows, memory_mb=0.001, **kw), whole, rtol=1e-12, atol=1e-14)


def test_model_mode_restored_and_eval_used(data):
    X, base, rows, y = data
    model = with_running_stats(MLP(G, C).double())
    model.train()
    ours = integrated_gradients(model, X, y, base, n_steps=16, quadrature="gausslegendre", quiet=True)
    assert model.training
    model.eval()
    torch.testing.assert_close(ours, captum(model, X, y, base, 16))


def test_numpy_inputs_and_dtype_cast(data):
    X, base, rows, y = data
    model = MODELS["LR"]
    out = integrated_gradients(model, X.float().numpy(), y.numpy(), base.numpy(), n_steps=16, quiet=True)
    assert isinstance(out, torch.Tensor) and out.dtype == torch.float64 and out.shape == X.shape


# ---------------------------------------------------------------- completeness

def test_convergence_delta_matches_definition(data):
    X, base, rows, y = data
    for model in MODELS.values():
        attr, delta = integrated_gradients(model, X, y, base, n_steps=50, return_convergence_delta=True, quiet=True)
        with torch.no_grad():
            p = torch.softmax(model(X), -1)[torch.arange(N), y] - torch.softmax(model(base[None]), -1)[0, y]
        torch.testing.assert_close(delta, attr.sum(1) - p)


@pytest.mark.parametrize("name", ["LR", "DiffuseLR"])
def test_completeness_holds_to_tolerance_for_smooth_models(name, data):
    X, base, rows, y = data
    attr, err, steps = ig_with_completeness(MODELS[name], X, y, base, n_steps=2, tol=1e-8, quadrature="gausslegendre", quiet=True)
    assert float(err.max()) <= 1e-8
    assert steps.min() >= 2 and (steps > 2).any()
    for i in range(N):  # each sample equals Captum at the steps it used
        ref = captum(MODELS[name], X[i:i + 1], int(y[i]), base, int(steps[i]))
        torch.testing.assert_close(attr[i], ref[0], rtol=1e-10, atol=1e-13)


def test_completeness_all_classes_and_per_row_baselines(data):
    X, base, rows, y = data
    model = MODELS["MLP"]
    attr, err, steps = ig_with_completeness(model, X, "all", rows, n_steps=4, tol=2e-3, quadrature="gausslegendre", quiet=True)
    assert attr.shape == (N, C, G) and err.shape == (N, C) and steps.shape == (N, C)
    assert float(err.max()) <= 2e-3
    for i, k in [(0, 0), (3, 2), (N - 1, C - 1)]:
        ref = captum(model, X[i:i + 1], k, rows[i:i + 1], int(steps[i, k]))
        torch.testing.assert_close(attr[i, k], ref[0], rtol=1e-10, atol=1e-13)
        with torch.no_grad():
            gap = torch.softmax(model(X[i:i + 1]), -1)[0, k] - torch.softmax(model(rows[i:i + 1]), -1)[0, k]
        assert abs(float(attr[i, k].sum() - gap) - 0) == pytest.approx(float(err[i, k]), abs=1e-12)


def test_completeness_warns_when_max_steps_reached(data):
    X, base, rows, y = data
    with pytest.warns(UserWarning, match="still have a completeness error"):
        _, err, steps = ig_with_completeness(MODELS["MLP"], X, y, base, n_steps=2, tol=1e-12, max_steps=8,
                                             quadrature="gausslegendre", quiet=True)
    assert int(steps.max()) == 8
    with pytest.raises(ValueError, match="tol must be a positive number"):
        ig_with_completeness(MODELS["MLP"], X, y, base, tol=0)
    with pytest.raises(ValueError, match="max_steps"):
        ig_with_completeness(MODELS["MLP"], X, y, base, n_steps=10, max_steps=5)


# ---------------------------------------------------------------- baselines and targets

def test_baselines_do_what_they_say():
    rng = np.random.default_rng(0)
    X = rng.normal(size=(12, 5)).astype(np.float32)
    y = np.repeat([0, 1, 2], 4)
    classes = ["a", "b", "c"]
    np.testing.assert_array_equal(make_baseline("zero", n_genes=5).values, np.zeros(5))
    np.testing.assert_allclose(make_baseline("train_mean", X).values, X.astype(np.float64).sum(0) / 12, rtol=1e-6)
    for c in range(3):
        by_name = make_baseline(f"class_mean:{classes[c]}", (X, y), classes=classes)
        by_index = make_baseline(("class_mean", c), (X, y), classes=classes)
        np.testing.assert_allclose(by_name.values, X[y == c].mean(0), rtol=1e-6)
        np.testing.assert_array_equal(by_name.values, by_index.values)
        assert by_name.name == by_index.name == f"class_mean:{classes[c]}"
    custom = make_baseline(np.arange(5.0))
    assert custom.name == "custom" and np.array_equal(custom.values, np.arange(5.0))
    assert make_baseline(2.0, n_genes=3).values.tolist() == [2.0, 2.0, 2.0]
    with pytest.raises(ValueError, match="needs `reference`"):
        make_baseline("train_mean")
    with pytest.raises(ValueError, match="no reference sample of class"):
        make_baseline(("class_mean", 5), (X, y))
    with pytest.raises(ValueError, match="NaN"):
        make_baseline(np.array([1.0, np.nan, 0, 0, 0]))


def tiny_expr(n=30, seed=0):
    from igtcga.data import ExprData
    rng = np.random.default_rng(seed)
    y = np.arange(n) % C
    X = rng.normal(size=(n, G)).astype(np.float32) + 2 * np.eye(C, G, dtype=np.float32)[y]
    return ExprData(X, y, [f"class{c}" for c in range(C)], [f"g{i}" for i in range(G)])


def test_explain_records_baseline_and_targets():
    d = tiny_expr()
    model = MODELS["MLP"].float()
    try:
        for choice, expected in [("zero", np.zeros(G)), ("train_mean", d.X.mean(0)), ("class_mean:class2", d.X[d.y == 2].mean(0))]:
            a = explain(model, d, baseline=choice, reference=d, n_steps=64, tol=None, quiet=True)
            np.testing.assert_allclose(a.baseline, expected, rtol=1e-5, atol=1e-6)
            assert a.settings["baseline"] == choice
            ref = integrated_gradients(model, d.X, d.y, expected, n_steps=64, quiet=True).numpy()
            np.testing.assert_allclose(a.scores, ref, rtol=1e-5, atol=1e-7)
        with torch.no_grad(): pred = model(torch.as_tensor(d.X)).argmax(1).numpy()
        a_true = explain(model, d, n_steps=32, quiet=True)
        a_pred = explain(model, d, target="predicted", n_steps=32, quiet=True)
        a_all = explain(model, d, target="all", n_steps=32, quiet=True)
        a_one = explain(model, d, target=1, n_steps=32, tol=None, quiet=True)
        assert np.array_equal(a_true.targets, d.y) and np.array_equal(a_true.predictions, pred)
        assert np.array_equal(a_pred.targets, pred)
        assert a_all.n_rows == d.n_samples * C
        assert np.array_equal(a_all.targets, np.tile(np.arange(C), d.n_samples))
        assert a_all.sample_ids[:C] == [d.samples[0]] * C
        rows = np.arange(d.n_samples) * C + d.y
        np.testing.assert_allclose(a_all.scores[rows], a_true.scores, rtol=1e-4, atol=1e-7)
        assert (a_one.targets == 1).all()
        assert a_true.settings["target"] == "true" and a_true.settings["path"] == "fast"
        assert a_true.completeness.max() <= 1e-4
    finally:
        model.double()


def test_explain_applies_transform():
    d = tiny_expr()
    class Shift:
        def transform(self, X): return np.asarray(X) - 1.0
    model = MODELS["LR"]
    a = explain(model, d, transform=Shift(), baseline="train_mean", reference=d, n_steps=16, quiet=True)
    np.testing.assert_allclose(a.baseline, d.X.mean(0) - 1.0, rtol=1e-5, atol=1e-6)
    ref = integrated_gradients(model, d.X - 1.0, d.y, d.X.mean(0) - 1.0, n_steps=16, quiet=True).numpy()
    np.testing.assert_allclose(a.scores, ref, rtol=1e-5, atol=1e-8)


# ---------------------------------------------------------------- other methods

def test_other_methods_on_a_linear_model(data):
    X, base, rows, y = data
    lin = nn.Sequential(nn.Linear(G, C)).double().eval()
    Wy = lin[0].weight.detach()[y]
    torch.testing.assert_close(attribute(lin, X, y, base, output="logit", method="saliency", quiet=True), Wy)
    torch.testing.assert_close(attribute(lin, X, y, base, output="logit", method="input_x_gradient", quiet=True), X * Wy)
    for method in ("integrated_gradients", "deeplift", "gradient_shap", "feature_ablation"):
        torch.testing.assert_close(attribute(lin, X, y, base, n_steps=10, output="logit", method=method, quiet=True), (X - base) * Wy)


@pytest.mark.parametrize("name", ["LR", "MLP", "DiffuseLR", "DiffuseMLP", "Sequential-BN"])
def test_deeplift_summation_to_delta_on_logits(name, data):
    "DeepLift's rescale rule must be applied to igtcga's MLP (which calls torch.relu): summation to delta holds exactly."
    X, base, rows, y = data
    model = MODELS[name]
    dl = attribute(model, X, y, rows, output="logit", method="deeplift", quiet=True)
    with torch.no_grad(): gap = (model(X) - model(rows))[torch.arange(N), y]
    torch.testing.assert_close(dl.sum(1), gap, rtol=1e-10, atol=1e-12)
    if "MLP" in name:  # and it differs from the gradient-based answer a non-hooked ReLU would give on some sample
        grad = attribute(model, X, y, rows, output="logit", method="saliency", quiet=True)
        assert not torch.allclose(dl, (X - rows) * grad)
        # one hidden ReLU layer: the rescale multipliers are the ReLU's gradient averaged along the path, so DeepLift is exact IG
        ig = attribute(model, X, y, rows, output="logit", method="integrated_gradients", quadrature="exact", quiet=True)
        torch.testing.assert_close(dl, ig, rtol=1e-9, atol=1e-12)


def test_feature_ablation_matches_direct_loop(data):
    X, base, rows, y = data
    model = MODELS["MLP"]
    ours = attribute(model, X, y, base, method="feature_ablation", quiet=True)
    with torch.no_grad():
        f = lambda t: torch.softmax(model(t), -1)[torch.arange(N), y]
        expected = torch.stack([f(X) - f(torch.where(torch.arange(G) == i, base, X)) for i in range(G)], 1)
    torch.testing.assert_close(ours, expected)


def test_gradient_shap_seeded(data):
    X, base, rows, y = data
    model = MODELS["MLP"]
    kw = dict(method="gradient_shap", n_steps=5, stdevs=0.1, quiet=True)
    a1, a2 = attribute(model, X, y, base, seed=1, **kw), attribute(model, X, y, base, seed=1, **kw)
    torch.testing.assert_close(a1, a2)
    assert not torch.allclose(a1, attribute(model, X, y, base, seed=2, **kw))


def test_methods_all_classes_and_explain(data):
    X, base, rows, y = data
    model = MODELS["MLP"]
    sal = attribute(model, X, "all", base, method="saliency", quiet=True)
    assert sal.shape == (N, C, G)
    torch.testing.assert_close(sal[:, 2], attribute(model, X, 2, base, method="saliency", quiet=True))
    a = explain(model, X.numpy(), labels=y.numpy(), method="input_x_gradient", quiet=True)
    assert a.method == "input_x_gradient" and a.n_steps is None and a.completeness.shape == (N,)
    with pytest.raises(ValueError, match="unknown method"):
        attribute(model, X, y, base, method="occlusion")


# ---------------------------------------------------------------- Attributions

def test_attributions_save_load_round_trip(tmp_path):
    d = tiny_expr()
    a = explain(MODELS["MLP"], d, target="all", n_steps=16, tol=1e-2, quiet=True)
    path = a.save(tmp_path / "atts.npz")
    b = Attributions.load(path)
    for name in ("scores", "targets", "labels", "predictions", "baseline", "completeness", "n_steps"):
        np.testing.assert_array_equal(getattr(b, name), getattr(a, name))
    assert (b.sample_ids, b.genes, b.classes, b.method, b.settings) == (a.sample_ids, a.genes, a.classes, a.method, a.settings)
    assert a.quadrature == b.quadrature == a.settings["quadrature"] == "exact"
    assert [p.name for p in tmp_path.iterdir()] == ["atts.npz"]  # no temporary file left behind
    bare = Attributions(np.ones((2, 3)), [0, 1], ["x", "y"])
    again = Attributions.load(bare.save(tmp_path / "bare.npz"))
    assert again.labels is None and again.baseline is None and again.genes == ["G0", "G1", "G2"]
    with pytest.raises(FileNotFoundError):
        Attributions.load(tmp_path / "missing.npz")
    np.savez(tmp_path / "other.npz", a=np.ones(2))
    with pytest.raises(ValueError, match="not an igtcga attributions file"):
        Attributions.load(tmp_path / "other.npz")


def test_explain_records_what_evaluation_needs():
    "The evaluation contract: model inputs, baseline, labels, predictions and `correct` travel with the scores."
    d = tiny_expr()
    model = MODELS["LR"]
    a = explain(model, d, n_steps=16, quiet=True)
    assert a.inputs.dtype == np.float32 and np.array_equal(a.inputs, d.X.astype(np.float32))
    assert a.model_inputs() is a.inputs
    with torch.no_grad(): pred = model(torch.as_tensor(d.X, dtype=torch.float64)).argmax(1).numpy()
    assert np.array_equal(a.labels, d.y) and np.array_equal(a.predictions, pred) and np.array_equal(a.correct, d.y == pred)
    assert np.array_equal(a.baseline, np.zeros(G, np.float32))
    assert a.groups is None and a.truth is None  # real-like data: no ground truth
    with pytest.raises(ValueError, match="no ground truth"):
        a.ground_truth()
    every = explain(model, d, target="all", n_steps=16, tol=None, quiet=True)  # one row per (sample, class)
    assert np.array_equal(every.inputs, np.repeat(d.X.astype(np.float32), C, axis=0))
    assert np.array_equal(every.correct, np.repeat(d.y == pred, C))
    part = a.subset(d.y == 1)
    assert np.array_equal(part.inputs, a.inputs[d.y == 1]) and np.array_equal(part.targets, np.ones(part.n_rows))
    bare = Attributions(scores=a.scores, targets=a.targets)
    with pytest.raises(ValueError, match=r"carry no model inputs.*with_inputs"):
        bare.model_inputs()
    np.testing.assert_array_equal(bare.with_inputs(d.X).model_inputs(), a.inputs)
    assert bare.inputs is None  # with_inputs returns a copy


def test_attributions_from_arrays():
    rng = np.random.default_rng(0)
    scores, X = rng.normal(size=(5, 6)), rng.normal(size=(5, 6))
    y = np.array([0, 1, 2, 1, 0])
    a = Attributions(scores=scores, targets=y, labels=y, inputs=torch.as_tensor(X), baseline=np.ones((1, 6)))
    assert a.sample_ids == [f"S{i}" for i in range(5)] and a.classes == ["0", "1", "2"]
    assert a.inputs.dtype == np.float32 and np.allclose(a.inputs, X) and a.baseline.shape == (6,)
    assert a.correct.all()  # predictions unknown: every row counts as correct
    with pytest.raises(ValueError, match="inputs have shape"):
        Attributions(scores=scores, targets=y, inputs=X[:, :4])
    with pytest.raises(ValueError, match="baseline has shape"):
        Attributions(scores=scores, targets=y, baseline=np.ones(4))
    with pytest.raises(ValueError, match="groups has"):
        Attributions(scores=scores, targets=y, groups=[0, 1])
    with pytest.raises(ValueError, match="targets has"):
        Attributions(scores=scores, targets=y[:3])
    with pytest.raises(ValueError, match="labels are unknown"):
        Attributions(scores=scores, targets=y, truth={0: [1]}).ground_truth()
    groups, truth = Attributions(scores=scores, targets=y, labels=y, truth={0: [3, 1, 1], 2: [5]}).ground_truth()
    assert np.array_equal(groups, y) and {k: v.tolist() for k, v in truth.items()} == {0: [1, 3], 2: [5]}


def toy_simulation():
    from igtcga.simulation import SimParams, simulate
    params = SimParams("toyB", n_generated=3, n_genes=G, n_pathways=6, genes_per_pathway=4, n_overexpressed=1,
                       n_samples=30, regroup=(0, 0, 1))
    return simulate(params, seed=0)


def test_explain_on_a_simulation_records_the_ground_truth(tmp_path):
    from igtcga.data import informative_genes
    d = toy_simulation()
    assert d.subclass is not None and d.truth is not None
    model = LR(G, 2).double().eval()
    a = explain(model, d, n_steps=8, tol=None, quiet=True)
    want = {k: v.tolist() for k, v in informative_genes(d).items()}
    assert {k: v.tolist() for k, v in a.truth.items()} == want
    assert np.array_equal(a.groups, d.subclass)
    groups, truth = a.ground_truth()
    assert np.array_equal(groups, d.subclass) and {k: v.tolist() for k, v in truth.items()} == want
    every = explain(model, d, target="all", n_steps=8, tol=None, quiet=True)
    assert np.array_equal(every.groups, np.repeat(d.subclass, 2))
    part = a.subset(d.y == 0)
    assert np.array_equal(part.groups, d.subclass[d.y == 0]) and part.truth.keys() == a.truth.keys()
    # save / load keeps inputs, groups and truth; inputs=False leaves the inputs out, `with_inputs` puts them back
    b = Attributions.load(a.save(tmp_path / "sim.npz"))
    for name in ("inputs", "groups", "scores", "baseline", "labels", "predictions"):
        np.testing.assert_array_equal(getattr(b, name), getattr(a, name))
    assert {k: v.tolist() for k, v in b.truth.items()} == want
    small = Attributions.load(a.save(tmp_path / "small.npz", inputs=False))
    assert small.inputs is None and np.array_equal(small.groups, a.groups) and small.truth.keys() == a.truth.keys()
    assert (tmp_path / "small.npz").stat().st_size < (tmp_path / "sim.npz").stat().st_size
    np.testing.assert_array_equal(small.with_inputs(d.X).inputs, a.inputs)
    # a dataset without subclasses: the groups are the labels
    plain = explain(LR(G, C).double().eval(), tiny_expr(), n_steps=8, tol=None, quiet=True)
    assert plain.groups is None and plain.truth is None


def test_explain_accepts_a_train_result():
    from igtcga.data import Standardize, paper_split
    from igtcga.training import train
    d = tiny_expr()
    run = train(LR(G, C), d, paper_split(d.n_samples), Standardize(), epochs=1, seed=0, device="cpu", quiet=True)
    a = explain(run, d, baseline="train_mean", reference=d, n_steps=16, tol=None, quiet=True)
    b = explain(run.model, d, baseline="train_mean", reference=d, transform=run.transform, n_steps=16, tol=None, quiet=True)
    np.testing.assert_array_equal(a.scores, b.scores)
    np.testing.assert_allclose(a.inputs, run.transform.transform(d.X), rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(a.baseline, run.transform.transform(d.X).mean(0), rtol=1e-4, atol=1e-5)
    assert a.settings["model"] == "LR"
    with pytest.raises(TypeError, match="torch.nn.Module or a TrainResult"):
        explain("not a model", d)


def test_class_scores_against_direct_computation():
    rng = np.random.default_rng(5)
    scores = rng.normal(size=(20, 6))
    targets, labels = np.arange(20) % 3, np.arange(20) % 3
    preds = labels.copy(); preds[[1, 7]] = 0
    a = Attributions(scores, targets, [f"s{i}" for i in range(20)], labels=labels, predictions=preds)
    norm = scores / np.linalg.norm(scores, axis=1, keepdims=True)
    ok = labels == preds
    for how in ("signed", "abs_mean", "mean_abs"):
        got = a.class_scores(how=how).to_numpy()
        for c in range(3):
            rows = norm[(targets == c) & ok]
            exp = {"signed": rows.mean(0), "abs_mean": np.abs(rows.mean(0)), "mean_abs": np.abs(rows).mean(0)}[how]
            np.testing.assert_allclose(got[c], exp, rtol=1e-6)
    top = a.top_genes(2, how="mean_abs")
    for c in range(3):
        exp = np.argsort(-np.abs(norm[(targets == c) & ok]).mean(0))[:2]
        assert top[top["class"] == str(c)]["gene_index"].tolist() == exp.tolist()
    assert a.to_frame().shape == (20, 6)
    with pytest.raises(ValueError, match="how must be one of"):
        a.class_scores(how="max")


def test_plot_top_genes_runs():
    import matplotlib
    matplotlib.use("Agg")
    a = Attributions(np.random.default_rng(0).normal(size=(8, 12)), np.arange(8) % 2, [f"s{i}" for i in range(8)],
                     classes=["tumour", "normal"])
    fig = a.plot_top_genes(k=4)
    assert len(fig.axes) == 2
    with pytest.raises(ValueError, match="no rows for class"):
        a.plot_top_genes(classes=["other"])


# ---------------------------------------------------------------- statistical rankings

@pytest.fixture(scope="module")
def tiny_stats():
    rng = np.random.default_rng(2)
    y = np.repeat(np.arange(3), [7, 9, 6])
    X = rng.normal(size=(22, 8)) * rng.uniform(0.5, 2, size=8) + np.eye(3, 8)[y] * 1.5
    return X, y


@pytest.mark.parametrize("equal_var", [False, True])
def test_ttest_against_scipy(tiny_stats, equal_var):
    X, y = tiny_stats
    expected = np.stack([stats.ttest_ind(X[y == c], X[y != c], equal_var=equal_var).statistic for c in range(3)])
    np.testing.assert_allclose(ttest_scores(X, y, equal_var=equal_var), expected, rtol=1e-10)


def test_anova_against_sklearn(tiny_stats):
    from sklearn.feature_selection import f_classif
    X, y = tiny_stats
    np.testing.assert_allclose(anova_scores(X, y), f_classif(X, y)[0], rtol=1e-10)
    np.testing.assert_allclose(anova_scores(X, y), stats.f_oneway(*[X[y == c] for c in range(3)]).statistic, rtol=1e-10)


def test_mutual_info_against_sklearn(tiny_stats):
    from sklearn.feature_selection import mutual_info_classif
    X, y = tiny_stats
    np.testing.assert_allclose(mutual_info_scores(X, y, seed=4), mutual_info_classif(X, y, random_state=4))
    per_class = mutual_info_scores(X, y, per_class=True, seed=4)
    np.testing.assert_allclose(per_class[1], mutual_info_classif(X, (y == 1).astype(int), random_state=4))


def test_lr_weights(tiny_stats):
    from sklearn.linear_model import LogisticRegression
    X, y = tiny_stats
    model = LR(8, 3).double()
    np.testing.assert_array_equal(lr_weight_scores(model), model.fc.weight.detach().abs().numpy())
    np.testing.assert_allclose(lr_weight_scores(X=X, y=y, seed=0), np.abs(LogisticRegression(max_iter=1000, random_state=0).fit(X, y).coef_))
    binary = lr_weight_scores(X=X, y=(y == 1).astype(int))
    assert binary.shape == (2, 8) and np.array_equal(binary[0], binary[1])
    with pytest.raises(ValueError, match="not a logistic regression"):
        lr_weight_scores(MLP(8, 3))


def test_degenerate_genes_give_no_nan():
    X = np.array([[1., 5., 0.], [1., 5., 1.], [1., 7., 2.], [1., 7., 3.]])
    y = np.array([0, 0, 1, 1])
    t = ttest_scores(X, y)
    assert t[0, 0] == 0 and np.isneginf(t[0, 1]) and np.isposinf(t[1, 1])
    assert anova_scores(X, y)[0] == 0
    r = statistical_ranking(X, y, "ttest", genes=["const", "perfect", "ramp"])
    assert np.isfinite(r.scores).all()
    assert r.top_genes(1, normalize=False)["gene"].tolist()[1] == "perfect"  # +inf is kept as the top score
    assert r.scores[0].argmin() == 1 and r.scores[0, 2] < 0 < r.scores[1, 2]  # -inf kept as the lowest, order kept


def test_statistical_ranking_is_attributions(tiny_stats):
    X, y = tiny_stats
    for method in ("ttest", "anova", "mutual_info", "lr_weights"):
        r = statistical_ranking(X, y, method, classes=["a", "b", "c"])
        assert isinstance(r, Attributions) and r.scores.shape == (3, 8) and r.method == method
        assert list(r.class_scores().index) == ["a", "b", "c"]
    np.testing.assert_allclose(statistical_ranking(X, y, "anova").scores[2], anova_scores(X, y), rtol=1e-6)
    with pytest.raises(ValueError, match="unknown statistical method"):
        statistical_ranking(X, y, "deseq2")


# ---------------------------------------------------------------- bad input

def test_bad_inputs(data):
    X, base, rows, y = data
    model = MODELS["MLP"]
    with pytest.raises(ValueError, match=r"baseline has shape \(25,\)"):
        integrated_gradients(model, X, y, torch.zeros(G + 1))
    with pytest.raises(ValueError, match=r"baseline has shape \(3, 24\)"):
        integrated_gradients(model, X, y, torch.zeros(3, G))
    with pytest.raises(ValueError, match="target out of range"):
        integrated_gradients(model, X, C, base)
    with pytest.raises(ValueError, match="target out of range"):
        integrated_gradients(model, X, torch.full((N,), -1), base)
    with pytest.raises(ValueError, match="integer class indices"):
        integrated_gradients(model, X, y.double(), base)
    X_nan = X.clone(); X_nan[1, 3] = float("nan")
    with pytest.raises(ValueError, match="inputs has 1 NaN"):
        integrated_gradients(model, X_nan, y, base)
    with pytest.raises(ValueError, match="baseline has 1 NaN"):
        integrated_gradients(model, X, y, torch.where(torch.arange(G) == 0, float("nan"), 0.0))
    with pytest.raises(ValueError, match="2-D array"):
        integrated_gradients(model, X[0], y[0], base)
    with pytest.raises(ValueError, match="n_steps must be an integer >= 1"):
        integrated_gradients(model, X, y, base, n_steps=0)
    with pytest.raises(ValueError, match="output must be one of"):
        integrated_gradients(model, X, y, base, output="proba")
    with pytest.raises(ValueError, match="path must be"):
        integrated_gradients(model, X, y, base, path="fastest")
    with pytest.raises(ValueError, match="quadrature must be one of"):
        integrated_gradients(model, X, y, base, quadrature="simpson")
    with pytest.raises(ValueError, match="labels out of range"):
        explain(model, X.numpy(), labels=np.full(N, C))
    with pytest.raises(ValueError, match="target='true' needs the true labels"):
        explain(model, X.numpy())
    with pytest.raises(ValueError, match="data has 1 NaN"):
        explain(model, X_nan.numpy(), labels=y.numpy())
    with pytest.raises(ValueError, match="fewer than 2 samples"):
        ttest_scores(np.ones((5, 2)), np.array([0, 0, 0, 0, 1]))


@pytest.mark.parametrize("make", [lambda: __import__("igtcga.models", fromlist=["LR"]).LR(200, 3),
                                  lambda: __import__("igtcga.models", fromlist=["MLP"]).MLP(200, 3)], ids=["LR", "MLP"])
def test_fast_gradient_shap_and_captums_estimate_the_same_integral(make):
    "GradientSHAP with one baseline is Monte-Carlo IG: with many draws, the fast path and Captum's both reach exact IG."
    from igtcga.attribution import attribute, integrated_gradients
    torch.manual_seed(0)
    model = make().eval()
    X, y = torch.randn(24, 200) * 2, torch.randint(0, 3, (24,))
    exact = integrated_gradients(model, X, y, 0.0)
    rel = lambda a: float((a - exact).norm() / exact.norm())
    fast = attribute(model, X, y, 0.0, method="gradient_shap", n_steps=3000, seed=1)
    captum = attribute(model, X, y, 0.0, method="gradient_shap", n_steps=3000, path="captum", seed=1)
    assert rel(fast) < 0.02 and rel(captum) < 0.02
    few = attribute(model, X, y, 0.0, method="gradient_shap", n_steps=20, seed=1)
    assert rel(few) > rel(fast)  # it is an estimate: fewer draws, more error
    torch.testing.assert_close(few, attribute(model, X, y, 0.0, method="gradient_shap", n_steps=20, seed=1), rtol=0, atol=0)
