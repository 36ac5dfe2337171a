"""Tests of igtcga.metrics: the exact prediction-gap path against the slow oracle and against a naive implementation of
the definition, aggregation rules, feature agreement, AUCs, curves, ranking stability, sanity checks, bad input, and the
evaluation contract: every metric is called as `metric(model, att)` with the `Attributions` that `explain` returns."""
import math
import warnings

import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp
import torch
from scipy.stats import kendalltau, spearmanr
from torch import nn

from igtcga.attribution import Attributions, attribute, explain, integrated_gradients
from igtcga.core import unit_rows
from igtcga.data import informative_genes
from igtcga.metrics import (AccuracyCurves, AttributionAUC, FeatureAgreement, PredictionGap, _linear_parts, accuracy_curves,
                            attribution_similarity, class_gene_scores, diffuse, evaluate, feature_agreements, feature_order,
                            gene_grid, gene_ranks, gene_scores, label_permutation_test, parameter_randomisation_test,
                            pg_exact, pg_points, pg_samples, pg_slow, plot_curves, plot_stability_heatmap, prediction_gaps,
                            rank_correlations, ranking_stability, topk_overlap)


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    "Small tensors: one thread is faster and immune to contention with other processes."
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


# ---------------------------------------------------------------------------------------------------------------------
# models built here (independent of igtcga.models)

def random_bn(H, gen):
    bn = nn.BatchNorm1d(H)
    with torch.no_grad():
        bn.running_mean.copy_(torch.randn(H, generator=gen))
        bn.running_var.copy_(torch.rand(H, generator=gen) * 1.5 + 0.5)
        bn.weight.copy_(torch.randn(H, generator=gen))
        bn.bias.copy_(torch.randn(H, generator=gen))
    return bn


def lr_like(G, C, seed=0):
    torch.manual_seed(seed)
    return nn.Sequential(nn.Dropout(0.2), nn.Linear(G, C)).double().eval()


def mlp_like(G, C, H=7, seed=0):
    torch.manual_seed(seed)
    gen = torch.Generator().manual_seed(seed)
    return nn.Sequential(nn.Linear(G, H), random_bn(H, gen), nn.ReLU(), nn.Linear(H, C)).double().eval()


class DiffusedMLP(nn.Module):
    "x -> x Â -> Linear -> BN -> ReLU -> Linear, with a sparse symmetric Â (the exact path needs W Â)."
    def __init__(self, A_hat, C, H=5, seed=0):
        super().__init__()
        self.register_buffer("A", torch.as_tensor(A_hat.toarray()))
        self.mlp = mlp_like(A_hat.shape[0], C, H, seed)

    def forward(self, x): return self.mlp(x @ self.A)


def random_operator(G, seed=0):
    rng = np.random.default_rng(seed)
    A = sp.random(G, G, density=0.15, random_state=seed, data_rvs=lambda k: rng.uniform(0.5, 1, k))
    A = ((A + A.T) / 2).tocsr()
    A.setdiag(0)
    A = A + sp.identity(G)
    d = 1 / np.sqrt(np.asarray(A.sum(1)).ravel())
    return (sp.diags(d) @ A @ sp.diags(d)).tocsr()


def data(n, G, C, seed=0):
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(n, G, generator=g, dtype=torch.float64), torch.randint(0, C, (n,), generator=g),
            torch.randn(G, generator=g, dtype=torch.float64))


def att_of(X, y, A, b=None, **kwargs):
    "An `Attributions` from arrays: scores A of the model-input rows X, each explaining its true class y, baseline b."
    return Attributions(scores=A, targets=y, labels=y, inputs=X, baseline=b, **kwargs)


def orderings(n, G, seed=0):
    g = torch.Generator().manual_seed(seed)
    return [torch.randperm(G, generator=g), torch.argsort(torch.rand(n, G, generator=g), 1)]


def naive_pg(model, x, y, b, order, gap, tail="drop"):
    "The definition of protocol §8.1 written out with Python loops over points and genes, for one sample."
    G = len(x)
    with torch.no_grad():
        p0 = torch.softmax(model(x[None]), -1)[0, y].item()
        total, replaced = 0.0, 0
        n_points = G // gap + (1 if tail == "include" and G % gap else 0)
        for i in range(1, n_points + 1):
            upto = min(i * gap, G)
            xi = x.clone()
            for j in range(upto): xi[order[j]] = b[order[j]]
            p = torch.softmax(model(xi[None]), -1)[0, y].item()
            total += (upto - replaced) / G * max(p0 - p, 0.0)
            replaced = upto
    return total


# ---------------------------------------------------------------------------------------------------------------------
# prediction gaps: exact == oracle == definition

def test_pg_points_widths():
    ends, widths = pg_points(23, 5)
    assert ends.tolist() == [5, 10, 15, 20] and widths.tolist() == [5] * 4
    ends, widths = pg_points(23, 5, "include")
    assert ends.tolist() == [5, 10, 15, 20, 23] and widths.sum() == 23


@pytest.mark.parametrize("gap,tail", [(1, "drop"), (4, "drop"), (4, "include"), (7, "include"), (23, "drop")])
def test_slow_oracle_matches_the_definition(gap, tail):
    G, C, n = 23, 3, 3
    model = mlp_like(G, C)
    X, y, b = data(n, G, C)
    for order in orderings(n, G):
        got = pg_slow(model, X, y, b, order, gap, tail)
        rows = order if order.ndim == 2 else order.expand(n, -1)
        want = [naive_pg(model, X[i], int(y[i]), b, rows[i].tolist(), gap, tail) for i in range(n)]
        np.testing.assert_allclose(got.numpy(), want, rtol=0, atol=1e-12)


@pytest.mark.parametrize("make", [lr_like, mlp_like], ids=["LR-like", "MLP-like"])
@pytest.mark.parametrize("gap,tail", [(1, "drop"), (3, "drop"), (3, "include"), (10, "drop"), (10, "include"), (41, "drop")])
def test_exact_equals_oracle(make, gap, tail):
    G, C, n = 41, 4, 6
    model = make(G, C)
    X, y, b = data(n, G, C, seed=gap)
    W, c, head = _linear_parts(model)
    for order in orderings(n, G, seed=gap):
        fast = pg_exact(W, c, head, X, y, b, order, gap, tail)
        slow = pg_slow(model, X, y, b, order, gap, tail)
        np.testing.assert_allclose(fast.numpy(), slow.numpy(), rtol=0, atol=1e-12)
        curves_fast = pg_exact(W, c, head, X, y, b, order, gap, tail, curves=True)
        curves_slow = pg_slow(model, X, y, b, order, gap, tail, curves=True)
        np.testing.assert_allclose(curves_fast.numpy(), curves_slow.numpy(), rtol=0, atol=1e-12)


def test_exact_small_chunks_give_the_same_numbers():
    G, C, n = 30, 3, 9
    model = mlp_like(G, C)
    X, y, b = data(n, G, C)
    W, c, head = _linear_parts(model)
    for order in orderings(n, G):
        big = pg_exact(W, c, head, X, y, b, order, 4, "include")
        tiny = pg_exact(W, c, head, X, y, b, order, 4, "include", max_elements=1)  # one sample per chunk
        np.testing.assert_allclose(big.numpy(), tiny.numpy(), rtol=0, atol=1e-13)


