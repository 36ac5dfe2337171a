"""igtcga.data: ExprData conversions, reading a user's matrix (every bad input has its own error), the paper's and the
stratified splits, and the transforms of protocol §4 against hand-computed values and independent NumPy/torch formulas."""
import csv, gzip, io, json, logging, pickle
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from igtcga.data import (CPM, Center, ExprData, Identity, Log2p, Pipeline, Split, Standardize, Transform, UndoLog2,
                         low_count_genes, paper_split, read_expression, sparse_samples, stratified_split, transform_for)
from igtcga.data import _gene_stats

FIX = Path(__file__).parent / "fixtures"


def write(path, text):
    Path(path).write_text(text)
    return path


# ---------------------------------------------------------------------------------------------------------------- ExprData
def toy(truth=True):
    X = np.arange(20, dtype=float).reshape(4, 5)
    return ExprData(X, [0, 1, 1, 0], ["a", "b"], list("ABCDE"), truth={0: [1, 3], 1: [4]} if truth else None)


def test_repr_markdown_counts_and_truth():
    md = toy()._repr_markdown_()
    assert "4 samples × 5 genes, 2 classes" in md and "ground truth: yes" in md
    assert "| a | 2 |" in md and "| b | 2 |" in md
    assert "ground truth: no" in toy(truth=False)._repr_markdown_()


def test_pandas_round_trip_and_matching_by_id():
    d = toy()
    X, labels = d.to_pandas()
    assert list(X.index) == d.samples and list(X.columns) == d.genes
    back = ExprData.from_pandas(X, labels)
    np.testing.assert_array_equal(back.X, d.X)
    np.testing.assert_array_equal(back.y, d.y)
    assert back.classes == d.classes
    # labels as a plain Series in another order: matched by sample id
    plain = pd.Series(["b", "a", "b", "a"], index=["S2", "S0", "S1", "S3"])
    np.testing.assert_array_equal(ExprData.from_pandas(X, plain).y, [0, 1, 1, 0])
    with pytest.raises(KeyError, match="have no label"):
        ExprData.from_pandas(X, plain.drop("S3"))
    with pytest.raises(ValueError, match="not in classes"):
        ExprData.from_pandas(X, labels.astype(str), classes=["a"])


def test_select_genes_remaps_truth_by_name():
    d = toy()
    sub = d.select_genes(["E", "B", "A"])
    assert sub.genes == ["E", "B", "A"]
    np.testing.assert_array_equal(sub.X, d.X[:, [4, 1, 0]])
    for k, idx in d.truth.items():  # same informative gene *names* that survived
        kept = {d.genes[i] for i in idx} & set(sub.genes)
        assert {sub.genes[i] for i in sub.truth[k]} == kept
    mask = np.array([True, False, True, False, True])
    assert d.select_genes(mask).genes == ["A", "C", "E"]
    with pytest.raises(ValueError, match="more than once"):
        d.select_genes([1, 1])


# ------------------------------------------------------------------------------------------------------- read_expression
def reference_user_fixture():
    "The user fixture read independently with the csv module."
    with open(FIX / "user_counts.csv") as f:
        rows = list(csv.reader(f))
    samples, genes = rows[0][1:], [r[0] for r in rows[1:]]
    X = np.array([[float(v) for v in r[1:]] for r in rows[1:]]).T
    with open(FIX / "user_samples.csv") as f:
        sheet = {r["sample_id"]: r["condition"] for r in csv.DictReader(f)}
    return X, samples, genes, [sheet[s] for s in samples]


def test_user_csv_with_sample_sheet(caplog):
    X, samples, genes, labels = reference_user_fixture()
    with caplog.at_level(logging.INFO, logger="igtcga"):
        d = read_expression(FIX / "user_counts.csv", FIX / "user_samples.csv", label_column="condition")
    assert d.meta["orientation"] == "genes_x_samples"
    assert d.samples == samples and d.genes == genes
    np.testing.assert_array_equal(d.X, X.astype(np.float32))
    assert [d.classes[i] for i in d.y] == labels
    assert d.classes == ["disease", "healthy"]
    assert "1 sample sheet row(s) have no column" in caplog.text  # P99


