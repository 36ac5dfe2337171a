"""Training: the paper's accuracies on a small SIMU1-like simulation, seeded determinism, metrics against independent
computations, checkpoints, resumable repeated runs, and every bad-input error before training starts."""
import types

import numpy as np
import pytest
import torch

import igtcga.training as training
from igtcga.data import ExprData
from igtcga.graph import gene_graph
from igtcga.models import LR, MLP, DiffuseLR, DiffuseMLP
from igtcga.training import load_checkpoint, predict, save_checkpoint, train, train_runs


class Standardise:
    "Local stand-in transform: per-gene standardisation fitted on the rows given to `fit`."
    def fit(self, X):
        self.n_fit = len(X)
        self.mean, self.std = X.mean(0), X.std(0, ddof=1)
        self.std[self.std == 0] = 1
        return self
    def transform(self, X): return ((X - self.mean) / self.std).astype(np.float32)


class Split:
    def __init__(self, train, test): self.train, self.test = np.asarray(train), np.asarray(test)


def shuffled_split(n, test_size=0.4, seed=43):
    order = np.random.RandomState(seed).permutation(n)
    k = int(test_size * n)
    return Split(order[k:], order[:k])


@pytest.fixture(scope="module")
def simu():
    "A small SIMU1-like simulation: 8 classes, 400 pathways of 10 genes, 37 over-expressed pathways per class."
    from igtcga.simulation import SimParams, simulate
    params = SimParams("small-SIMU1", n_generated=8, n_genes=4000, n_pathways=400, n_overexpressed=37, n_samples=400)
    return simulate(params, seed=3)


@pytest.fixture(scope="module")
def toy():
    "Tiny separable data for fast checks: 3 classes, 60 genes."
    rng = np.random.default_rng(0)
    y = np.repeat(np.arange(3), 40)
    X = rng.normal(size=(120, 60)) + 2.0 * np.eye(3)[y].repeat(20, axis=1)
    return ExprData(X, y, ["a", "b", "c"], [f"g{i}" for i in range(60)])


def state(model):
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


# --- accuracy (protocol §10.1) ---------------------------------------------------------------------------------------

@pytest.mark.parametrize("make", [LR, MLP], ids=["LR", "MLP"])
def test_paper_accuracy_on_small_simulation(simu, make):
    split = shuffled_split(simu.n_samples)
    r = train(make(simu.n_genes, simu.n_classes), simu, split, Standardise(), quiet=True)
    assert r.train_acc == 100.0
    assert r.balanced_test_acc >= 99.5


@pytest.mark.parametrize("make", [DiffuseLR, DiffuseMLP], ids=["DiffuseLR", "DiffuseMLP"])
def test_diffusion_models_train(simu, make, tmp_path):
    split = shuffled_split(simu.n_samples)
    graph = gene_graph(simu, split, Standardise(), cache=tmp_path, device="cpu")
    assert graph.degrees.mean() > 5  # pathway genes are correlated: the graph is far from empty
    r = train(make(graph.diffusion, simu.n_classes), simu, split, Standardise(), quiet=True)
    assert r.train_acc == 100.0 and r.balanced_test_acc >= 99.0


# --- seeds -------------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("make", [LR, MLP], ids=["LR", "MLP"])
def test_same_seed_same_weights_bitwise(toy, make):
    split = shuffled_split(toy.n_samples)
    torch.manual_seed(100)
    a = train(make(toy.n_genes, 3), toy, split, Standardise(), epochs=4, seed=7, device="cpu", quiet=True)
    torch.manual_seed(200)  # a different initial model object must not matter
    b = train(make(toy.n_genes, 3), toy, split, Standardise(), epochs=4, seed=7, device="cpu", quiet=True)
    c = train(make(toy.n_genes, 3), toy, split, Standardise(), epochs=4, seed=8, device="cpu", quiet=True)
    sa, sb, sc = state(a.model), state(b.model), state(c.model)
    assert all(torch.equal(sa[k], sb[k]) for k in sa)
    assert np.array_equal(a.losses, b.losses)
    assert not torch.equal(sa["fc.weight" if make is LR else "fc1.weight"], sc["fc.weight" if make is LR else "fc1.weight"])