def test_slow_oracle_chunking_does_not_change_numbers():
    G, C, n = 23, 3, 4
    model = mlp_like(G, C)
    X, y, b = data(n, G, C)
    for order in orderings(n, G):
        whole = pg_slow(model, X, y, b, order, 2, "include")
        for max_elements in (1, G * 5, G * 40):  # one point, several points, several samples per forward pass
            np.testing.assert_allclose(pg_slow(model, X, y, b, order, 2, "include", max_elements=max_elements).numpy(),
                                       whole.numpy(), rtol=0, atol=1e-13)


def test_exact_diffused_model_uses_W_times_A_hat():
    G, C, n = 25, 3, 5
    A_hat = random_operator(G)
    model = DiffusedMLP(A_hat, C).double().eval()
    X, y, b = data(n, G, C)
    lin = model.mlp[0]
    W_eff = lin.weight @ torch.as_tensor(A_hat.T.toarray())  # x Â Wᵀ = x (W Âᵀ)ᵀ
    for order in orderings(n, G):
        fast = pg_exact(W_eff, lin.bias, model.mlp[1:], X, y, b, order, 4, "include")
        np.testing.assert_allclose(fast.numpy(), pg_slow(model, X, y, b, order, 4, "include").numpy(), atol=1e-12)
    assert _linear_parts(model) is None  # not a recognised architecture: the metrics fall back to the slow path
    np.testing.assert_allclose(pg_samples(model, X, y, b, orderings(n, G)[0], 4).numpy(),
                               pg_slow(model, X, y, b, orderings(n, G)[0], 4).numpy())


@pytest.mark.parametrize("name", ["LR", "MLP", "DiffuseLR", "DiffuseMLP"])
def test_igtcga_models_dispatch_to_the_exact_path(name):
    models = pytest.importorskip("igtcga.models")
    G, C, n = 33, 4, 5
    torch.manual_seed(1)
    if name.startswith("Diffuse"): model = getattr(models, name)(random_operator(G, 3), C)
    else: model = getattr(models, name)(G, C)
    if hasattr(model, "bn"):
        with torch.no_grad(): model.bn.running_var.uniform_(0.5, 2); model.bn.running_mean.normal_()
    model.eval()
    assert _linear_parts(model) is not None
    X, y, b = (t.float() if t.is_floating_point() else t for t in data(n, G, C, seed=2))
    for order in orderings(n, G, seed=3):
        fast = pg_samples(model, X, y, b, order, 5, "include", path="fast")
        slow = pg_samples(model, X, y, b, order, 5, "include", path="slow")
        np.testing.assert_allclose(fast.numpy(), slow.numpy(), rtol=0, atol=2e-5)  # float32 models


def test_exact_path_restores_training_mode():
    model = mlp_like(12, 3).train()
    X, y, b = data(4, 12, 3)
    pg_samples(model, X, y, b, torch.arange(12), 3)
    assert model.training and model[1].training


# ---------------------------------------------------------------------------------------------------------------------
# prediction-gap metrics: orderings and aggregation

def small_problem(seed=0, per_class=13, G=20, C=3):
    """A random MLP whose output bias is centred so that it predicts every class; 13 samples predicted per class.
    Inputs, baseline and scores are float32 values (what `Attributions` stores), so hand computations use the same numbers."""
    model = mlp_like(G, C, seed=seed)
    g = torch.Generator().manual_seed(seed)
    pool = torch.randn(600, G, generator=g, dtype=torch.float64).float().double()
    with torch.no_grad():
        model[-1].bias -= model(pool).mean(0)
        pred = model(pool).argmax(1).numpy()
    rows = np.concatenate([np.flatnonzero(pred == c)[:per_class] for c in range(C)])
    assert len(rows) == C * per_class
    X, y = pool[rows], pred[rows].copy()
    y[[0, 1, per_class]] = (y[[0, 1, per_class]] + 1) % C  # three misclassified samples
    A = np.random.default_rng(seed).standard_normal((len(rows), G)).astype(np.float32).astype(np.float64)
    b = torch.randn(G, generator=g, dtype=torch.float64).float().double()
    return model, X, y, A, b


def correct_rows(model, X, y):
    with torch.no_grad(): return model(X).argmax(1).numpy() == y


def macro(per_sample, y_ok):
    return 100 * np.mean([per_sample[y_ok == c].mean() for c in np.unique(y_ok)])


def test_prediction_gaps_exact_equals_slow_and_is_deterministic():
    model, X, y, A, b = small_problem()
    att = att_of(X, y, A, b)
    fast = prediction_gaps(model, att, gap=3, n_random=4, seed=5, adjusted=True)
    slow = prediction_gaps(model, att, gap=3, n_random=4, seed=5, adjusted=True, path="slow")
    assert fast.keys() == slow.keys() == {"PGU_local", "PGI_local", "PGU_global", "PGI_global", "PGR",
                                          "PGU_local_adjusted", "PGU_global_adjusted"}
    for k in fast: assert fast[k] == pytest.approx(slow[k], abs=1e-9)
    assert prediction_gaps(model, att, gap=3, n_random=4, seed=5, adjusted=True) == fast
    table = prediction_gaps(model, att, gap=3, n_random=4, seed=5, per_class=True)
    assert set(table.metric) == {"PGU_local", "PGI_local", "PGU_global", "PGI_global", "PGR"}
    assert table.query("metric == 'PGI_local'").pg.mean() == pytest.approx(fast["PGI_local"])


def test_local_pg_aggregates_correct_samples_per_class_then_macro():
    model, X, y, A, b = small_problem()
    unit = A / np.linalg.norm(A, axis=1, keepdims=True)
    ok = correct_rows(model, X, y)
    per_sample = pg_samples(model, X[ok], torch.as_tensor(y[ok]), b, feature_order(unit[ok], "important"), 3).numpy()
    want = macro(per_sample, y[ok])
    att = att_of(X, y, A, b)
    assert PredictionGap("local", "important", gap=3)(model, att) == pytest.approx(want, abs=1e-10)
    table = PredictionGap("local", "important", gap=3).evaluate(model, att)
    assert table.n_correct.sum() == ok.sum() and table.n_samples.sum() == len(y)


def test_global_ordering_sums_all_studied_samples_including_misclassified():
    model, X, y, A, b = small_problem()
    unit = A / np.linalg.norm(A, axis=1, keepdims=True)
    ok = correct_rows(model, X, y)
    for samples, rows in (("all", np.ones(len(y), bool)), ("correct", ok)):
        order = feature_order(unit[rows].sum(0), "unimportant")
        per_sample = pg_samples(model, X[ok], torch.as_tensor(y[ok]), b, order, 3).numpy()
        got = PredictionGap("global", "unimportant", gap=3, global_samples=samples)(model, att_of(X, y, A, b))
        assert got == pytest.approx(macro(per_sample, y[ok]), abs=1e-10)


def test_global_per_class_ordering():
    model, X, y, A, b = small_problem()
    unit = A / np.linalg.norm(A, axis=1, keepdims=True)
    ok = correct_rows(model, X, y)
    per_class = {c: feature_order(unit[y == c].sum(0), "important") for c in np.unique(y)}
    order = torch.stack([per_class[c] for c in y[ok]])
    per_sample = pg_samples(model, X[ok], torch.as_tensor(y[ok]), b, order, 3).numpy()
    got = PredictionGap("global", global_by="class", gap=3)(model, att_of(X, y, A, b))
    assert got == pytest.approx(macro(per_sample, y[ok]), abs=1e-10)