def test_samples_x_genes_gzipped_tsv_gives_the_same_data(tmp_path):
    ref = read_expression(FIX / "user_counts.csv", FIX / "user_samples.csv", label_column="condition")
    df = pd.read_csv(FIX / "user_counts.csv", index_col=0).T
    path = tmp_path / "m.tsv.gz"
    with gzip.open(path, "wt") as f:
        df.to_csv(f, sep="\t")
    d = read_expression(path, FIX / "user_samples.csv", label_column="condition")
    assert d.meta["orientation"] == "samples_x_genes"
    np.testing.assert_array_equal(d.X, ref.X)
    np.testing.assert_array_equal(d.y, ref.y)
    # explicit orientation and an odd extension with an explicit separator
    odd = write(tmp_path / "m.dat", df.to_csv(sep=";"))
    d2 = read_expression(odd, FIX / "user_samples.csv", label_column="condition", orientation="samples_x_genes", sep=";")
    np.testing.assert_array_equal(d2.X, ref.X)


def test_h5ad_with_obs_labels_and_with_sample_sheet(tmp_path):
    X, samples, genes, labels = reference_user_fixture()
    d = read_expression(FIX / "user_data.h5ad", label_column="condition")
    assert d.samples == samples and d.genes == genes
    np.testing.assert_array_equal(d.X, X.astype(np.float32))
    assert [d.classes[i] for i in d.y] == labels
    sheet = write(tmp_path / "s.csv", "id,dx\n" + "\n".join(f"{s},{'x' if i % 2 else 'y'}" for i, s in enumerate(samples)) + "\n")
    d2 = read_expression(FIX / "user_data.h5ad", sheet, label_column="dx")
    assert d2.class_counts() == {"x": 3, "y": 4}
    with pytest.raises(KeyError, match="obs has no label column 'nope'"):
        read_expression(FIX / "user_data.h5ad", label_column="nope")


def test_round_trip_of_a_simulation_like_file_keeps_truth(tmp_path):
    d = toy()
    back = read_expression(d.write(tmp_path / "t.h5ad"))
    assert {k: v.tolist() for k, v in back.truth.items()} == {0: [1, 3], 1: [4]}


def test_dropped_samples_are_logged(tmp_path, caplog):
    m = write(tmp_path / "m.csv", "g,s1,s2,s3,s4,s5,s6\nA,1,2,3,4,5,6\nB,1,1,1,2,2,2\n")
    sheet = write(tmp_path / "s.csv", "sample,label\ns1,x\ns2,x\ns3,y\ns4,y\ns5,\n")  # s5 empty, s6 absent
    with caplog.at_level(logging.WARNING, logger="igtcga"):
        d = read_expression(m, sheet, label_column="label")
    assert d.samples == ["s1", "s2", "s3", "s4"]
    assert "1 sample(s) not in the sample sheet were dropped" in caplog.text
    assert "1 sample(s) with an empty label were dropped" in caplog.text


SHEET = "sample,label\ns1,x\ns2,x\ns3,y\ns4,y\n"
GOOD = "gene,s1,s2,s3,s4\nA,1,2,3,4\nB,5,6,7,8\n"


