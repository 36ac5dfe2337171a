"""The method benchmark: the random control sits at chance, a perfect ranking recovers every true pathway, igtcga's
GSEA agrees with gseapy and its ORA with Fisher's exact test, PC1 with scikit-learn, the retrainings are deterministic,
GMT files fail with one line naming the file, and `--methods` / `--gene-sets` give methods.csv and pathways.csv on a
preset and on a user's matrix."""
import numpy as np
import pandas as pd
import pytest
from scipy import stats as sps

from igtcga.methods import (GeneSets, enrichment_scores, gene_order, gsea, ora, pathway_recovery, pathway_truth, pc1_loadings,
                            ranking_metrics, read_gmt, resolve_methods, retrain_top_bottom)
from test_cli import TINY, assert_one_line_error, reproduce


def random_sets(G, n_sets, rng, low=5, high=60):
    return GeneSets([f"set{i}" for i in range(n_sets)],
                    [rng.choice(G, rng.integers(low, high), replace=False) for _ in range(n_sets)], G)


def test_random_scores_sit_at_chance():
    rng = np.random.default_rng(0)
    G, C, k = 4000, 20, 80
    truth = {c: rng.choice(G, k, replace=False) for c in range(C)}
    runs = [ranking_metrics(rng.random((C, G)), truth, list(range(C))) for _ in range(20)]
    fa = np.array([r["FA_global"] for r in runs])
    chance = 100 * k / G
    assert runs[0]["FA_chance"] == pytest.approx(chance)
    se = 100 * np.sqrt(chance / 100 * (1 - chance / 100) / (k * C * len(runs)))  # binomial spread of the mean
    assert abs(fa.mean() - chance) < 4 * se, (fa.mean(), chance, se)
    assert abs(np.mean([r["AUROC"] for r in runs]) - 50) < 2
    assert abs(np.mean([r["AUPRC"] for r in runs]) - chance) < 1


def test_a_ranking_of_exactly_the_informative_genes_recovers_every_true_pathway():
    from igtcga.biomarkers import class_truth
    from igtcga.simulation import simulate
    for preset, n in (("SIMU1", 66), ("SimuA", 40)):
        data = simulate(preset, n_samples=n, seed=1)
        sets = GeneSets.from_simulation(data)
        truth_p = pathway_truth(data, sets)
        S = np.random.default_rng(0).random((data.n_classes, data.n_genes)) * 0.1
        for c, genes in class_truth(data).items(): S[c, genes] += 1  # informative genes first, in random order
        classes = list(range(data.n_classes))
        assert pathway_recovery(enrichment_scores(S, sets), truth_p, classes) == 100.0
        assert ranking_metrics(S, class_truth(data), classes)["FA_global"] == 100.0
        shuffled = np.random.default_rng(2).permutation(S.T).T  # the same scores on the wrong genes
        assert abs(pathway_recovery(enrichment_scores(shuffled, sets), truth_p, classes) - 50) < 10


def test_enrichment_scores_equal_gseapys():
    gseapy = pytest.importorskip("gseapy")
    rng = np.random.default_rng(3)
    G = 600
    sets = random_sets(G, 25, rng)
    scores = rng.standard_normal((2, G)) + np.r_[np.linspace(2, 0, 50), np.zeros(G - 50)]  # some sets lean to the top
    ours = enrichment_scores(scores, sets)
    ref = gsea(scores, sets, n_perm=0, engine="gseapy")["es"]
    np.testing.assert_allclose(ours, ref, atol=1e-6)
    assert np.ptp(ours) > 0.5  # the comparison covers positive and negative scores


def test_gsea_p_values_are_calibrated_on_a_null_ranking():
    rng = np.random.default_rng(4)
    G = 2000
    sets = random_sets(G, 200, rng, 10, 40)
    g = gsea(rng.standard_normal((3, G)), sets, n_perm=500, seed=1)
    p = g["p"].ravel()
    assert 0.02 < (p < 0.05).mean() < 0.09 and 0.4 < p.mean() < 0.6
    np.testing.assert_array_equal(gsea(rng.standard_normal((1, G)) * 0 + np.arange(G)[::-1], sets, 50, seed=9)["p"],
                                  gsea(np.arange(G)[::-1][None] * 1.0, sets, 50, seed=9)["p"])  # seeded