def test_pgr_is_seeded_and_averages_its_orderings():
    model, X, y, A, b = small_problem()
    att = att_of(X, y, A, b)
    one = [PredictionGap("random", n_random=1, seed=s, gap=3) for s in range(3)]
    assert one[0](model, att) == one[0](model, att)
    assert one[0](model, att) != one[1](model, att)
    rng = np.random.default_rng(7)
    perms = [rng.permutation(20) for _ in range(3)]
    ok = correct_rows(model, X, y)
    means = [macro(pg_samples(model, X[ok], torch.as_tensor(y[ok]), b, torch.as_tensor(p), 3).numpy(), y[ok]) for p in perms]
    assert PredictionGap("random", n_random=3, seed=7, gap=3)(model, att) == pytest.approx(np.mean(means), abs=1e-10)


def test_perfect_and_adversarial_orderings_known_answers():
    "Class c is decided by gene c alone; a sample of class c has x_c = 1 and zeros elsewhere (baseline 0)."
    G, C = 8, 4
    lin = nn.Linear(G, C)
    with torch.no_grad():
        lin.weight.zero_(); lin.bias.zero_()
        for c in range(C): lin.weight[c, c] = 6.0
    X = torch.eye(G)[[0, 1, 2, 3] * 3]
    y = np.array([0, 1, 2, 3] * 3)
    p_own = math.exp(6) / (math.exp(6) + C - 1)
    perfect = att_of(X, y, X.numpy() + 1e-3 * np.arange(G))
    adversarial = att_of(X, y, -(X.numpy() + 1e-3 * np.arange(G)))
    assert PredictionGap("local", gap=2)(lin, perfect) == pytest.approx(100 * (p_own - 1 / C), rel=1e-6)
    assert PredictionGap("local", "unimportant", gap=2)(lin, perfect) == pytest.approx(100 * (p_own - 1 / C) * 2 / G, rel=1e-6)
    assert PredictionGap("local", gap=2)(lin, adversarial) == pytest.approx(100 * (p_own - 1 / C) * 2 / G, rel=1e-6)
    # gap 3: the last G mod 3 = 2 genes are never replaced unless tail="include"
    assert PredictionGap("local", "unimportant", gap=3)(lin, perfect) == 0
    assert PredictionGap("local", "unimportant", gap=3, tail="include")(lin, perfect) == pytest.approx(
        100 * (p_own - 1 / C) * 2 / G, rel=1e-6)


def test_adjusted_pg_divides_by_one_minus_baseline_probability():
    model, X, y, A, b = small_problem()
    att = att_of(X, y, A, b)
    table = PredictionGap("local", "unimportant", gap=3).evaluate(model, att)
    with torch.no_grad(): p_b = torch.softmax(model(b[None]), -1)[0].numpy()
    np.testing.assert_allclose(table.p_baseline, p_b[table["class"]])
    np.testing.assert_allclose(table.pg_adjusted, table.pg / (1 - table.p_baseline))
    got = PredictionGap("local", "unimportant", gap=3, adjusted=True)(model, att)
    assert got == pytest.approx(table.pg_adjusted.mean())


def test_studied_classes_and_a_class_without_correct_samples():
    "The studied classes are the distinct targets of the rows; subsetting the attributions studies fewer."
    model, X, y, A, b = small_problem()
    att = att_of(X, y, A, b)
    pred = model(X).argmax(1).detach().numpy()
    c0 = int(np.bincount(y).argmax())
    only = PredictionGap("local", gap=3).evaluate(model, att.subset(y == c0))
    assert only["class"].tolist() == [c0] and only.n_samples.item() == (y == c0).sum()
    assert only.pg.item() == pytest.approx(PredictionGap("local", gap=3).evaluate(model, att).set_index("class").pg[c0], abs=1e-10)
    y_bad = y.copy()
    y_bad[y_bad == c0] = (pred[y_bad == c0] + 1) % 3  # every sample of class c0 now misclassified
    with pytest.warns(UserWarning, match="no correctly classified"):
        value = PredictionGap("local", gap=3)(model, att_of(X, y_bad, A, b))
    assert np.isfinite(value)


def test_prediction_gap_bad_input():
    model, X, y, A, b = small_problem()
    att = att_of(X, y, A, b)
    with pytest.raises(ValueError, match="scope must be one of"): PredictionGap("best")
    with pytest.raises(ValueError, match="first must be one of"): PredictionGap("local", "top")
    with pytest.raises(ValueError, match="path must be one of"): PredictionGap(path="exact")
    with pytest.raises(ValueError, match="gap must be an integer >= 1"): PredictionGap(gap=0)
    with pytest.raises(TypeError, match="must be an `Attributions`"): PredictionGap("local")(model, None)
    with pytest.raises(ValueError, match="inputs have shape"): att_of(X, y, A[:, :5], b)
    with pytest.raises(ValueError, match="baseline has shape"): att_of(X, y, A, b[:3])
    with pytest.raises(ValueError, match="carry no model inputs"): PredictionGap()(model, Attributions(scores=A, targets=y))
    with pytest.raises(ValueError, match="targets must be in"): PredictionGap()(model, att_of(X, y + 10, A, b))
    with pytest.raises(ValueError, match="NaN"): PredictionGap()(model, att_of(X, y, np.full_like(A, np.nan), b))
    with pytest.raises(TypeError, match="torch.nn.Module"): PredictionGap()(lambda x: x, att)
    with pytest.raises(ValueError, match="targets must be integer"): pg_slow(model, X, y.astype(float), b, torch.arange(20))
    with pytest.raises(ValueError, match="permutation"): pg_slow(model, X, y, b, torch.zeros(20, dtype=torch.long))
    with pytest.raises(ValueError, match="permutation"): pg_slow(model, X, y, b, torch.arange(19))
    with pytest.raises(ValueError, match="integer gene indices"): pg_slow(model, X, y, b, torch.arange(20.))
    with pytest.raises(ValueError, match="gap must be an integer"): pg_points(20, 21)
    with pytest.raises(ValueError, match="no linear first layer"):
        pg_samples(nn.Sequential(nn.ReLU(), nn.Linear(20, 3)).double(), X, y, b, torch.arange(20), path="fast")
    with pytest.raises(ValueError, match="no linear first layer"):
        PredictionGap(path="fast")(nn.Sequential(nn.ReLU(), nn.Linear(20, 3)).double(), att)
    W, c, head = _linear_parts(model)
    with pytest.raises(ValueError, match="columns but the inputs have"): pg_exact(W[:, :5], c, head, X, y, b, torch.arange(20))


# ---------------------------------------------------------------------------------------------------------------------
# the evaluation contract: one call shape for every metric

def truth_problem(seed=0):
    "`small_problem` with a made-up ground truth (4 informative genes per class) recorded on its attributions."
    model, X, y, A, b = small_problem(seed)
    truth = {c: np.arange(4 * c, 4 * c + 4) for c in range(3)}
    ok = correct_rows(model, X, y)
    att = att_of(X, y, A, b, predictions=np.where(ok, y, (y + 1) % 3), truth=truth)
    return model, att