@pytest.mark.parametrize("matrix, sheet, kwargs, error, match", [
    ("gene,s1,s2,s3,s4\nA,1,oops,3,4\nB,5,6,7,8\n", SHEET, {}, ValueError, r"non-numeric value 'oops' in row 'A', column 's2'"),
    ("gene,s1,s2,s3,s4\nA,1,,3,4\nB,5,6,7,8\n", SHEET, {}, ValueError, r"1 missing \(NaN\) value\(s\); the first in row 'A', column 's2'"),
    ("gene,s1,s2,s3,s4\nA,1,NA,3,4\nB,5,6,7,NA\n", SHEET, {}, ValueError, r"2 missing \(NaN\)"),
    ("gene,s1,s2,s3,s4\nA,1,inf,3,4\nB,5,6,7,8\n", SHEET, {}, ValueError, r"infinite value"),
    ("gene,s1,s2,s3,s4\nA,1,1e39,3,4\nB,5,6,7,8\n", SHEET, {}, ValueError, r"too large for float32"),
    ("gene,s1,s2,s2,s4\nA,1,2,3,4\nB,5,6,7,8\n", SHEET, {}, ValueError, r"duplicate sample ids: \['s2'\]"),
    ("gene,s1,s2,s3,s4\nA,1,2,3,4\nA,5,6,7,8\n", SHEET, {}, ValueError, r"duplicate gene ids: \['A'\]"),
    (GOOD, "sample,label\ns1,x\ns1,y\ns3,y\n", {}, ValueError, r"lists 1 sample id\(s\) more than once"),
    ("gene,a,b,c,d\nA,1,2,3,4\nB,5,6,7,8\n", SHEET, {}, ValueError, r"none of the sample ids of the sample sheet match"),
    (GOOD, "sample,label\ns1,x\ns2,x\ns3,y\ns4,x\n", {}, ValueError, r"fewer than 2 samples: \{'y': 1\}"),
    (GOOD, "sample,label\ns1,x\ns2,x\ns3,x\ns4,x\n", {}, ValueError, r"a single class \('x', 4 samples\)"),
    (GOOD, "sample,diagnosis\ns1,x\n", {}, KeyError, r"label column 'label' is not in the sample sheet"),
    (GOOD, SHEET, {"sample_column": "id"}, KeyError, r"sample column 'id' is not in the sample sheet"),
    (GOOD, SHEET, {"orientation": "wide"}, ValueError, r"orientation must be one of"),
    ("gene,s1,s2\ns1,1,2\ns2,3,4\n", SHEET, {}, ValueError, r"cannot tell which side holds the samples: .*; pass orientation='genes_x_samples'"),
    ("gene\nA\nB\n", SHEET, {}, ValueError, r"the first line has 1 field"),
])
def test_each_bad_input_has_its_own_error(tmp_path, matrix, sheet, kwargs, error, match):
    m, s = write(tmp_path / "m.csv", matrix), write(tmp_path / "s.csv", sheet)
    with pytest.raises(error, match=match):
        read_expression(m, s, label_column="label", **kwargs)


@pytest.mark.filterwarnings("ignore:Variable names are not unique")
def test_missing_files_unsupported_types_and_missing_labels(tmp_path):
    with pytest.raises(FileNotFoundError, match="no such expression file"):
        read_expression(tmp_path / "nope.csv")
    m = write(tmp_path / "m.csv", GOOD)
    with pytest.raises(FileNotFoundError, match="no such sample sheet"):
        read_expression(m, tmp_path / "nope.csv")
    with pytest.raises(ValueError, match="unsupported file type"):
        read_expression(write(tmp_path / "m.xlsx", "x"))
    with pytest.raises(ValueError, match="no labels: give a sample_sheet"):
        read_expression(m)
    dup_h5 = ExprData(np.ones((4, 2)), [0, 0, 1, 1], ["a", "b"], ["g1", "g2"]).to_anndata()
    dup_h5.var_names = ["g1", "g1"]
    dup_h5.write_h5ad(tmp_path / "dup.h5ad")
    with pytest.raises(ValueError, match="duplicate gene ids"):
        read_expression(tmp_path / "dup.h5ad")


# ---------------------------------------------------------------------------------------------------------------- splits
@pytest.mark.parametrize("n", [3, 7, 100, 606, 1210, 9853, 9900])
def test_paper_split_is_the_legacy_global_shuffle(n):
    state = np.random.get_state()
    try:
        np.random.seed(43)
        order = list(range(n))
        np.random.shuffle(order)  # the original's calls (protocol §2.4)
    finally:
        np.random.set_state(state)
    before = np.random.get_state()[1].copy()
    s = paper_split(n)
    np.testing.assert_array_equal(np.random.get_state()[1], before)  # global state untouched
    n_test = int(np.floor(0.4 * n))
    np.testing.assert_array_equal(s.test, order[:n_test])
    np.testing.assert_array_equal(s.train, order[n_test:])
    assert s.train.dtype == np.int64 and s.test.dtype == np.int64