def test_seed_fixes_batch_order(toy):
    split = shuffled_split(toy.n_samples)
    kw = dict(epochs=2, seed=3, device="cpu", quiet=True)
    shuffled = train(LR(toy.n_genes, 3), toy, split, Standardise(), **kw)
    fixed = train(LR(toy.n_genes, 3), toy, split, Standardise(), shuffle=False, **kw)
    assert not np.array_equal(shuffled.losses, fixed.losses)
    assert fixed.hparams["shuffle"] is False


# --- what train does ---------------------------------------------------------------------------------------------

def test_transform_fitted_on_training_rows_only(toy):
    split = shuffled_split(toy.n_samples)
    t = Standardise()
    r = train(LR(toy.n_genes, 3), toy, split, t, epochs=1, quiet=True)
    assert r.transform is not t and not hasattr(t, "n_fit"), "the caller's transform is left untouched"
    assert r.transform.n_fit == len(split.train)
    np.testing.assert_allclose(r.transform.mean, toy.X[split.train].mean(0), rtol=1e-6)


def test_metrics_match_independent_computation(simu):
    split = shuffled_split(simu.n_samples, seed=1)
    r = train(LR(simu.n_genes, simu.n_classes), simu, split, Standardise(), epochs=2, lr=0.01, quiet=True)
    logits = predict(r.model, r.transform.transform(simu.X[split.test]))
    pred, true = logits.argmax(1).numpy(), simu.y[split.test]
    assert np.array_equal(pred, r.test_pred) and np.array_equal(true, r.test_true)
    recalls = [np.mean(pred[true == c] == c) for c in np.unique(true)]
    assert r.balanced_test_acc == pytest.approx(100 * np.mean(recalls))
    assert r.test_acc == pytest.approx(100 * np.mean(pred == true))
    cm = np.zeros((simu.n_classes,) * 2, int)
    np.add.at(cm, (true, pred), 1)
    assert np.array_equal(r.confusion, cm)
    assert np.array_equal(r.correct_test, np.asarray(split.test)[pred == true])
    train_pred = predict(r.model, r.transform.transform(simu.X[split.train])).argmax(1).numpy()
    assert r.train_acc == pytest.approx(100 * np.mean(train_pred == simu.y[split.train]))
    assert len(r.losses) == 2 and np.all(np.isfinite(r.losses))
    assert not r.model.training


def test_learning_rate_schedule(toy, monkeypatch):
    seen = []
    real = training._run_epoch
    def spy(model, X, y, batches, optimizer, loss_fn):
        seen.append(optimizer.param_groups[0]["lr"])
        return real(model, X, y, batches, optimizer, loss_fn)
    monkeypatch.setattr(training, "_run_epoch", spy)
    train(LR(toy.n_genes, 3), toy, shuffled_split(toy.n_samples), epochs=25, quiet=True)
    expected = [0.1] * 12 + [0.01] * 10 + [0.001] * 3  # MultiStepLR, milestones (12, 22), gamma 0.1
    np.testing.assert_allclose(seen, expected)


def test_trailing_single_sample_batch_with_batchnorm(toy):
    n_train = 65  # 2 batches of 32 + 1 sample: BatchNorm cannot take a batch of one
    split = Split(np.arange(n_train), np.arange(n_train, 120))
    r = train(MLP(toy.n_genes, 3), toy, split, Standardise(), epochs=2, quiet=True)
    assert np.all(np.isfinite(r.losses))


def test_empty_test_split_gives_nan_test_metrics(toy):
    r = train(LR(toy.n_genes, 3), toy, Split(np.arange(120), np.array([], dtype=int)), epochs=1, quiet=True)
    assert np.isnan(r.test_acc) and np.isnan(r.balanced_test_acc) and r.train_acc > 0


# --- checkpoints and repeated runs -------------------------------------------------------------------------------

