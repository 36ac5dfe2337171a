"""The biomarker report: statistics against independent implementations, the consensus ranking's invariants, chance
levels, a simulation where the truth is known, DESeq2, scanpy interop and the runner's new outputs."""
import json
import warnings
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from scipy import stats as sps

from igtcga import biomarkers as B
from igtcga.simulation import SimParams, simulate

DEMO = SimParams(name="demo", n_generated=4, n_genes=600, n_pathways=60, genes_per_pathway=10, n_overexpressed=4, n_samples=240)


@pytest.fixture(scope="module")
def sim():
    return simulate(DEMO, seed=0, quiet=True)


@pytest.fixture(scope="module")
def found(sim):
    return B.biomarkers(sim, "LR", runs=3, quiet=True)


def test_welch_matches_scipy_for_every_class():
    rng = np.random.default_rng(3)
    y = rng.integers(0, 4, 300)
    X = rng.normal(size=(300, 50)) * rng.uniform(0.5, 3, 50) + rng.normal(size=50)
    X[y == 2, :5] += 1.0
    t, p = B.welch_test(X, y)
    for c in range(4):
        ref = sps.ttest_ind(X[y == c], X[y != c], equal_var=False)
        np.testing.assert_allclose(t[c], ref.statistic, rtol=1e-9)
        np.testing.assert_allclose(p[c], ref.pvalue, rtol=1e-7, atol=1e-300)


def test_welch_constant_gene_and_too_small_classes():
    X = np.c_[np.ones(10), np.arange(10.0)]
    y = np.repeat([0, 1], 5)
    t, p = B.welch_test(X, y)
    assert t[0, 0] == 0 and p[0, 0] == 1  # no difference, no variance: nothing to see
    with pytest.warns(UserWarning, match="fewer than 2 samples"):
        t, p = B.welch_test(np.random.default_rng(0).normal(size=(5, 2)), np.array([0, 1, 1, 2, 2]))
    assert np.isnan(t[0]).all() and np.isnan(p[0]).all() and np.isfinite(t[1:]).all()  # the others keep their test


def test_binned_mi_ranks_like_the_knn_estimator():
    from sklearn.feature_selection import mutual_info_classif
    rng = np.random.default_rng(0)
    y = rng.integers(0, 3, 600)
    shift = np.linspace(0, 2, 40)  # genes from uninformative to strongly informative for class 0
    X = rng.normal(size=(600, 40)) + np.outer(y == 0, shift)
    ours = B.binned_mutual_info(X, y)[0]
    knn = mutual_info_classif(X, (y == 0).astype(int), random_state=0)
    assert sps.spearmanr(ours, knn)[0] > 0.9
    assert sps.spearmanr(ours, shift)[0] > 0.9
    h = -(np.mean(y == 0) * np.log2(np.mean(y == 0)) + np.mean(y != 0) * np.log2(np.mean(y != 0)))
    assert (ours >= 0).all() and (ours <= h + 1e-12).all()  # MI is bounded by the class indicator's entropy


def test_quantiles_match_nanpercentile():
    rng = np.random.default_rng(1)
    R = rng.permutation(7 * 5 * 9).reshape(7, 5, 9).astype(float)
    R[[1, 4], 2] = np.nan; R[:, 3] = np.nan
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        ref = np.nanpercentile(R, [25, 75], axis=0)
    np.testing.assert_allclose(np.stack(B._quantiles(R, (0.25, 0.75))), ref)


def test_consensus_invariants_and_sign_penalty():
    rng = np.random.default_rng(2)
    S = rng.normal(size=(5, 3, 200))
    S[:, 0, 7] = 10.0  # always first
    S[:, 0, 8] = np.array([12.0, -12.0, 12.0, -12.0, 12.0])  # large but its sign flips
    S[2, 1] = np.nan
    c = B.consensus(S)
    for k in range(3): assert sorted(c["rank"][k]) == list(range(1, 201))
    assert c["rank"][0, 7] == 1 and c["rank"][0, 8] > 1 and c["rank_iqr"][0, 7] == 0
    assert c["runs"].tolist() == [5, 4, 5]
    for f in ("top10_freq", "top100_freq"): assert np.nanmin(c[f]) >= 0 and np.nanmax(c[f]) <= 1
    np.testing.assert_allclose(c["top10_freq"].sum(1), 10)  # every run puts 10 genes in its top 10


def test_random_rankings_sit_at_chance():
    rng = np.random.default_rng(5)
    G = 2000
    R = np.stack([np.stack([rng.permutation(G) + 1 for _ in range(40)]) for _ in range(3)]).astype(float)
    st = B.class_stability(R, ks=(10, 100))
    np.testing.assert_allclose(st.overlap_mean, st.chance, rtol=0.25)
    same = B.class_stability(np.stack([R[0]] * 3), ks=(10, 100))
    np.testing.assert_allclose(same.overlap_mean, 100)