def test_ora_equals_fishers_exact_test():
    rng = np.random.default_rng(5)
    G = 500
    sets = random_sets(G, 12, rng, 20, 80)
    scores = rng.random((1, G)); scores[0, sets.members[0][:15]] += 1  # set 0 over-represented in the top
    o = ora(scores, sets, n_top=50)
    top = set(np.argsort(-scores[0])[:50])
    for j, m in enumerate(sets.members):
        a = len(top & set(m))
        table = [[a, 50 - a], [len(m) - a, G - 50 - len(m) + a]]
        assert o["overlap"][0, j] == a
        assert o["p"][0, j] == pytest.approx(sps.fisher_exact(table, alternative="greater")[1], rel=1e-9)
    assert o["padj"][0, 0] < 0.01


def test_pc1_loadings_equal_scikit_learns():
    from sklearn.decomposition import PCA
    X = np.random.default_rng(6).standard_normal((80, 300)) @ np.diag(np.linspace(3, 0.1, 300))
    np.testing.assert_allclose(pc1_loadings(X), np.abs(PCA(1).fit(X).components_[0]), atol=1e-8)


def test_retraining_is_deterministic_and_the_informative_genes_suffice():
    rng = np.random.default_rng(7)
    y = np.repeat([0, 1, 2], 60)
    X = rng.standard_normal((180, 200)); X[np.arange(180), y] += 3  # genes 0, 1, 2 mark the classes
    S = np.zeros((3, 200)); S[[0, 1, 2], [0, 1, 2]] = 1
    order = gene_order(S, [0, 1, 2])
    assert set(order[:3]) == {0, 1, 2}
    orders = np.stack([order, rng.permutation(200)])
    a = retrain_top_bottom(orders, X[::2], y[::2], X[1::2], y[1::2], ns=(3, 10))
    b = retrain_top_bottom(orders, X[::2], y[::2], X[1::2], y[1::2], ns=(3, 10))
    pd.testing.assert_frame_equal(a, b)
    acc = a.set_index(["ranking", "genes", "n"]).balanced_accuracy
    assert acc[0, "top", 3] > 85 and acc[0, "bottom", 3] < 60 and acc[0, "top", 3] > acc[1, "top", 3]


def test_gmt_errors_name_the_file_and_the_fix(tmp_path):
    genes = [f"G{i}" for i in range(30)]
    with pytest.raises(FileNotFoundError, match="no such gene-set file"): read_gmt(tmp_path/"none.gmt", genes)
    (tmp_path/"dup.gmt").write_text("A\t-\tG1\tG2\tG3\tG4\tG5\nA\t-\tG6\tG7\tG8\tG9\tG10\n")
    with pytest.raises(ValueError, match=r"dup.gmt, line 2: gene set 'A' appears twice"): read_gmt(tmp_path/"dup.gmt", genes)
    (tmp_path/"ids.gmt").write_text("A\t-\tENSG1\tENSG2\tENSG3\tENSG4\tENSG5\n")
    with pytest.raises(ValueError, match="use the same gene identifiers"): read_gmt(tmp_path/"ids.gmt", genes)
    (tmp_path/"ok.gmt").write_text("# a comment\nA\tdesc\tg1\tg2\tg3\tg4\tg5\nB\t-\tG1\tG2\n")
    with pytest.warns(UserWarning, match="1 of 2 gene sets left out"): s = read_gmt(tmp_path/"ok.gmt", genes)
    assert s.names == ["A"] and s.members[0].tolist() == [1, 2, 3, 4, 5]
    with pytest.raises(ValueError, match="unknown method 'shap'"): resolve_methods("ig,shap")


def test_cli_checks_the_gene_sets_and_methods_before_any_work(tmp_path):
    assert_one_line_error(reproduce("--dataset", "SimuA", "--gene-sets", tmp_path/"x.gmt", "--out", tmp_path/"o", cache=tmp_path/"c"),
                          "x.gmt: no such gene-set file")
    assert_one_line_error(reproduce("--dataset", "SimuA", "--methods", "ig,lime", "--out", tmp_path/"o", cache=tmp_path/"c"),
                          "unknown method 'lime'")