def test_contract_a_list_of_metrics_in_a_loop_equals_the_individual_calls():
    model, att = truth_problem()
    metrics = [PredictionGap("local", gap=3), PredictionGap("local", "unimportant", gap=3), PredictionGap("global", gap=3),
               PredictionGap("global", "unimportant", gap=3), PredictionGap("random", gap=3, n_random=4, seed=5),
               FeatureAgreement("local"), FeatureAgreement("global", "intersect_rank_scores"),
               FeatureAgreement("local", diffusion=random_operator(20, 4)), AttributionAUC("roc"), AttributionAUC("pr", "global")]
    out = evaluate(model, att, metrics)
    assert list(out) == ["PGI_local", "PGU_local", "PGI_global", "PGU_global", "PGR", "FA_local", "FA_global",
                         "FA_local_diffused", "AUROC_local", "AUPRC_global"]
    for m in metrics: assert out[m.name] == m(model, att), m.name
    # the bundles are such loops too
    pgs = prediction_gaps(model, att, gap=3, n_random=4, seed=5)
    assert pgs == {k: out[k] for k in pgs}
    fas = feature_agreements(model, att, rule="intersect_rank_scores", auc=True)
    assert {k: fas[k] for k in ("FA_local", "FA_global", "AUROC_local")} == {k: out[k] for k in ("FA_local", "FA_global", "AUROC_local")}
    # model-free metrics accept None; every metric's evaluate returns the table behind the number
    assert evaluate(None, att, metrics[5:]) == {k: out[k] for k in list(out)[5:]}
    for m in metrics: assert isinstance(m.evaluate(model, att), pd.DataFrame)
    assert list(AttributionAUC().evaluate(None, att).columns) == ["group", "n_samples", "k", "fa"]
    curves = AccuracyCurves(k_class=[1, 2], k_global=[1, 5], n_random=2)
    assert curves.name == "curves"
    pd.testing.assert_frame_equal(evaluate(model, att, [curves])["curves"],
                                  accuracy_curves(model, att, k_class=[1, 2], k_global=[1, 5], n_random=2))


def test_contract_prediction_gap_equals_the_slow_brute_force_by_hand():
    "PredictionGap(...)(model, att) is the mean over correct rows of each target class of pg_slow, then the macro mean."
    model, att = truth_problem(1)
    X = torch.as_tensor(att.inputs, dtype=torch.float64)
    b = torch.as_tensor(att.baseline, dtype=torch.float64)
    y = att.targets
    ok = correct_rows(model, X, y)
    assert 0 < ok.sum() < len(y)
    unit = att.scores.astype(np.float64) / np.linalg.norm(att.scores.astype(np.float64), axis=1, keepdims=True)
    yt = torch.as_tensor(y[ok])
    cases = {("local", "important"): [torch.as_tensor(np.argsort(-unit[ok], 1))],
             ("local", "unimportant"): [torch.as_tensor(np.argsort(unit[ok], 1))],
             ("global", "important"): [torch.as_tensor(np.argsort(-unit.sum(0)))],
             ("global", "unimportant"): [torch.as_tensor(np.argsort(unit.sum(0)))]}
    rng = np.random.default_rng(2)
    cases[("random", "important")] = [torch.as_tensor(rng.permutation(att.n_genes)) for _ in range(3)]
    for (scope, first), orders in cases.items():
        per_sample = np.mean([pg_slow(model, X[ok], yt, b, o, gap=4).numpy() for o in orders], axis=0)
        metric = PredictionGap(scope, first, gap=4, n_random=3, seed=2)
        assert metric(model, att) == pytest.approx(macro(per_sample, y[ok]), abs=1e-10), metric.name
    # the correct rows are recomputed with the model: the predictions recorded on `att` do not matter
    wrong = att_of(att.inputs, y, att.scores, att.baseline, predictions=(y + 1) % 3)
    assert PredictionGap(gap=4)(model, wrong) == PredictionGap(gap=4)(model, att)


def test_contract_saved_without_inputs_and_reattached_gives_identical_metrics(tmp_path):
    from igtcga.data import ExprData
    G, C = 12, 3
    rng = np.random.default_rng(0)
    y = np.repeat(np.arange(C), 10)
    X = (rng.normal(size=(30, G)) + 2 * np.eye(C, G)[y]).astype(np.float32)
    d = ExprData(X, y, ["a", "b", "c"], [f"g{i}" for i in range(G)], truth={c: [3 * c, 3 * c + 1, 3 * c + 2] for c in range(C)})
    model = mlp_like(G, C, seed=2).float()
    with torch.no_grad(): model[-1].bias -= model(torch.as_tensor(X)).mean(0)
    att = explain(model, d, n_steps=32, tol=None, quiet=True)
    metrics = [PredictionGap(gap=2), PredictionGap("global", "unimportant", gap=2), PredictionGap("random", gap=2, n_random=3),
               FeatureAgreement(), FeatureAgreement("global"), AttributionAUC()]
    want = evaluate(model, att, metrics)
    bare = Attributions.load(att.save(tmp_path / "att.npz", inputs=False))
    assert bare.inputs is None and bare.truth is not None
    with pytest.raises(ValueError, match="carry no model inputs"): PredictionGap()(model, bare)
    assert evaluate(None, bare, metrics[3:]) == {k: want[k] for k in ("FA_local", "FA_global", "AUROC_local")}  # FA needs no inputs
    again = bare.with_inputs(X)
    assert evaluate(model, again, metrics) == want
    pd.testing.assert_frame_equal(accuracy_curves(model, again, k_class=[1], k_global=[1, 4], n_random=2),
                                  accuracy_curves(model, att, k_class=[1], k_global=[1, 4], n_random=2))
    full = Attributions.load(att.save(tmp_path / "full.npz"))
    assert evaluate(model, full, metrics) == want


def test_contract_raw_arrays_are_refused_with_how_to_build_attributions():
    model, X, y, A, b = small_problem()
    how = r"Attributions\(scores=A, targets=y, labels=y, inputs=X, baseline=b\)"
    for call in (lambda: PredictionGap()(model, A), lambda: PredictionGap().evaluate(model, A),
                 lambda: prediction_gaps(model, A), lambda: FeatureAgreement()(None, A), lambda: AttributionAUC()(None, A),
                 lambda: feature_agreements(None, A), lambda: accuracy_curves(model, A),
                 lambda: parameter_randomisation_test(model, A), lambda: evaluate(model, A, [PredictionGap()])):
        with pytest.raises(TypeError, match=how): call()

    class Scores:  # an object that only looks like attributions is refused too
        scores = A
    with pytest.raises(TypeError, match="got Scores"): PredictionGap(gap=3)(model, Scores())
    no_truth = att_of(X, y, A, b)
    for metric in (FeatureAgreement(), FeatureAgreement("global"), AttributionAUC()):
        with pytest.raises(ValueError, match="no ground truth"): metric(model, no_truth)
    with pytest.raises(ValueError, match="no ground truth"): feature_agreements(None, no_truth)


# ---------------------------------------------------------------------------------------------------------------------
# feature agreement and AUCs

def test_unit_rows_and_diffuse():
    a = np.array([[3., 4., 0.], [0., 0., 0.]])
    np.testing.assert_allclose(unit_rows(a), [[.6, .8, 0], [0, 0, 0]])
    A_hat = random_operator(3, 1)
    np.testing.assert_allclose(diffuse(a, A_hat), a @ A_hat.toarray())
    np.testing.assert_allclose(diffuse(a, A_hat.toarray()), a @ A_hat.toarray())
    np.testing.assert_allclose(diffuse(torch.as_tensor(a), torch.as_tensor(A_hat.toarray()).to_sparse()), a @ A_hat.toarray())

    class Graph:
        diffusion = A_hat
    np.testing.assert_allclose(diffuse(a, Graph()), a @ A_hat.toarray())
    with pytest.raises(ValueError, match="must be square"): diffuse(a, np.ones((3, 2)))
    with pytest.raises(ValueError, match="have 3 genes"): diffuse(a, np.eye(4))