def test_gene_table_on_a_simulation(found, sim):
    g = found.genes
    assert list(g.columns[:len(B.GENE_COLUMNS)]) == B.GENE_COLUMNS and "informative" in g
    for _, part in g.groupby("class"):
        assert sorted(part["rank"]) == list(range(1, sim.n_genes + 1)) and part["rank"].is_monotonic_increasing
        assert sorted(part["t_rank"]) == list(range(1, sim.n_genes + 1))
    for f in ("top10_freq", "top100_freq"): assert g[f].between(0, 1).all()
    assert (g.t_padj >= 0).all() and (g.t_padj <= 1).all()
    top = g[g["rank"] <= 10]
    assert top.informative.mean() >= 0.9  # the top genes are truly informative ...
    assert g.informative.mean() < 0.1  # ... where a random pick would find 1 in 15


def test_agreement_identical_and_chance(found):
    g = found.genes.copy()
    same = g.assign(t_rank=g["rank"], mi_rank=g["rank"])
    a = B.agreement(same)
    assert (a.overlap_t_10 == 100).all() and np.allclose(a.spearman_t, 1)
    rng = np.random.default_rng(0)
    shuffled = g.assign(t_rank=g.groupby("class")["rank"].transform(lambda r: rng.permutation(r.to_numpy())))
    b = B.agreement(shuffled)
    assert abs(b.overlap_t_100.mean() - b.chance_100.mean()) < 8 and abs(b.spearman_t).max() < 0.2


def test_sanity_checks_pass_on_a_trained_model(found, sim):
    from igtcga.models import build_model
    r0 = found.results[0]
    X = r0.transform.transform(sim.X[r0.train_idx])
    s = B.sanity_checks(r0, found.attributions[0], lambda: build_model("LR", n_genes=sim.n_genes, n_classes=4), X,
                        sim.y[r0.train_idx], epochs=8, quiet=True)
    assert s.check.tolist() == ["parameter randomisation", "label permutation"]
    assert (s.verdict == "passes").all() and (s.top10_overlap < B.SANITY_PASS).all()
    assert s.balanced_accuracy.iloc[1] < 60  # permuted labels: near chance (25 %) on the test samples


def test_sanity_verdict_fails_when_the_explanation_ignores_the_model(found, sim):
    """An 'explanation' that is the input itself cannot change when the model is randomised or retrained: both checks fail."""
    import dataclasses
    from igtcga.models import build_model
    r0 = found.results[0]
    att = found.attributions[0].subset(np.arange(40))
    fake = dataclasses.replace(att, scores=att.model_inputs().astype(np.float32))
    X = r0.transform.transform(sim.X[r0.train_idx])
    s = B.sanity_checks(r0, fake, lambda: build_model("LR", n_genes=sim.n_genes, n_classes=4), X, sim.y[r0.train_idx],
                        epochs=2, quiet=True, explain_fn=lambda model, x, targets: np.asarray(x))
    assert (s.verdict == "fails").all() and np.allclose(s.top10_overlap, 100)
    assert "Failed" in B.sanity_markdown(s.assign(model="LR"))


def test_count_matrix_and_deseq2(sim):
    counts = B.count_matrix(sim)
    assert np.array_equal(counts, np.round(counts)) and counts.min() >= 0
    np.testing.assert_allclose(counts.sum(1), DEMO.n_reads)  # reads per million back to the reads drawn
    from igtcga.data import ExprData
    logged = ExprData(np.log2(sim.X + 1), sim.y, sim.classes, sim.genes)
    with pytest.raises(ValueError, match="whole numbers"):
        B.count_matrix(logged)
    with pytest.raises(ValueError, match="raw counts"):
        B.count_matrix(ExprData(sim.X - sim.X.mean(), sim.y, sim.classes, sim.genes))
    keep = np.flatnonzero(sim.y < 2)
    sub = counts[keep][:, :120]
    stat, padj = B.deseq2_statistics(sub, sim.y[keep], ["C0", "C1"], n_cpus=1)
    # two classes: "C1 vs the rest" is the ordinary C1-vs-C0 contrast of an independent PyDESeq2 run
    from pydeseq2.dds import DeseqDataSet
    from pydeseq2.ds import DeseqStats
    df = pd.DataFrame(sub.astype(np.int64), index=[f"s{i}" for i in range(len(keep))], columns=[f"g{j}" for j in range(120)])
    meta = pd.DataFrame({"group": ["c1" if v else "c0" for v in sim.y[keep]]}, index=df.index)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        dds = DeseqDataSet(counts=df, metadata=meta, design="~group", quiet=True, n_cpus=1); dds.deseq2()
        ds = DeseqStats(dds, contrast=["group", "c1", "c0"], quiet=True, n_cpus=1); ds.summary()
    np.testing.assert_allclose(stat[1], ds.results_df["stat"].to_numpy(), rtol=1e-6)
    np.testing.assert_allclose(stat[0], -stat[1], rtol=1e-6)
    assert np.nanmin(padj) < 1e-3  # the simulated signal is found