def test_checkpoint_roundtrip(toy, tmp_path):
    split = shuffled_split(toy.n_samples)
    r = train(MLP(toy.n_genes, 3, n_hidden=7), toy, split, Standardise(), epochs=3, quiet=True)
    path = save_checkpoint(r, tmp_path / "run.pt")
    assert [p.name for p in tmp_path.iterdir()] == ["run.pt"]
    back = load_checkpoint(path)
    assert back.resumed and back.checkpoint == path and back.model.n_hidden == 7
    X = back.transform.transform(toy.X)
    torch.testing.assert_close(predict(back.model, X), predict(r.model, X))
    assert np.array_equal(back.train_idx, split.train) and np.array_equal(back.test_idx, split.test)
    assert back.metrics() == r.metrics() and back.hparams == r.hparams
    assert np.array_equal(back.confusion, r.confusion)
    with pytest.raises(FileNotFoundError, match="no checkpoint"):
        load_checkpoint(tmp_path / "missing.pt")
    torch.save({"something": 1}, tmp_path / "other.pt")
    with pytest.raises(ValueError, match="not an igtcga checkpoint"):
        load_checkpoint(tmp_path / "other.pt")


def test_diffuse_checkpoint_keeps_the_operator(toy, tmp_path):
    split = shuffled_split(toy.n_samples)
    graph = gene_graph(toy, split, threshold=0.1, cache=False, device="cpu")
    r = train(DiffuseLR(graph.diffusion, 3), toy, split, epochs=2, quiet=True)
    back = load_checkpoint(save_checkpoint(r, tmp_path / "d.pt"))
    np.testing.assert_allclose(back.model.diffusion.operator().toarray(), graph.diffusion.toarray(), atol=1e-7)
    torch.testing.assert_close(predict(back.model, toy.X), predict(r.model, toy.X))


def counting_train(monkeypatch):
    calls = []
    real = training.train
    def spy(model, data, split, transform=None, seed=1, **kw):
        calls.append(seed)
        return real(model, data, split, transform, seed=seed, **kw)
    monkeypatch.setattr(training, "train", spy)
    return calls


def test_train_runs_resume(toy, tmp_path, monkeypatch):
    split = shuffled_split(toy.n_samples)
    make = lambda: MLP(toy.n_genes, 3)
    calls = counting_train(monkeypatch)
    first = train_runs(make, toy, split, runs=3, transform=Standardise(), out_dir=tmp_path, epochs=2)
    assert calls == [1, 2, 3] and [r.seed for r in first] == [1, 2, 3]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["run01_seed1.pt", "run02_seed2.pt", "run03_seed3.pt"]
    calls.clear()
    again = train_runs(make, toy, split, runs=3, transform=Standardise(), out_dir=tmp_path, epochs=2)
    assert calls == [] and all(r.resumed for r in again)
    (tmp_path / "run02_seed2.pt").unlink()
    third = train_runs(make, toy, split, runs=3, transform=Standardise(), out_dir=tmp_path, epochs=2)
    assert calls == [2], "only the run whose checkpoint was deleted is trained"
    assert [r.resumed for r in third] == [True, False, True]
    assert all(torch.equal(a, b) for a, b in zip(first[1].model.state_dict().values(), third[1].model.state_dict().values()))


def test_interrupted_series_resumes(toy, tmp_path, monkeypatch):
    split = shuffled_split(toy.n_samples)
    built = []
    def make():
        built.append(1)
        if len(built) == 3: raise KeyboardInterrupt("interrupted during run 3")
        return LR(toy.n_genes, 3)
    with pytest.raises(KeyboardInterrupt):
        train_runs(make, toy, split, runs=4, out_dir=tmp_path, epochs=1)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["run01_seed1.pt", "run02_seed2.pt"]
    calls = counting_train(monkeypatch)
    results = train_runs(lambda: LR(toy.n_genes, 3), toy, split, runs=4, out_dir=tmp_path, epochs=1)
    assert calls == [3, 4] and [r.resumed for r in results] == [True, True, False, False]


def test_train_runs_refuses_foreign_checkpoints(toy, tmp_path):
    split = shuffled_split(toy.n_samples)
    train_runs(lambda: LR(toy.n_genes, 3), toy, split, runs=1, out_dir=tmp_path, epochs=1)
    with pytest.raises(ValueError, match="hyper-parameters differ"):
        train_runs(lambda: LR(toy.n_genes, 3), toy, split, runs=1, out_dir=tmp_path, epochs=2)
    with pytest.raises(ValueError, match="another split"):
        train_runs(lambda: LR(toy.n_genes, 3), toy, shuffled_split(toy.n_samples, seed=1), runs=1, out_dir=tmp_path, epochs=1)
    with pytest.raises(ValueError, match="not a MLP"):
        train_runs(lambda: MLP(toy.n_genes, 3), toy, split, runs=1, out_dir=tmp_path, epochs=1)
    with pytest.raises(ValueError, match="seeds must be distinct"):
        train_runs(lambda: LR(toy.n_genes, 3), toy, split, seeds=[1, 1])
    with pytest.raises(ValueError, match="no runs"):
        train_runs(lambda: LR(toy.n_genes, 3), toy, split, runs=0)