def fa_case(seed=0, n_per=30, G=40, k=5):
    rng = np.random.default_rng(seed)
    truth = {g: np.arange(g * k, (g + 1) * k) for g in range(3)}
    groups = np.repeat(np.arange(3), n_per)
    member = np.zeros((len(groups), G))
    for i, g in enumerate(groups): member[i, truth[g]] = 1
    return truth, groups, member, rng.random((len(groups), G)).astype(np.float32).astype(np.float64)


def fa_att(A, groups, truth, correct=None):
    "Attributions of rows of `groups` with ground truth `truth`; `correct` becomes the recorded predictions."
    pred = groups if correct is None else np.where(correct, groups, (groups + 1) % 3)
    return Attributions(scores=A, targets=groups, labels=groups, predictions=pred, truth=truth)


def naive_local_fa(A, groups, informative, correct):
    per_group = []
    for g in sorted(set(groups[correct]) & set(informative)):
        k = len(informative[g])
        hits = [len(set(np.argsort(-A[i] / np.linalg.norm(A[i]), kind="stable")[:k].tolist()) & set(informative[g].tolist()))
                for i in np.flatnonzero(correct & (groups == g))]
        per_group.append(sum(hits) / (len(hits) * k))
    return 100 * np.mean(per_group)


def test_fa_known_answers_and_independent_cross_check():
    truth, groups, member, noise = fa_case()
    for scope in ("local", "global"):
        assert FeatureAgreement(scope)(None, fa_att(member + 0.1 * noise, groups, truth)) == 100
        assert FeatureAgreement(scope)(None, fa_att(-member + 0.1 * noise, groups, truth)) == 0
    mixed = (member * np.random.default_rng(1).random(member.shape) + noise).astype(np.float32)
    correct = np.random.default_rng(2).random(len(groups)) > 0.3
    att = fa_att(mixed, groups, truth, correct)
    assert np.array_equal(att.correct, correct)
    assert FeatureAgreement("local")(None, att) == pytest.approx(naive_local_fa(mixed.astype(np.float64), groups, truth, correct))
    # the array form gives the same table as the Attributions form
    for metric in (FeatureAgreement("local"), FeatureAgreement("global", "intersect_rank_scores"), AttributionAUC("pr")):
        pd.testing.assert_frame_equal(metric.evaluate_arrays(mixed, groups, truth, correct), metric.evaluate(None, att))
    many = np.random.default_rng(3).random((3000, 40))
    g_many = np.repeat(np.arange(3), 1000)
    assert FeatureAgreement("local")(None, fa_att(many, g_many, truth)) == pytest.approx(100 * 5 / 40, abs=1.0)


def test_global_fa_rules_on_a_hand_built_case():
    # 3 samples of one group, informative genes {0, 1}. Raw sums (2, 1.8, 10, -0.003) rank genes 2 and 0 first, while
    # the samples' top-2 lists are {0, 1}, {0, 1}, {2, 0}: rank_mean_scores finds 1 of 2, intersect_rank_scores 2 of 2.
    A = np.array([[1., .9, 0., 0.], [1., .9, 0., 0.], [0., 0., 10., 0.]])
    A = A + np.array([0, 0, 0, -1e-3])  # gene 3 below the zeros of the third sample
    g, truth = np.zeros(3, int), {0: np.array([0, 1])}
    att = Attributions(scores=A, targets=g, labels=g, truth=truth)
    assert FeatureAgreement("global", normalize=False)(None, att) == 50
    assert FeatureAgreement("global", "intersect_rank_scores", normalize=False)(None, att) == 100
    # normalisation changes rank_mean_scores: every sample then weighs the same
    assert FeatureAgreement("global")(None, att) == 100
    assert FeatureAgreement("global").evaluate_arrays(A, g, truth).fa.item() == 100


def test_informative_genes_rules_and_exprdata():
    own = {0: [0, 1], 1: [2], 2: [3, 4]}
    assert {k: v.tolist() for k, v in informative_genes(own).items()} == {0: [0, 1], 1: [2], 2: [3, 4]}
    two = informative_genes({0: [0, 1], 1: [2]})
    assert two[0].tolist() == two[1].tolist() == [0, 1, 2]
    assert informative_genes({0: [0, 1], 1: [2]}, rule="own")[0].tolist() == [0, 1]
    data_mod = pytest.importorskip("igtcga.data")
    # SimuC-like: subclasses 0..2 are class 0, subclass 3 is class 1
    sub = np.array([0, 0, 1, 1, 2, 2, 3, 3])
    d = data_mod.ExprData(np.ones((8, 10)), (sub == 3).astype(int), ["tumour", "normal"], [f"g{i}" for i in range(10)],
                          truth={0: [0, 1], 1: [2, 3], 2: [4, 5], 3: [8, 9]}, subclass=sub)
    inf = informative_genes(d)
    assert inf[1].tolist() == [2, 3, 8, 9] and inf[3].tolist() == [0, 1, 2, 3, 4, 5, 8, 9]
    # a subset without subclass 3 still knows its class from the simulation's regroup map
    d.meta = {"simulation": {"regroup": np.array([0, 0, 0, 1])}}
    assert informative_genes(d.subset(sub != 3))[1].tolist() == [2, 3, 8, 9]
    with pytest.raises(KeyError, match="does not give the class"): informative_genes({0: [1], 5: [2]}, group_class={0: 0})
    with pytest.raises(ValueError, match="rule must be"): informative_genes(own, rule="all")


def test_feature_agreements_on_exprdata_studies_subclasses_of_the_studied_class():
    data_mod = pytest.importorskip("igtcga.data")
    rng = np.random.default_rng(0)
    sub = np.repeat([0, 1, 2], 20)
    truth = {0: [0, 1, 2], 1: [3, 4, 5], 2: [6, 7, 8]}
    d = data_mod.ExprData(rng.random((60, 12)), (sub == 2).astype(int), ["a", "b"], [f"g{i}" for i in range(12)],
                          truth=truth, subclass=sub)
    inf = informative_genes(d)
    perfect = np.zeros((60, 12))
    for i, s in enumerate(sub): perfect[i, inf[s]] = 1
    perfect += 0.01 * rng.random((60, 12))
    # what `explain` records for this dataset: each row's subclass as its group, the informative sets as the truth
    lin = nn.Linear(12, 2).double()
    recorded = explain(lin, d, method="saliency", quiet=True)
    assert np.array_equal(recorded.groups, sub) and {k: v.tolist() for k, v in recorded.truth.items()} == {k: v.tolist() for k, v in inf.items()}
    att = Attributions(scores=perfect, targets=d.y, labels=d.y, groups=recorded.groups, truth=recorded.truth)
    assert np.array_equal(att.ground_truth()[0], sub)
    studied = att.subset(d.y == 0)  # the tumour-like class 0 and its subclasses 0 and 1
    out = feature_agreements(None, studied, diffusion=np.eye(12), auc=True)
    assert out["FA_local"] == out["FA_global"] == out["FA_local_diffused"] == 100
    assert out["AUROC_local"] == out["AUPRC_global"] == 100
    assert FeatureAgreement().evaluate(None, studied).group.tolist() == [0, 1]
    # only subclasses 0 and 1 are studied: a wrong attribution for subclass 2 does not matter
    wrong = perfect.copy(); wrong[sub == 2] = -wrong[sub == 2]
    wrong_att = Attributions(scores=wrong, targets=d.y, labels=d.y, groups=sub, truth=inf)
    assert feature_agreements(None, wrong_att.subset(d.y == 0))["FA_local"] == 100
    assert feature_agreements(None, wrong_att)["FA_local"] < 100
    with pytest.raises(ValueError, match="strict subset of the 5 genes"):  # scores with fewer genes than the truth knows
        feature_agreements(None, Attributions(scores=perfect[:, :5], targets=d.y, labels=d.y, groups=sub, truth=inf))