def test_paper_split_sizes_of_the_protocol():
    sizes = {n: (len(paper_split(n).test), len(paper_split(n).train)) for n in (9853, 9900, 1200, 1210, 606)}
    assert sizes == {9853: (3941, 5912), 9900: (3960, 5940), 1200: (480, 720), 1210: (484, 726), 606: (242, 364)}


def test_split_serialises_and_rejects_overlap():
    s = paper_split(50)
    d = json.loads(json.dumps(s.to_dict()))
    assert Split.from_dict(d) == s
    with pytest.raises(ValueError, match="overlap"):
        Split([0, 1, 2], [2, 3])
    with pytest.raises(ValueError, match="test_size must be a fraction"):
        paper_split(10, test_size=1.5)
    with pytest.raises(ValueError, match="leaves 0 test samples out of 2"):
        paper_split(2)


@pytest.mark.parametrize("seed", [0, 1, 5])
def test_stratified_split_proportions_and_partition(seed):
    rng = np.random.default_rng(seed)
    y = rng.permutation(np.repeat(np.arange(4), [50, 13, 7, 2]))
    s = stratified_split(y, test_size=0.3, seed=seed)
    np.testing.assert_array_equal(np.sort(np.concatenate([s.train, s.test])), np.arange(len(y)))
    for c, n_c in enumerate([50, 13, 7, 2]):
        expected = min(max(int(np.floor(0.3 * n_c + 0.5)), 1), n_c - 1)
        assert (y[s.test] == c).sum() == expected
    assert stratified_split(y, test_size=0.3, seed=seed) == s
    assert not np.array_equal(stratified_split(y, test_size=0.3, seed=seed + 100).test, s.test)


def test_stratified_split_needs_two_per_class():
    with pytest.raises(ValueError, match="at least 2 samples per class"):
        stratified_split(["a", "a", "b"])


# ------------------------------------------------------------------------------------------------------------ transforms
def test_hand_computed_elementwise_transforms():
    x = np.array([[0., 1., 3., 7., 1023.]])
    np.testing.assert_allclose(Log2p().transform(x), [[0, 1, 2, 3, 10]], rtol=1e-6)
    np.testing.assert_allclose(UndoLog2().transform([[0., 1., 2., 3., 10.]]), x, rtol=1e-6)
    np.testing.assert_allclose(CPM().transform([[1., 3.], [2., 2.]]), [[250000., 750000.], [500000., 500000.]])
    np.testing.assert_allclose(CPM(scale=100).transform([[1., 3.]]), [[25., 75.]])
    np.testing.assert_array_equal(Identity().transform(x), x.astype(np.float32))


def test_standardize_matches_torch_unbiased_std_and_uses_train_only():
    rng = np.random.default_rng(0)
    train, test = rng.normal(3, 2, (40, 6)), rng.normal(3, 2, (9, 6))
    t = Standardize().fit(train)
    tt = torch.tensor(train)
    mean, std = tt.mean(0), tt.std(0)  # torch's std is unbiased (n - 1), protocol §4
    np.testing.assert_allclose(t.transform(test), ((torch.tensor(test) - mean) / std).numpy(), rtol=1e-5, atol=1e-5)
    z = t.transform(train)
    np.testing.assert_allclose(z.mean(0), 0, atol=1e-5)
    np.testing.assert_allclose(z.std(0, ddof=1), 1, atol=1e-5)
    assert t.transform(test).dtype == np.float32


@pytest.mark.parametrize("value", [0.0, 0.1, 1e6 / 3])
def test_constant_genes_give_no_nan(value):
    X = np.random.default_rng(1).normal(size=(30, 4))
    X[:, 2] = value  # inexact in binary for 0.1 and 1e6/3
    t = Standardize().fit(X)
    z = t.transform(X)
    assert np.isfinite(z).all()
    np.testing.assert_array_equal(z[:, 2], 0)  # exactly 0, not rounding noise divided by a tiny std
    assert t.std[2] == 1
    new = X[:2].copy(); new[:, 2] = value + 1
    np.testing.assert_allclose(t.transform(new)[:, 2], 1, rtol=1e-5)
    np.testing.assert_array_equal(Center().fit(X).transform(X)[:, 2], 0)
    # the same through the full pancan recipe (log then standardise)
    assert np.isfinite(transform_for("pancan").fit_transform(np.abs(X)).astype(float)).all()