def test_deseq2_contrasts_one_vs_rest():
    cols = ["Intercept", "group[T.c1]", "group[T.c2]"]
    v = B._one_vs_rest_contrasts(cols, ["c0", "c1", "c2"], "group")
    # class means on the log scale: b0, b0 + b1, b0 + b2; contrast c = its mean minus the mean of the others
    beta = np.array([1.0, 2.0, -4.0])
    means = np.array([1.0, 3.0, -3.0])
    for c in range(3): np.testing.assert_allclose(v[c] @ beta, means[c] - np.delete(means, c).mean())


def test_rank_genes_groups_round_trips_through_scanpy(sim, tmp_path):
    sc = pytest.importorskip("scanpy")
    import anndata
    adata = sim.to_anndata()
    B.rank_genes_groups(adata, "class", runs=2, quiet=True)
    adata.write_h5ad(tmp_path/"a.h5ad")
    back = anndata.read_h5ad(tmp_path/"a.h5ad")
    truth = B.class_truth(sim)
    for c, group in enumerate(sim.classes):
        df = sc.get.rank_genes_groups_df(back, group=group, key="rank_genes_groups_ig")
        assert len(df) == sim.n_genes and df.names.is_unique
        assert list(df.columns[:5]) == ["names", "scores", "logfoldchanges", "pvals", "pvals_adj"]
        top = df.names.iloc[:10].map(sim.genes.index)
        assert np.isin(top, truth[c]).mean() >= 0.9
        assert (df.pvals_adj.iloc[:10] < 0.05).all()
    assert back.uns["rank_genes_groups_ig"]["params"]["groupby"] == "class"
    import matplotlib; matplotlib.use("Agg")
    sc.pl.rank_genes_groups(back, key="rank_genes_groups_ig", n_genes=5, show=False)
    with pytest.raises(KeyError, match="no column 'nope'"):
        B.rank_genes_groups(adata, "nope")


def test_reproduce_writes_genes_and_report(tmp_path, sim):
    """A user CSV through the command line: genes.csv, figures and the report's sections, without truth columns."""
    from igtcga.experiments import reproduce_cli
    sel = np.flatnonzero(sim.y < 3)
    pd.DataFrame(sim.X[sel].T, index=sim.genes, columns=[sim.samples[i] for i in sel]).to_csv(tmp_path/"m.csv")
    pd.DataFrame({"sample": [sim.samples[i] for i in sel], "class": [sim.classes[sim.y[i]] for i in sel]}).to_csv(tmp_path/"s.csv", index=False)
    rc = reproduce_cli(dataset=str(tmp_path/"m.csv"), labels=str(tmp_path/"s.csv"), models="LR", runs=2, n_steps=32,
                       out=str(tmp_path/"out"), quiet=True)
    assert rc in (0, None)
    out = tmp_path/"out"
    g = pd.read_csv(out/"genes.csv")
    assert "informative" not in g and set(g["class"]) == {"C0", "C1", "C2"}
    for _, part in g.groupby("class"): assert sorted(part["rank"]) == list(range(1, sim.n_genes + 1))
    report = (out/"report.md").read_text()
    for name in ("summary.png", "heatmap.png", "overlap.png", "rank_vs_rank.png"):
        assert (out/name).stat().st_size > 1000 and f"]({name})" in report
    assert "## Which genes drive each class" in report and "retraining(s).** The stability" in report
    files = json.loads((out/".igtcga-run.json").read_text())["files"]
    assert {"genes.csv", "agreement.csv", "sanity.csv"} <= set(files)


def test_deseq2_on_non_counts_is_refused_before_training(tmp_path, sim, capsys):
    from igtcga.experiments import reproduce_cli
    pd.DataFrame(np.log2(sim.X.T + 1) + 0.01, index=sim.genes, columns=sim.samples).to_csv(tmp_path/"m.csv")
    pd.DataFrame({"sample": sim.samples, "class": [sim.classes[i] for i in sim.y]}).to_csv(tmp_path/"s.csv", index=False)
    rc = reproduce_cli(dataset=str(tmp_path/"m.csv"), labels=str(tmp_path/"s.csv"), models="LR", runs=1, de="deseq2",
                       out=str(tmp_path/"out"), quiet=True)
    err = capsys.readouterr().err
    assert rc == 2 and "DESeq2 needs raw" in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path/"out").exists()


def test_reproduce_with_deseq2_on_a_simulation(tmp_path):
    from igtcga.experiments import Experiment, run_experiment
    exp = Experiment(dataset="SimuA", models=("LR",), runs=2, n_samples=60, n_steps=32, n_random=2, epochs=5, de="deseq2")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        run_experiment(exp, out=tmp_path/"out", cache=tmp_path/"cache", quiet=True)
    g = pd.read_csv(tmp_path/"out"/"genes.csv")
    assert {"deseq2_stat", "deseq2_padj", "deseq2_rank"} <= set(g.columns)
    assert "DESeq2 took" in (tmp_path/"out"/"report.md").read_text()
    with pytest.raises(ValueError, match="de must be"):
        Experiment(dataset="SimuA", de="edger")