def test_auc_against_sklearn_with_ties():
    from sklearn.metrics import average_precision_score, roc_auc_score
    truth, groups, member, noise = fa_case(n_per=4)
    A = np.round(member * noise + noise, 1)  # heavy ties
    for curve, ref in (("roc", roc_auc_score), ("pr", average_precision_score)):
        t = AttributionAUC(curve, normalize=False).evaluate_arrays(A, groups, truth)
        want = [np.mean([ref(member[i].astype(bool), A[i]) for i in np.flatnonzero(groups == g)]) for g in range(3)]
        np.testing.assert_allclose(t.fa, 100 * np.array(want), atol=1e-10)
        tg = AttributionAUC(curve, "global", normalize=False).evaluate_arrays(A, groups, truth)
        want = [ref(member[groups == g][0].astype(bool), A[groups == g].sum(0)) for g in range(3)]
        np.testing.assert_allclose(tg.fa, 100 * np.array(want), atol=1e-10)
    assert AttributionAUC()(None, fa_att(member + 0.1 * noise, groups, truth)) == 100
    assert AttributionAUC()(None, fa_att(-member + 0.1 * noise, groups, truth)) == 0


def test_fa_bad_input():
    truth, groups, member, noise = fa_case()
    fa = FeatureAgreement()
    with pytest.raises(ValueError, match="scope must be one of"): FeatureAgreement("sample")
    with pytest.raises(ValueError, match="rule must be one of"): FeatureAgreement("global", "vote")
    with pytest.raises(ValueError, match="curve must be one of"): AttributionAUC("det")
    with pytest.raises(ValueError, match="groups has"): fa.evaluate_arrays(noise, groups[:5], truth)
    with pytest.raises(ValueError, match="groups has"): Attributions(scores=noise, targets=groups, groups=groups[:5], truth=truth)
    with pytest.raises(ValueError, match="correct must be a boolean mask"): fa.evaluate_arrays(noise, groups, truth, correct=np.ones(3))
    with pytest.raises(KeyError, match="no informative genes"): fa.evaluate_arrays(noise, groups, {0: [1]}, studied=[0, 1])
    with pytest.raises(ValueError, match="non-empty strict subset"): fa(None, fa_att(noise, groups, {0: [], 1: [1], 2: [2]}))
    with pytest.raises(ValueError, match="non-empty strict subset"): fa.evaluate_arrays(noise, groups, {0: [], 1: [1], 2: [2]})
    with pytest.raises(ValueError, match="2-D"): fa.evaluate_arrays(noise[0], groups, truth)
    with pytest.raises(ValueError, match="2-D"): fa_att(noise[0], groups, truth)
    unlabelled = Attributions(scores=noise, targets=groups, truth=truth)  # no labels and no groups: no group per row
    with pytest.raises(ValueError, match="labels are unknown"): fa(None, unlabelled)
    # groups absent from the truth are skipped; a group without correct rows is left out with a warning
    assert fa(None, fa_att(member + 0.1 * noise, groups, {0: truth[0]})) == 100
    with pytest.warns(UserWarning, match="no correct sample"):
        assert fa(None, fa_att(member + 0.1 * noise, groups, truth, correct=groups != 1)) == 100


# ---------------------------------------------------------------------------------------------------------------------
# curves

def one_gene_per_class(G=8, C=4):
    lin = nn.Linear(G, C)
    with torch.no_grad():
        lin.weight.zero_(); lin.bias.zero_()
        for c in range(C): lin.weight[c, c] = 5.0
    X = torch.eye(G)[list(range(C)) * 5]
    y = np.array(list(range(C)) * 5)
    return lin, X, y, X.numpy() + 1e-3 * np.arange(G)


def test_curves_known_answers():
    lin, X, y, perfect = one_gene_per_class()
    t = accuracy_curves(lin, att_of(X, y, perfect), k_class=[1, 2], k_global=[1, 2, 4, 8], n_random=400, seed=0)
    at = lambda c, k: t.query("curve == @c and k == @k")
    assert at("top per class", 1).balanced_accuracy.item() == 100 and at("top per class", 1).n_kept.item() == 4
    assert at("bottom per class", 1).n_kept.item() == 4 and at("bottom per class", 1).balanced_accuracy.item() == 25
    assert at("top overall", 4).balanced_accuracy.item() == 100
    assert at("bottom overall", 4).balanced_accuracy.item() == pytest.approx(25)
    assert at("top overall", 8).balanced_accuracy.item() == 100
    # random k genes: class 0 is always right (ties resolve to 0); class c > 0 is right when gene c is kept (prob k/G)
    for k in (1, 2, 4):
        assert at("random", k).balanced_accuracy.mean() == pytest.approx(100 * (1 + 3 * k / 8) / 4, abs=3)
        assert len(at("random", k)) == 400
    # outside the union of the per-class top k (genes 0..3 and the next-ranked ones): only class 0 is right. With
    # k = 4 the union has 7 genes, leaving fewer than 4 outside, so k = 4 is not a valid point
    assert set(t.query("curve == 'random outside top'").k) == {1, 2}
    assert (t.query("curve == 'random outside top'").balanced_accuracy == 25).all()
    # attributions on the own gene only: ties rank genes 0..3 first for every class, the union of the top 4 is {0..3},
    # and k = 4 = G/2 is the last valid point, which the reference dropped (protocol §12, B14)
    t2 = accuracy_curves(lin, att_of(X, y, X.numpy()), curves=["random outside top"], k_global=[1, 2, 4, 5], n_random=5)
    assert set(t2.k) == {1, 2, 4} and (t2.balanced_accuracy == 25).all()
    assert set(t.columns) == {"curve", "k", "n_kept", "draw", "balanced_accuracy", "accuracy"}


def test_curves_use_only_correct_samples_and_masks_are_right():
    lin, X, y, perfect = one_gene_per_class()
    y_wrong = y.copy(); y_wrong[:2] = (y[:2] + 1) % 4
    att = att_of(X, y_wrong, perfect)
    t = accuracy_curves(lin, att, curves=["top overall"], k_global=[8])
    assert t.balanced_accuracy.item() == 100  # all genes kept: every correctly classified sample stays correct
    t2 = accuracy_curves(lin, att, curves=["top overall"], k_global=[8], only_correct=False)
    assert t2.accuracy.item() == pytest.approx(100 * 18 / 20)
    # an explicit zero baseline is the same as none (the replacement value defaults to zero)
    b = np.zeros(8, np.float32)
    pd.testing.assert_frame_equal(accuracy_curves(lin, att_of(X, y_wrong, perfect, b), curves=["top overall"], k_global=[8]), t)


def test_gene_grid_scores_and_ranks():
    assert gene_grid(15000).tolist()[:12] == [1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 20, 30]
    assert gene_grid(15000).max() == 14900 and gene_grid(15000, "class")[27:29].tolist() == [190, 200]
    A = np.array([[1., -3., 0.], [1., 1., 0.], [-2., 0., 1.]])
    y = np.array([0, 0, 1])
    u = A / np.linalg.norm(A, axis=1, keepdims=True)
    classes, per = class_gene_scores(A, y)
    assert classes == [0, 1]
    np.testing.assert_allclose(per, np.abs([u[:2].mean(0), u[2]]))
    np.testing.assert_allclose(gene_scores(A, y), (np.abs(u[:2]).mean(0) + np.abs(u[2])) / 2)
    np.testing.assert_allclose(gene_scores(A, how="sum"), u.sum(0))
    assert gene_ranks([3., 1., 2.]).tolist() == [0, 2, 1]
    with pytest.raises(ValueError, match="needs the targets"): gene_scores(A)