def test_gene_stats_blockwise_equals_whole():
    X = np.random.default_rng(2).normal(size=(13, 50)).astype(np.float32)
    m1, s1 = _gene_stats(X, ddof=1, block_elems=13 * 3)  # 3 genes per block
    m2, s2 = _gene_stats(X, ddof=1)
    np.testing.assert_allclose(m1, m2, rtol=1e-12)
    np.testing.assert_allclose(s1, s2, rtol=1e-12)
    np.testing.assert_allclose(s1, X.astype(np.float64).std(0, ddof=1), rtol=1e-6)


def independent_recipes(dataset, train, test):
    "The formulas of protocol §4 written directly in float64 NumPy."
    if dataset == "pancan":
        L, Lt = np.log2(train + 1), np.log2(test + 1)
        return (Lt - L.mean(0)) / L.std(0, ddof=1)
    if dataset == "BRCA":
        def prep(x):
            counts = 2 ** x - 1
            return np.log2(counts / counts.sum(1, keepdims=True) * 1e6 + 1)
        return prep(test) - prep(train).mean(0)
    if dataset == "SIMU1":
        return (test - train.mean(0)) / train.std(0, ddof=1)


@pytest.mark.parametrize("dataset", ["pancan", "BRCA", "SIMU1"])
def test_recipes_match_the_protocol_formulas(dataset):
    rng = np.random.default_rng(3)
    raw = rng.lognormal(3, 1.5, (60, 8))
    if dataset == "BRCA": raw = np.log2(np.round(raw) + 1)  # GDC hub files store log2(count + 1)
    train, test = raw[:40], raw[40:]
    t = transform_for(dataset).fit(train)
    np.testing.assert_allclose(t.transform(test), independent_recipes(dataset, train, test), rtol=1e-4, atol=1e-4)


def test_brca_recipe_by_hand():
    stored = np.log2(np.array([[1., 3.], [3., 1.]]) + 1)
    after_log = np.log2(np.array([[250000., 750000.], [750000., 250000.]]) + 1)
    np.testing.assert_allclose(transform_for("kirc").fit_transform(stored), after_log - after_log.mean(0), rtol=1e-5)


def test_recipe_names_and_versions():
    assert [type(s).__name__ for s in transform_for("pancan").steps] == ["Log2p", "Standardize"]
    assert [type(s).__name__ for s in transform_for("BRCA").steps] == ["UndoLog2", "CPM", "Log2p", "Center"]
    for sim in ("SIMU1", "SIMU2", "SimuA", "SimuB", "SimuC", "simulation"):
        assert isinstance(transform_for(sim), Standardize)
        assert isinstance(transform_for(sim, version="v1"), Identity)
    assert [type(s).__name__ for s in transform_for("user").steps] == ["Log2p", "Standardize"]
    assert isinstance(transform_for("user", log=False), Standardize)
    with pytest.raises(ValueError, match="no transform recipe for 'TCGA'"):
        transform_for("TCGA")
    with pytest.raises(ValueError, match="not in the v1"):
        transform_for("BRCA", version="v1")
    with pytest.raises(ValueError, match="version must be"):
        transform_for("pancan", version="v2")


@pytest.mark.parametrize("dataset", ["pancan", "BRCA", "SIMU1", "user"])
def test_transforms_save_as_plain_data_and_pickle(dataset, tmp_path):
    rng = np.random.default_rng(4)
    X = rng.lognormal(2, 1, (20, 5))
    t = transform_for(dataset).fit(X)
    expected = t.transform(X)
    d = json.loads(json.dumps(t.to_dict()))  # plain data only
    np.testing.assert_array_equal(Transform.from_dict(d).transform(X), expected)
    np.testing.assert_array_equal(pickle.loads(pickle.dumps(t)).transform(X), expected)
    buf = io.BytesIO()
    torch.save({"transform": t.to_dict()}, buf)
    buf.seek(0)
    loaded = torch.load(buf, weights_only=True)["transform"]
    np.testing.assert_array_equal(Transform.from_dict(loaded).transform(X), expected)
    np.testing.assert_array_equal(t.transform(X[0]), expected[0])  # one sample as a vector, e.g. a baseline
    np.testing.assert_array_equal(t.transform(torch.tensor(X)), expected)