# --- bad input, refused before any training ----------------------------------------------------------------------

def raw(X, y): return types.SimpleNamespace(X=np.asarray(X), y=np.asarray(y))


def refused(model, data, split, match, **kw):
    "The error is raised, and the model was not touched (no training started)."
    before = state(model)
    with pytest.raises(ValueError, match=match):
        train(model, data, split, quiet=True, **kw)
    after = state(model)
    assert all(torch.equal(before[k], after[k]) for k in before)


def test_bad_labels(toy):
    split = shuffled_split(toy.n_samples)
    refused(LR(toy.n_genes, 2), toy, split, r"labels must be class indices in \[0, 2\)")
    y = toy.y.copy(); y[split.train[0]] = -1
    refused(LR(toy.n_genes, 3), raw(toy.X, y), split, r"labels must be class indices in \[0, 3\)")
    refused(LR(toy.n_genes, 3), raw(toy.X, toy.y.astype(float)), split, "integer class indices")


def test_bad_split(toy):
    m = LR(toy.n_genes, 3)
    refused(m, toy, Split(np.array([], dtype=int), np.arange(10)), "training split is empty")
    refused(m, toy, Split(np.arange(10), np.arange(115, 121)), r"split.test has indices outside \[0, 120\)")
    refused(m, toy, Split(np.arange(20), np.arange(10, 30)), "share samples")
    refused(m, toy, Split(np.arange(20.5), np.arange(30, 40)), "integer sample indices")
    with pytest.raises(ValueError, match="must have `.train` and `.test`"):
        train(m, toy, np.arange(10))


def test_gene_count_mismatch(toy):
    split = shuffled_split(toy.n_samples)
    refused(LR(toy.n_genes + 1, 3), toy, split, "gene count mismatch: the model takes 61 genes but the data has 60")
    class DropGene(Standardise):
        def transform(self, X): return super().transform(X)[:, 1:]
    refused(LR(toy.n_genes, 3), toy, split, "transform outputs 59", transform=DropGene())


def test_nan_inputs(toy):
    split = shuffled_split(toy.n_samples)
    X = toy.X.copy(); X[split.train[3], 5] = np.nan
    refused(LR(toy.n_genes, 3), raw(X, toy.y), split, "training data X has 1 NaN")
    X = toy.X.copy(); X[split.test[0], 0] = np.inf
    refused(LR(toy.n_genes, 3), raw(X, toy.y), split, "test data X has 1 NaN or infinite")
    class Log(Standardise):
        def transform(self, X): return np.log(X).astype(np.float32)  # negative values -> NaN
    with np.errstate(invalid="ignore"):
        refused(LR(toy.n_genes, 3), toy, split, "transformed training data has", transform=Log())


def test_bad_hyper_parameters(toy):
    split = shuffled_split(toy.n_samples)
    m = LR(toy.n_genes, 3)
    refused(m, toy, split, "epochs must be an integer >= 1", epochs=0)
    refused(m, toy, split, "batch_size must be an integer >= 1", batch_size=0)
    refused(m, toy, split, "lr must be a positive number", lr=-0.1)
    refused(m, toy, split, "milestones must be increasing", milestones=(22, 12))
    refused(m, toy, split, "seed must be an integer", seed=-1)
    if not torch.cuda.is_available():
        with pytest.raises(RuntimeError, match="CUDA is not available"):
            train(m, toy, split, device="cuda")


@pytest.mark.parametrize("name", ["LR", "MLP"])
def test_fast_epoch_ends_with_the_reference_loops_weights(name):
    "Our epoch (transform once, row gathers) and the original's loop (DataLoader, transform per batch), same batches and seed: identical weights."
    ours = training._bench_epoch(name, 96, 50, 3, reference=False)
    ref = training._bench_epoch(name, 96, 50, 3, reference=True)
    assert ours["weights"] == ref["weights"]
    assert training._bench_epoch(name, 97, 50, 3, reference=False)["weights"] != ours["weights"]  # the digest does see the data