def test_curves_bad_input_and_figure():
    lin, X, y, perfect = one_gene_per_class()
    att = att_of(X, y, perfect)
    with pytest.raises(ValueError, match="unknown curve"): accuracy_curves(lin, att, curves=["best"])
    with pytest.raises(ValueError, match="unknown curve"): AccuracyCurves(curves=["best"])(lin, att)
    with pytest.raises(ValueError, match="k_global must be"): accuracy_curves(lin, att, k_global=[0, 2])
    with pytest.raises(ValueError, match="no correctly classified sample"):
        accuracy_curves(lin, att_of(X, (y + 1) % 4, perfect))
    t = accuracy_curves(lin, att, k_class=[1], k_global=[1, 2], n_random=3)
    pd.testing.assert_frame_equal(AccuracyCurves(k_class=[1], k_global=[1, 2], n_random=3)(lin, att), t)
    import matplotlib
    matplotlib.use("Agg")
    fig = plot_curves(t)
    assert fig.axes[0].get_xscale() == "log"


# ---------------------------------------------------------------------------------------------------------------------
# stability of rankings

def test_topk_overlap_known_answers():
    s = np.arange(50.)
    t = topk_overlap(s, s, [1, 10, 50])
    assert t.overlap.tolist() == [100] * 3 and t.jaccard.tolist() == [100] * 3
    r = topk_overlap(s, -s, [10, 25, 40])
    np.testing.assert_allclose(r.overlap, [0, 0, 100 * 30 / 40])
    np.testing.assert_allclose(r.jaccard, [0, 0, 100 * 30 / 50])
    rng = np.random.default_rng(0)
    means = np.mean([topk_overlap(rng.random(500), rng.random(500), [20, 100]).overlap for _ in range(300)], axis=0)
    np.testing.assert_allclose(means, [100 * 20 / 500, 100 * 100 / 500], atol=1.5)


def test_topk_overlap_matches_set_arithmetic():
    rng = np.random.default_rng(1)
    a, b = rng.random(200), rng.random(200)
    ks = [1, 7, 33, 200]
    t = topk_overlap(a, b, ks)
    for k, ov, jac in zip(ks, t.overlap, t.jaccard):
        A, B = set(np.argsort(-a)[:k]), set(np.argsort(-b)[:k])
        assert ov == pytest.approx(100 * len(A & B) / k) and jac == pytest.approx(100 * len(A & B) / len(A | B))


def test_ranking_stability_and_correlations():
    rng = np.random.default_rng(2)
    M = rng.random((3, 60))
    t = ranking_stability(M, ks=[5, 10], names=["a", "b", "c"])
    assert len(t) == 6 and set(zip(t.a, t.b)) == {("a", "b"), ("a", "c"), ("b", "c")}
    rc = rank_correlations({"x": M[0], "y": M[1]})
    assert rc.spearman.item() == pytest.approx(spearmanr(M[0], M[1])[0])
    assert rc.kendall.item() == pytest.approx(kendalltau(M[0], M[1])[0])
    import matplotlib
    matplotlib.use("Agg")
    fig = plot_stability_heatmap(t, k=5)
    assert len(fig.axes) == 2  # heatmap and colour bar
    with pytest.raises(ValueError, match="k=7 is not in the table"): plot_stability_heatmap(t, k=7)
    with pytest.raises(ValueError, match="at least two"): ranking_stability(M[:1])
    with pytest.raises(ValueError, match="names for"): ranking_stability(M, names=["a"])
    with pytest.raises(ValueError, match="ks must be in"): topk_overlap(M[0], M[1], [0])
    with pytest.raises(ValueError, match="have 60 and 59 genes"): topk_overlap(M[0], M[1, :59])


# ---------------------------------------------------------------------------------------------------------------------
# sanity checks

def gradient(model, inputs, targets):
    X = torch.as_tensor(inputs, dtype=torch.float32).clone().requires_grad_()
    model(X).gather(1, torch.as_tensor(targets)[:, None]).sum().backward()
    return X.grad.numpy()


def test_attribution_similarity_known_answers():
    rng = np.random.default_rng(0)
    a = rng.standard_normal((50, 100))
    same = attribution_similarity(a, 2 * a, ks=(10,))
    assert same["spearman"] == pytest.approx(1) and same["top10_overlap"] == 100
    assert attribution_similarity(a, -a)["spearman"] == pytest.approx(-1)
    assert attribution_similarity(a, -a)["spearman_abs"] == pytest.approx(1)
    indep = attribution_similarity(a, rng.standard_normal((50, 100)), ks=(10,))
    assert abs(indep["spearman"]) < 0.05 and indep["top10_overlap"] == pytest.approx(10, abs=3)
    with pytest.raises(ValueError, match="shapes"): attribution_similarity(a, a[:, :5])


def test_parameter_randomisation_cascade_and_independent():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(30, 8), nn.ReLU(), nn.Linear(8, 3)).eval()
    X = torch.randn(100, 30)
    y = model(X).argmax(1).numpy()
    att = att_of(X, y, gradient(model, X, y))
    t = parameter_randomisation_test(model, att, gradient, ks=(5,))
    assert t.layer.tolist() == ["2", "2 + 0"]
    assert abs(t.spearman.iloc[-1]) < 0.2 and t.spearman.iloc[0] > t.spearman.iloc[-1]  # fully randomised: unrelated
    t_ind = parameter_randomisation_test(model, att, gradient, cascade=False, ks=(5,))
    assert t_ind.layer.tolist() == ["2", "0"]
    blind = parameter_randomisation_test(model, att_of(X, y, X.numpy()), lambda m, X, y: np.asarray(X), ks=(5,))
    assert (blind.spearman == 1).all()
    w = model[0].weight.clone()
    parameter_randomisation_test(model, att, gradient)
    assert torch.equal(model[0].weight, w)  # the original model is untouched
    assert parameter_randomisation_test(model, att, gradient, seed=3).equals(parameter_randomisation_test(model, att, gradient, seed=3))


def test_sanity_checks_default_explainer_reruns_the_method_and_settings_of_att():
    torch.manual_seed(1)
    model = nn.Sequential(nn.Linear(30, 8), nn.ReLU(), nn.Linear(8, 3)).eval()
    X = torch.randn(40, 30)
    y = model(X).argmax(1).numpy()
    att = explain(model, X.numpy(), labels=y, baseline=np.full(30, 0.5), n_steps=24, tol=None, quiet=True)
    assert att.method == "integrated_gradients" and att.settings["n_steps"] == 24
    ig = lambda m, inputs, targets: integrated_gradients(m, inputs, targets, np.full(30, 0.5), n_steps=24, quiet=True)
    pd.testing.assert_frame_equal(parameter_randomisation_test(model, att, ks=(5,)), parameter_randomisation_test(model, att, ig, ks=(5,)))
    sal = explain(model, X.numpy(), labels=y, method="saliency", output="logit", quiet=True)
    by_hand = lambda m, inputs, targets: attribute(m, inputs, targets, 0.0, output="logit", method="saliency", quiet=True)
    pd.testing.assert_frame_equal(parameter_randomisation_test(model, sal, ks=(5,)), parameter_randomisation_test(model, sal, by_hand, ks=(5,)))
    assert parameter_randomisation_test(model, sal).spearman.iloc[0] < 0.5  # output layer re-drawn: the gradients change

    def train_fn(inputs, lab, seed):
        torch.manual_seed(seed)
        return nn.Sequential(nn.Linear(30, 8), nn.ReLU(), nn.Linear(8, 3)).eval()
    pd.testing.assert_frame_equal(label_permutation_test(None, sal, train_fn, X, y, seed=2),
                                  label_permutation_test(model, sal, train_fn, X, y, by_hand, seed=2))