def test_methods_csv_and_pathways_csv_on_a_preset(tmp_path):
    out = tmp_path/"out"
    done = reproduce("--dataset", "SimuA", "--n-samples", "60", "--methods", "ig,saliency,lr_weights,ttest,pc1,random",
                     "--out", out, *TINY, cache=tmp_path/"cache")
    assert done.returncode == 0, done.stderr[-3000:]
    m = pd.read_csv(out/"methods.csv")
    assert {"dataset", "model", "run", "method", "FA_global", "AUPRC", "pathway_AUROC", "top10_stability"} <= set(m.columns)
    assert set(m.method) == {"ig", "saliency", "lr_weights", "ttest", "pc1", "random"}
    assert len(m[(m.model == "LR") & (m.method == "ig")]) == 2 and len(m[m.method == "ttest"]) == 1
    assert m[(m.model == "MLP") & (m.method == "lr_weights")].note.str.contains("not a linear model").all()  # said, not dropped
    own = lambda method: m[(m.model == "MLP") & (m.method == method)][["FA_local", "AUPRC", "AUROC"]].to_numpy()
    assert not np.allclose(own("ig"), own("saliency"))  # each method explains with its own attributions
    assert m[m.method == "ttest"].FA_global.iloc[0] > m[m.method == "random"].FA_global.max()
    p = pd.read_csv(out/"pathways.csv")
    assert {"ranking", "class", "pathway", "ora_padj", "es", "nes", "gsea_fdr", "true"} <= set(p.columns)
    assert p.true.any() and set(p.ranking) >= {"ttest", "LR ig consensus"}
    assert (out/"methods_leaderboard.png").exists() and (out/"sufficiency.csv").exists()
    assert "Which method finds the biomarkers?" in (out/"report.md").read_text()


def test_methods_and_gene_sets_on_a_users_matrix(tmp_path, write_user_files):
    matrix, sheet = write_user_files(tmp_path, n_genes=40)
    (tmp_path/"sets.gmt").write_text("UP\tgenes up in tumours\t" + "\t".join(f"GENE{i}" for i in range(6)) + "\n"
                                     "OTHER\t-\t" + "\t".join(f"GENE{i}" for i in range(20, 30)) + "\n")
    out = tmp_path/"out"
    done = reproduce("--dataset", matrix, "--labels", sheet, "--models", "LR", "--methods", "ig,ttest,random",
                     "--gene-sets", tmp_path/"sets.gmt", "--out", out, *TINY, cache=tmp_path/"cache")
    assert done.returncode == 0, done.stderr[-3000:]
    m = pd.read_csv(out/"methods.csv")
    assert "FA_global" not in m and "pathway_AUROC" not in m  # no truth columns on real data
    assert set(m.method) == {"ig", "ttest", "random"}
    p = pd.read_csv(out/"pathways.csv")
    assert set(p.pathway) == {"UP", "OTHER"} and p.true.isna().all()
    up = p[(p.ranking == "ttest") & (p.pathway == "UP")]
    assert (up.es > 0.5).all()  # the tumour genes lead the t-test ranking of both classes (|t|)


def test_ties_are_not_broken_in_the_datas_gene_order():
    "A saturated softmax gives all-zero saliency rows; a simulation lists its informative genes first: ties must not win."
    G = 1000
    truth = {0: np.arange(100), 1: np.arange(100, 200)}
    flat = ranking_metrics(np.zeros((2, G)), truth, [0, 1])
    assert flat["FA_global"] < 25 and flat["AUROC"] == 50.0  # chance: 10 % and 50 %
    sets = GeneSets(["first", "last"], [np.arange(20), np.arange(G - 20, G)], G)
    truth_p = {0: np.array([True, False]), 1: np.array([True, False])}
    from igtcga.methods import tie_order
    perm, inv = tie_order(G)
    untied = GeneSets(sets.names, [inv[m] for m in sets.members], G)
    assert abs(enrichment_scores(np.zeros((1, G)), untied)[0, 0]) < 0.6  # no longer a perfect ES for the first genes