def test_transform_errors():
    X = np.ones((3, 2))
    with pytest.raises(RuntimeError, match="not fitted"):
        Standardize().transform(X)
    with pytest.raises(RuntimeError, match="Pipeline is not fitted"):
        transform_for("pancan").transform(X)
    with pytest.raises(ValueError, match="fitted on 2 genes but X has 3"):
        Center().fit(X).transform(np.ones((1, 3)))
    with pytest.raises(ValueError, match="needs x > -1"):
        Log2p().transform([[-1.0, 2.0]])
    with pytest.raises(ValueError, match="total of zero or less"):
        CPM().transform([[1., 1.], [0., 0.]])
    with pytest.raises(ValueError, match="at least 2 training samples"):
        Standardize().fit(np.ones((1, 2)))
    with pytest.raises(ValueError, match="NaN"):
        Standardize().fit([[1., np.nan], [2., 3.]])
    with pytest.raises(ValueError, match="unknown transform type"):
        Transform.from_dict({"type": "Sqrt"})
    with pytest.raises(TypeError, match="must be Transforms"):
        Pipeline([Log2p(), np.log])
    with pytest.raises(ValueError, match="overflows float32"):
        UndoLog2().transform([[200.]])


# ------------------------------------------------------------------------------------------------------------------- QC
def test_quality_control_against_loops():
    rng = np.random.default_rng(5)
    X = rng.poisson(rng.choice([0.5, 20], size=(1, 30)), size=(40, 30)).astype(float)
    X[:3, :25] = 0
    y = rng.integers(0, 3, 40)
    flagged = low_count_genes(X, y)
    for g in range(30):
        fractions = [np.mean(X[y == c, g] < 5) for c in range(3)]
        assert flagged[g] == all(f > 0.75 for f in fractions)
    sparse = sparse_samples(X)
    for i in range(40):
        assert sparse[i] == (np.mean(X[i] == 0) > 0.75)
    with pytest.raises(ValueError, match="labels for"):
        low_count_genes(X, y[:-1])


# ------------------------------------------------------------------------------------------------------ dataset registry
def test_registry_is_the_one_source_of_dataset_facts():
    from igtcga.data import DATASETS, dataset_info
    from igtcga.experiments import Experiment
    from igtcga.simulation import PRESETS
    simulations = {k for k, v in DATASETS.items() if v.kind == "simulation"}
    assert simulations == set(PRESETS), "every simulation preset needs a registry entry, and the other way round"
    for name, info in DATASETS.items():
        transform_for(name)  # every entry has a transform recipe
        exp = Experiment.small(name)
        assert (exp.kind, exp.baseline) == (info.kind, info.baseline)
        assert exp.studied_classes == (None if info.studied is None else list(info.studied))
        assert exp.n_samples == info.small_samples
    assert dataset_info("KIRC") is DATASETS["kirc"] and dataset_info("x/counts.csv.gz").kind == "file"
    with pytest.raises(ValueError, match="unknown dataset 'simu9'"):
        dataset_info("simu9")


def test_informative_genes_live_with_the_data():
    from igtcga.data import informative_genes
    data = ExprData(np.ones((4, 5)), [0, 0, 1, 1], ["a", "b"], list("ABCDE"), truth={0: [0, 1], 1: [3]})
    assert {k: v.tolist() for k, v in informative_genes(data).items()} == {0: [0, 1, 3], 1: [0, 1, 3]}
    assert informative_genes(data, rule="own")[1].tolist() == [3]
    with pytest.raises(ValueError, match="no ground truth"):
        informative_genes(ExprData(np.ones((4, 5)), [0, 0, 1, 1], ["a", "b"], list("ABCDE")))