def test_label_permutation_calls_train_fn_with_permuted_labels():
    torch.manual_seed(0)
    X = torch.randn(60, 10)
    labels = np.repeat([0, 1, 2], 20)
    seen = {}

    def train_fn(inputs, lab, seed):
        seen.update(labels=lab, seed=seed)
        torch.manual_seed(seed)
        return nn.Linear(10, 3)
    att = att_of(X, labels, np.random.default_rng(0).random((60, 10)))
    t = label_permutation_test(None, att, train_fn, X, labels, gradient, seed=4)
    assert sorted(seen["labels"].tolist()) == sorted(labels.tolist()) and not np.array_equal(seen["labels"], labels)
    assert seen["seed"] == 4
    assert {"check", "balanced_accuracy", "spearman", "spearman_abs", "top10_overlap"} <= set(t.columns)


def test_feature_order_kinds():
    s = np.array([[0.3, -1., 2., 0.]])
    assert feature_order(s).tolist() == [[2, 0, 3, 1]]
    assert feature_order(s, "unimportant").tolist() == [[1, 3, 0, 2]]
    with pytest.raises(ValueError, match="first must be one of"): feature_order(s, "top")


def test_informative_genes_of_a_simulated_dataset_with_subclasses():
    simulation = pytest.importorskip("igtcga.simulation")
    params = simulation.SimParams("toyB", n_generated=3, n_genes=200, n_pathways=20, n_overexpressed=4, n_samples=60,
                                  regroup=(0, 0, 1))
    d = simulation.simulate(params, seed=0)
    inf = informative_genes(d)
    assert d.subclass is not None and sorted(inf) == [0, 1, 2]
    for s in (0, 1):  # own 40 genes plus the 40 genes of class 1 (subclass 2), protocol §3.5
        assert inf[s].tolist() == sorted(set(d.truth[s].tolist()) | set(d.truth[2].tolist())) and len(inf[s]) == 80
    assert len(inf[2]) == 120  # subclass 2 (class 1) with both subclasses of class 0


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_top_mask_picks_the_genes_of_the_stable_sort(seed):
    "`_top_mask` (selection, no sort) keeps exactly the genes of a stable descending argsort, ties and NaN included."
    from igtcga.metrics import _top_mask
    rng = np.random.default_rng(seed)
    S = rng.integers(-3, 4, (40, 60)).astype(np.float32)  # many ties
    S[rng.random(S.shape) < 0.05] = np.nan
    S[0] = 0.0  # a row that is all ties
    ref_scores = np.where(np.isnan(S), -np.inf, S)
    for k in (1, 2, 7, 30, 59, 60):
        want = np.zeros(S.shape, bool)
        np.put_along_axis(want, np.argsort(-ref_scores, axis=1, kind="stable")[:, :k], True, axis=1)
        got = _top_mask(S, k, block=7)  # blocks of rows that do not divide the rows
        assert (got == want).all() and (got.sum(1) == k).all(), k


@pytest.mark.parametrize("make", [lr_like, mlp_like], ids=["LR-like", "MLP-like"])
def test_curves_through_the_first_layer_equal_forward_passes(make):
    "The kept-gene accuracies computed through the linear first layer equal those of masked forward passes, for every curve."
    import igtcga.metrics as M
    G, C, n = 60, 4, 40
    model = make(G, C)
    X, _, b = data(n, G, C, seed=3)
    y = model(X).argmax(1).numpy()
    A = np.random.default_rng(3).standard_normal((n, G))
    att = att_of(X.numpy(), y, A, b.numpy())
    assert M._linear_parts(model) is not None
    fast = accuracy_curves(model, att, n_random=4)
    forward = lambda model, X, y, b, masks: M._kept_accuracy(model, X, y, b, masks)
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(M, "_curve_accuracies", forward)
        slow = accuracy_curves(model, att, n_random=4)
    assert set(fast.curve) == set(M.CURVES)
    pd.testing.assert_frame_equal(fast, slow, rtol=0, atol=1e-9)


def test_average_ranks_equal_scipys_rankdata_with_ties():
    "The fast row ranks equal `scipy.stats.rankdata` (average ties), and so do the Spearman numbers built on them."
    from scipy.stats import rankdata
    from igtcga.metrics import _average_ranks
    rng = np.random.default_rng(5)
    for u in (rng.standard_normal((7, 300)), rng.integers(0, 4, (9, 50)).astype(float), np.zeros((3, 20)), rng.standard_normal((1, 1))):
        np.testing.assert_array_equal(_average_ranks(u), rankdata(u, axis=1))
    a, b = rng.integers(0, 5, (6, 40)).astype(float), rng.standard_normal((6, 40))
    want = np.mean([spearmanr(x, y)[0] for x, y in zip(a, b)])
    assert attribution_similarity(a, b)["spearman"] == pytest.approx(want, abs=1e-12)


@pytest.mark.parametrize("scope", ["local", "global"])
def test_topk_composition_adds_up_and_matches_fa(scope):
    from igtcga.metrics import topk_composition
    rng = np.random.default_rng(3)
    G, n = 60, 40
    groups = rng.integers(0, 3, n)
    informative = {0: np.arange(0, 15), 1: np.arange(10, 25), 2: np.arange(40, 50)}  # 0 and 1 share genes 10-14
    A = rng.standard_normal((n, G))
    for c, genes in informative.items(): A[np.ix_(groups == c, genes)] += 1.0
    op = sp.random(G, G, density=0.05, random_state=4, format="csr") + sp.identity(G, format="csr")
    for diffusion in (None, op):
        comp = topk_composition(A, groups, informative, scope=scope, diffusion=diffusion)
        np.testing.assert_allclose(comp[["own", "other", "none"]].sum(1), 100)
        fa = FeatureAgreement(scope, diffusion=diffusion).evaluate_arrays(A, groups, informative)
        np.testing.assert_allclose(comp.own, fa.fa)
        np.testing.assert_allclose(topk_composition(A, groups, informative, scope=scope, diffusion=diffusion, rule="intersect_rank_scores").own,
                                   FeatureAgreement(scope, "intersect_rank_scores", diffusion=diffusion).evaluate_arrays(A, groups, informative).fa)
        # independent count with a full sort
        S = A @ op.toarray() if diffusion is not None else A
        S = S / np.linalg.norm(S, axis=1, keepdims=True)
        union = np.zeros(G, bool); union[np.concatenate(list(informative.values()))] = True
        for _, row in comp.iterrows():
            sel, genes = S[groups == row.group], informative[row.group]
            own = np.isin(np.arange(G), genes)
            tops = np.argsort(-sel, axis=1, kind="stable")[:, :len(genes)] if scope == "local" else \
                   np.argsort(-sel.sum(0), kind="stable")[None, :len(genes)]
            assert np.isclose(row.other, 100 * (~own[tops] & union[tops]).mean())
            assert np.isclose(row.none, 100 * (~union[tops]).mean())
