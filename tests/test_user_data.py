"""A user's own matrix read so that the answer can be trusted (issue 13, the reading side): labels with only the empty
cell missing, label variants named, an orientation that cannot silently flip, the input scale checked, a record of
what was read and dropped, file errors that name the file and the fix, and a content fingerprint for the run cache.

Every input is written by the test into `tmp_path`. New names are looked up on the module inside each test (not
imported at the top), so that against the code before this change each test fails on its own finding."""
import gzip, json, logging, os, threading
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

import igtcga.data as data
from igtcga.data import ExprData, read_expression


def write(path, text):
    Path(path).write_text(text)
    return Path(path)


def sheet_text(pairs, header="sample,label"):
    return header + "\n" + "".join(f"{s},{l}\n" for s, l in pairs)


GOOD = "gene,s1,s2,s3,s4\nA,1,2,3,4\nB,5,6,7,9\nC,2,2,1,0\n"


# ------------------------------------------------------------------------------------------------ labels (finding 3)
@pytest.mark.parametrize("name", ["NA", "None", "null", "N/A", "nan", "NULL"])
def test_a_class_named_like_a_missing_value_survives(tmp_path, name):
    m = write(tmp_path / "m.csv", GOOD)
    s = write(tmp_path / "s.csv", sheet_text([("s1", name), ("s2", name), ("s3", "b"), ("s4", "b")]))
    d = read_expression(m, s, label_column="label")
    assert d.class_counts() == {name: 2, "b": 2}
    assert d.samples == ["s1", "s2", "s3", "s4"]


def test_a_class_named_NA_in_the_label_column_of_a_matrix(tmp_path):
    m = write(tmp_path / "m.tsv", "sample\tclass\tA\tB\ns1\tNA\t1\t2\ns2\tNA\t2\t1\ns3\tx\t5\t1\ns4\tx\t6\t0\ns5\t \t1\t1\n")
    d = read_expression(m)
    assert d.class_counts() == {"NA": 2, "x": 2}
    assert d.meta["read"]["dropped"] == {"empty label": {"count": 1, "examples": ["s5"]}}


def test_only_empty_or_blank_labels_are_missing_and_recorded(tmp_path, caplog):
    m = write(tmp_path / "m.csv", "gene,s1,s2,s3,s4,s5,s6\nA,1,2,3,4,5,6\nB,6,1,5,2,4,3\n")
    s = write(tmp_path / "s.csv", sheet_text([("s1", "x"), ("s2", "x"), ("s3", "y"), ("s4", "y"), ("s5", "   ")]))
    with caplog.at_level(logging.WARNING, logger="igtcga"):
        d = read_expression(m, s, label_column="label")
    assert d.samples == ["s1", "s2", "s3", "s4"]
    assert d.meta["read"]["dropped"] == {"not in the sample sheet": {"count": 1, "examples": ["s6"]},
                                         "empty label": {"count": 1, "examples": ["s5"]}}
    assert "1 sample(s) with an empty label were dropped, e.g. ['s5']" in caplog.text


def test_a_sample_id_NA_is_an_id(tmp_path):
    m = write(tmp_path / "m.csv", "gene,NA,s2,s3,s4\nA,1,2,3,4\nB,5,6,7,9\n")
    s = write(tmp_path / "s.csv", sheet_text([("NA", "x"), ("s2", "x"), ("s3", "y"), ("s4", "y")]))
    assert read_expression(m, s, label_column="label").samples == ["NA", "s2", "s3", "s4"]


def test_ids_are_kept_as_written_so_leading_zeros_still_match(tmp_path):
    m = write(tmp_path / "m.csv", "sample,A,B\n007,1,2\n008,2,1\n009,5,1\n010,6,0\n")
    s = write(tmp_path / "s.csv", sheet_text([("007", "x"), ("008", "x"), ("009", "y"), ("010", "y")]))
    d = read_expression(m, s, label_column="label")
    assert d.samples == ["007", "008", "009", "010"] and d.meta["orientation"] == "samples_x_genes"


@pytest.mark.parametrize("labels, classes, variants", [
    (["1", "1", "1.0", "1.0", "2", "2"], ["1", "1.0", "2"], {"1": {"1": 2, "1.0": 2}}),
    (["A", "A", "a", "a", "a", "b", "b"], ["A", "a", "b"], {"a": {"a": 3, "A": 2}}),
    (["t", "t", "t ", "t ", "n", "n"], ["n", "t", "t "], {"t": {"t": 2, "t ": 2}}),
    (["01", "01", "1", "1", "1", "x", "x"], ["01", "1", "x"], {"1": {"1": 3, "01": 2}}),
])
def test_label_variants_are_kept_apart_but_named(tmp_path, caplog, labels, classes, variants):
    ids = [f"s{i}" for i in range(len(labels))]
    m = write(tmp_path / "m.csv", "gene," + ",".join(ids) + "\nA," + ",".join(str(i) for i in range(len(ids))) + "\n")
    s = write(tmp_path / "s.csv", sheet_text(zip(ids, labels)))
    with caplog.at_level(logging.WARNING, logger="igtcga"):
        d = read_expression(m, s, label_column="label")
    assert sorted(d.classes) == sorted(classes)
    assert d.meta["read"]["label_variants"] == variants
    (group,) = variants.values()
    expected = " vs ".join(f"{k!r} ({n})" for k, n in group.items())
    assert f"kept as separate classes: {expected}" in caplog.text


def test_a_one_sample_class_that_is_a_variant_says_so(tmp_path):
    m = write(tmp_path / "m.csv", "gene,s1,s2,s3,s4,s5\nA,1,2,3,4,5\nB,5,4,3,2,0\n")
    s = write(tmp_path / "s.csv", sheet_text([("s1", "n"), ("s2", "n"), ("s3", "tumour"), ("s4", "tumour"), ("s5", "Tumour")]))
    with pytest.raises(ValueError, match=r"fewer than 2 samples: \{'Tumour': 1\}; remove them or merge them with another class "
                                         r"\(labels that differ only by case, whitespace or number format: 'tumour' \(2\) vs "
                                         r"'Tumour' \(1\)\)$"):
        read_expression(m, s, label_column="label")


def test_no_variant_warning_for_distinct_labels(tmp_path, caplog):
    m = write(tmp_path / "m.csv", GOOD)
    s = write(tmp_path / "s.csv", sheet_text([("s1", "10"), ("s2", "10"), ("s3", "1"), ("s4", "1")]))
    with caplog.at_level(logging.WARNING, logger="igtcga"):
        d = read_expression(m, s, label_column="label")
    assert d.meta["read"]["label_variants"] == {} and "separate classes" not in caplog.text


def test_h5ad_blank_labels_are_dropped_and_NA_is_a_class(tmp_path):
    ad = ExprData(np.arange(10.).reshape(5, 2), [0, 0, 1, 1, 0], ["NA", "b"], ["g1", "g2"]).to_anndata()
    ad.obs["cond"] = ["NA", "NA", "b", "b", " "]
    ad.write_h5ad(tmp_path / "d.h5ad")
    d = read_expression(tmp_path / "d.h5ad", label_column="cond")
    assert d.class_counts() == {"NA": 2, "b": 2}
    assert d.meta["read"]["dropped"] == {"empty label": {"count": 1, "examples": ["S4"]}}


# -------------------------------------------------------------------------------------------- orientation (finding 2)
def numeric_case(tmp_path, n_genes=1000, n_samples=30, in_sheet=27, other_batch=range(100, 200)):
    "Numeric gene ids and numeric sample ids, a few samples missing from the sheet, another batch listed in it."
    rng = np.random.default_rng(0)
    m = tmp_path / "numeric.csv"
    pd.DataFrame(rng.poisson(20, (n_genes, n_samples)), index=pd.Index([str(i) for i in range(1, n_genes + 1)], name="gene"),
                 columns=[str(i) for i in range(1, n_samples + 1)]).to_csv(m)
    ids = [*range(1, in_sheet + 1), *other_batch]
    s = write(tmp_path / "s.csv", sheet_text((i, "ab"[i % 2]) for i in ids))
    return m, s


def test_numeric_ids_with_samples_missing_from_the_sheet_keep_the_samples_on_the_columns(tmp_path):
    m, s = numeric_case(tmp_path)
    d = read_expression(m, s, label_column="label")
    assert (d.n_samples, d.n_genes, d.meta["orientation"]) == (27, 1000, "genes_x_samples")
    assert d.samples == [str(i) for i in range(1, 28)]
    assert d.meta["read"]["orientation_reason"] == ("columns hold the samples: 27 of 30 column names (90 %) are sample ids "
                                                    "of the sheet, against 127 of 1,000 row names (13 %)")


def test_the_same_matrix_transposed_keeps_the_samples_on_the_rows(tmp_path):
    m, s = numeric_case(tmp_path)
    pd.read_csv(m, index_col=0, dtype={"gene": str}).T.to_csv(tmp_path / "t.csv", index_label="sample")
    d = read_expression(tmp_path / "t.csv", s, label_column="label")
    assert (d.n_samples, d.n_genes, d.meta["orientation"]) == (27, 1000, "samples_x_genes")
    assert d.meta["read"]["orientation_reason"].startswith("rows hold the samples: 27 of 30 row names (90 %)")


@pytest.mark.parametrize("n_samples, in_sheet, n_genes", [
    (30, 12, 1000),  # 40 % of the columns: not a clear majority
    (30, 27, 40),  # 90 % of the columns but 68 % of the rows: not twice the other side
])
def test_an_unclear_orientation_is_refused_with_the_option_to_set_it(tmp_path, n_samples, in_sheet, n_genes):
    m, s = numeric_case(tmp_path, n_genes=n_genes, n_samples=n_samples, in_sheet=in_sheet, other_batch=range(0))
    with pytest.raises(ValueError, match=r"^numeric.csv: cannot tell which side holds the samples: .*"
                                         r"pass orientation='genes_x_samples' or 'samples_x_genes' \(--orientation"):
        read_expression(m, s, label_column="label")
    d = read_expression(m, s, label_column="label", orientation="genes_x_samples")
    assert d.n_samples == in_sheet and d.meta["read"]["orientation_reason"] == "given: orientation='genes_x_samples'"


def test_a_sheet_that_covers_a_few_samples_of_a_big_matrix_still_reads(tmp_path):
    "Gene symbols never look like sample ids: a sheet for 10 of 200 samples is unambiguous, however small its share."
    rng = np.random.default_rng(1)
    m = tmp_path / "big.csv"
    pd.DataFrame(rng.poisson(20, (50, 200)), index=pd.Index([f"GENE{i}" for i in range(50)], name="gene"),
                 columns=[f"TCGA-{i:04d}" for i in range(200)]).to_csv(m)
    s = write(tmp_path / "s.csv", sheet_text((f"TCGA-{i:04d}", "ab"[i % 2]) for i in range(10)))
    d = read_expression(m, s, label_column="label")
    assert (d.n_samples, d.n_genes, d.meta["orientation"]) == (10, 50, "genes_x_samples")
    assert d.meta["read"]["orientation_reason"].startswith("columns hold the samples: 10 of 200 column names (5 %)")


# ------------------------------------------------------------------------------------------ input scale (finding 4)
def test_transform_choices_are_the_public_list():
    assert data.TRANSFORM_CHOICES == ("auto", "log2", "cpm-log2", "standardize", "none")


def steps(t):
    return [type(s).__name__ for s in getattr(t, "steps", [t])]


def test_auto_on_counts_logs_them():
    X = np.random.default_rng(0).poisson(300, (40, 10)).astype(float)
    X[0, 0] = 123456
    t, why = data.choose_transform(X)
    assert steps(t) == ["Log2p", "Standardize"]
    assert why == "counts-like: max 1.23e+05, integer-valued (counts); log2(x + 1), then standardised"


def test_auto_on_tpm_like_values_logs_them():
    X = np.random.default_rng(0).lognormal(3, 2, (40, 10))
    t, why = data.choose_transform(X)
    assert steps(t) == ["Log2p", "Standardize"] and why.startswith("counts-like: max ") and "100 % non-integer" in why


def test_auto_on_log_scale_data_does_not_log_again():
    X = np.log2(np.random.default_rng(0).poisson(300, (40, 10)) + 1.0)
    t, why = data.choose_transform(X)
    assert steps(t) == ["Standardize"]
    assert why == (f"looks log-scale: non-negative, max {X.max():.3g}, 100 % of the non-zero values non-integer; "
                   "standardised only (no second log)")


def test_auto_on_a_standardised_matrix_with_negative_values_standardises_only(tmp_path):
    rng = np.random.default_rng(1)
    Z = rng.normal(size=(12, 30)).round(4)
    Z[0, 0] = -2.3
    ids = [f"s{i}" for i in range(12)]
    pd.DataFrame(Z.T, index=pd.Index([f"g{j}" for j in range(30)], name="gene"), columns=ids).to_csv(tmp_path / "z.csv")
    s = write(tmp_path / "s.csv", sheet_text((i, "ab"[k % 2]) for k, i in enumerate(ids)))
    d = read_expression(tmp_path / "z.csv", s, label_column="label")
    t, why = data.choose_transform(d)
    assert steps(t) == ["Standardize"]
    assert why == f"values go down to {Z.min():.3g}: already centred, log-ratio or standardised data; standardised only"
    out = t.fit_transform(d.X)  # runs: no "already log-transformed?" refusal
    np.testing.assert_allclose(out.mean(0), 0, atol=1e-5)


@pytest.mark.parametrize("choice, expected", [
    ("log2", ["Log2p", "Standardize"]), ("cpm-log2", ["CPM", "Log2p", "Standardize"]),
    ("standardize", ["Standardize"]), ("none", ["Identity"]),
])
def test_each_explicit_choice_gives_its_recipe(choice, expected):
    X = np.random.default_rng(2).poisson(50, (10, 4)).astype(float)
    t, why = data.choose_transform(X, choice)
    assert steps(t) == expected and why.startswith(f"{choice} as asked: ")


def test_an_explicit_choice_auto_would_not_make_says_so():
    X = np.log2(np.random.default_rng(2).poisson(50, (10, 4)) + 1.0)
    _, why = data.choose_transform(X, "log2")
    assert why.startswith("log2 as asked: log2(x + 1), then standardised (auto would choose standardize: looks log-scale")


def test_log2_on_negative_values_is_refused_naming_the_option():
    X = np.array([[1.0, -0.5], [2.0, 0.3], [0.1, 1.0]])
    for choice in ("log2", "cpm-log2"):
        with pytest.raises(ValueError, match=r"^the matrix: transform '.*' needs non-negative values but the smallest is "
                                             r"-0.5; use --transform standardize"):
            data.choose_transform(X, choice)


@pytest.mark.parametrize("X, match", [
    (np.zeros((5, 4)), "every value is 0"),
    (np.tile([3.0, 7.0, 0.0], (6, 1)), "every one of the 3 genes is constant across the samples"),
])
@pytest.mark.parametrize("choice", ["auto", "log2", "standardize", "none"])
def test_a_matrix_without_information_is_refused_for_every_choice(X, match, choice):
    with pytest.raises(ValueError, match=f"^m.csv: {match}"):
        data.choose_transform(X, choice, name="m.csv")


def test_choose_transform_names_the_file_of_an_expr_data(tmp_path):
    m = write(tmp_path / "flat.csv", "gene,s1,s2,s3,s4\nA,1,1,1,1\nB,5,5,5,5\n")
    d = read_expression(m, write(tmp_path / "s.csv", sheet_text([("s1", "x"), ("s2", "x"), ("s3", "y"), ("s4", "y")])),
                        label_column="label")
    assert d.meta["read"]["constant_genes"] == 2
    with pytest.raises(ValueError, match="^flat.csv: every one of the 2 genes is constant"):
        data.choose_transform(d)


def test_cpm_with_an_all_zero_sample_and_an_unknown_choice_are_refused():
    X = np.array([[1.0, 2.0], [0.0, 0.0], [3.0, 1.0]])
    with pytest.raises(ValueError, match=r"1 sample\(s\) have every value 0.*use --transform log2"):
        data.choose_transform(X, "cpm-log2")
    with pytest.raises(ValueError, match="transform must be one of"):
        data.choose_transform(X, "log10")


def test_auto_inspects_a_sample_of_rows_but_never_misses_a_negative_value():
    X = np.log2(np.random.default_rng(3).poisson(30, (5000, 20)) + 1.0)
    X[4321, 7] = -0.01  # on a row the integer check does not sample
    t, why = data.choose_transform(X)
    assert steps(t) == ["Standardize"] and why.startswith("values go down to -0.01")


def test_many_constant_genes_are_warned_about_and_recorded(tmp_path, caplog):
    rows = ["A,1,2,3,4", "B,4,3,2,1"] + [f"Z{i},0,0,0,0" for i in range(3)]
    m = write(tmp_path / "m.csv", "gene,s1,s2,s3,s4\n" + "\n".join(rows) + "\n")
    s = write(tmp_path / "s.csv", sheet_text([("s1", "x"), ("s2", "x"), ("s3", "y"), ("s4", "y")]))
    with caplog.at_level(logging.WARNING, logger="igtcga"):
        d = read_expression(m, s, label_column="label")
    assert d.meta["read"]["constant_genes"] == 3
    assert "m.csv: 3 of 5 genes (60 %) are constant across the samples read" in caplog.text


def test_the_old_user_recipe_switch_still_works():
    assert steps(data.transform_for("user")) == ["Log2p", "Standardize"]
    assert steps(data.transform_for("user", log=False)) == ["Standardize"]


# ------------------------------------------------------------------------------------- the record of what was read
def test_the_reading_record_is_complete_and_json_able(tmp_path):
    m = write(tmp_path / "m.csv", "gene,s1,s2,s3,s4,s5,s6,s7\nA,1,2,3,4,5,6,7\nB,0,0,0,0,0,0,0\nC,6,1,5,2,4,3,9\n")
    s = write(tmp_path / "s.csv", "id,dx\ns1,x\ns2,x\ns3,y\ns4,y\ns5,\n,y\ns9,x\n")
    d = read_expression(m, s, label_column="dx")
    assert d.meta["read"] == {
        "file": str(m), "label_column": "dx", "sample_sheet": str(s), "sample_column": "id", "sheet_rows": 7,
        "sheet_rows_without_id": 1, "format": "CSV", "separator": ",", "orientation": "genes_x_samples",
        "orientation_reason": "columns hold the samples: 5 of 7 column names (71 %) are sample ids of the sheet, against "
                              "0 of 3 row names (0 %)",
        "dropped": {"not in the sample sheet": {"count": 2, "examples": ["s6", "s7"]},
                    "empty label": {"count": 1, "examples": ["s5"]}},
        "sheet_rows_not_in_matrix": 1, "n_samples": 4, "n_genes": 3, "classes": {"x": 2, "y": 2}, "label_variants": {},
        "constant_genes": 1}
    assert json.loads(json.dumps(d.meta["read"])) == d.meta["read"]
    back = ExprData.read(d.write(tmp_path / "d.h5ad"))  # the record travels with the data
    assert back.meta["read"]["classes"] == {"x": 2, "y": 2}


def test_the_record_of_a_gzipped_tsv_and_of_an_h5ad(tmp_path):
    with gzip.open(tmp_path / "m.tsv.gz", "wt") as f:
        f.write("gene\ts1\ts2\ts3\ts4\nA\t1\t2\t3\t4\nB\t5\t6\t7\t9\n")
    s = write(tmp_path / "s.csv", sheet_text([("s1", "x"), ("s2", "x"), ("s3", "y"), ("s4", "y")]))
    d = read_expression(tmp_path / "m.tsv.gz", s, label_column="label")
    assert (d.meta["read"]["format"], d.meta["read"]["separator"]) == ("TSV, gzip-compressed", "\t")
    h = read_expression(d.write(tmp_path / "d.h5ad"), s, label_column="label")
    r = h.meta["read"]
    assert (r["format"], r["orientation"], r["orientation_reason"]) == ("h5ad (AnnData)", "samples_x_genes",
                                                                        "AnnData: obs are the samples")
    assert (r["n_samples"], r["n_genes"], r["classes"]) == (4, 2, {"x": 2, "y": 2})


def test_at_most_five_example_ids_per_reason(tmp_path):
    ids = [f"s{i}" for i in range(12)]
    m = write(tmp_path / "m.csv", "gene," + ",".join(ids) + "\nA," + ",".join(map(str, range(12))) + "\n")
    s = write(tmp_path / "s.csv", sheet_text([(i, "xy"[k % 2]) for k, i in enumerate(ids[:6])]))
    d = read_expression(m, s, label_column="label", orientation="genes_x_samples")
    assert d.meta["read"]["dropped"] == {"not in the sample sheet": {"count": 6, "examples": ids[6:11]}}


def test_describe_reading_is_a_table_and_a_list(tmp_path):
    m = write(tmp_path / "m.csv", "gene,s1,s2,s3,s4,s5\nA,1,2,3,4,5\nB,0,0,0,0,0\n")
    s = write(tmp_path / "s.csv", sheet_text([("s1", "a"), ("s2", "a"), ("s3", "A"), ("s4", "A")]))
    md = data.describe_reading(read_expression(m, s, label_column="label"))
    assert md == "\n".join([
        "**Read** `m.csv`", "", "| | |", "|---|---|", "| format | CSV |", "| labels | column `label` of `s.csv` |",
        "| orientation | genes × samples; columns hold the samples: 4 of 5 column names (80 %) are sample ids of the sheet, "
        "against 0 of 2 row names (0 %) |",
        "| samples | 4 |", "| genes | 2 |", "| classes | A (2), a (2) |", "",
        "- dropped 1 sample(s): not in the sample sheet, e.g. `s5`",
        "- label variants kept as separate classes: 'A' (2) vs 'a' (2)",
        "- 1 constant gene(s) (50.0 %): they carry nothing"])
    tidy = write(tmp_path / "t.csv", "sample,class,G\nu,x,1\nv,x,2\nw,y,3\nz,y,5\n")
    md = data.describe_reading(read_expression(tidy))
    assert "| labels | the file's own `class` column |" in md and md.endswith("- nothing dropped, no label variants, no constant genes")
    assert data.describe_reading(ExprData(np.eye(2), [0, 1], ["a", "b"], ["g", "h"])).endswith("not read from a user's file (no `meta['read']`).")


# ----------------------------------------------------------------------------------------- file errors (finding 5)
SHEET4 = sheet_text([("s1", "x"), ("s2", "x"), ("s3", "y"), ("s4", "y")])


def one_line(e):
    msg = str(e.value).strip("'\"")
    assert "\n" not in msg, msg
    return msg


def test_a_truncated_gz_matrix_names_the_file(tmp_path):
    raw = gzip.compress((GOOD * 1).encode() + b"".join(f"G{i},1,2,3,4\n".encode() for i in range(2000)))
    (tmp_path / "m.csv.gz").write_bytes(raw[:len(raw) // 2])
    with pytest.raises(ValueError) as e:
        read_expression(tmp_path / "m.csv.gz", write(tmp_path / "s.csv", SHEET4), label_column="label")
    assert one_line(e).startswith(f"{tmp_path / 'm.csv.gz'}: the gzip-compressed expression matrix is truncated or damaged (")
    assert one_line(e).endswith("; download or compress it again")


def test_a_truncated_gz_sample_sheet_names_the_file(tmp_path):
    raw = gzip.compress(("sample,label\n" + "".join(f"s{i},x\n" for i in range(3000))).encode())
    (tmp_path / "s.csv.gz").write_bytes(raw[:len(raw) // 2])
    with pytest.raises(ValueError, match=r"s.csv.gz: the gzip-compressed sample sheet is truncated or damaged"):
        read_expression(write(tmp_path / "m.csv", GOOD), tmp_path / "s.csv.gz", label_column="label")


def test_a_truncated_h5ad_names_the_file(tmp_path):
    whole = ExprData(np.arange(20.).reshape(4, 5), [0, 0, 1, 1], ["a", "b"], list("ABCDE")).write(tmp_path / "d.h5ad").read_bytes()
    (tmp_path / "cut.h5ad").write_bytes(whole[:len(whole) - 100])
    with pytest.raises(ValueError) as e:
        read_expression(tmp_path / "cut.h5ad")
    assert one_line(e).startswith(f"{tmp_path / 'cut.h5ad'}: the expression file is truncated or damaged (")
    assert one_line(e).endswith("; copy or write it again")


def test_a_non_hdf5_h5ad_names_the_file(tmp_path):
    with pytest.raises(ValueError) as e:
        read_expression(write(tmp_path / "x.h5ad", "gene,s1\nA,1\n"))
    assert one_line(e) == (f"{tmp_path / 'x.h5ad'}: the expression file is not an HDF5 file, as an .h5ad must be; write it "
                           "with anndata's write_h5ad (or scanpy), or save the matrix as CSV/TSV")


def test_an_hdf5_file_that_is_not_anndata(tmp_path):
    import h5py
    with h5py.File(tmp_path / "plain.h5ad", "w") as f:
        f["matrix"] = np.ones((2, 2))
    with pytest.raises(ValueError, match=r"plain.h5ad: an HDF5 file without AnnData's \['obs', 'var'\] group"):
        read_expression(tmp_path / "plain.h5ad")


def test_a_directory_as_matrix_or_sheet(tmp_path):
    m = write(tmp_path / "m.csv", GOOD)
    with pytest.raises(IsADirectoryError) as e:
        read_expression(tmp_path, write(tmp_path / "s.csv", SHEET4))
    assert one_line(e) == f"{tmp_path}: the expression file is a folder, not a file; give the path of the file inside it"
    (tmp_path / "sheets").mkdir()
    with pytest.raises(IsADirectoryError, match="the sample sheet is a folder, not a file"):
        read_expression(m, tmp_path / "sheets", label_column="label")
    assert issubclass(IsADirectoryError, OSError)


@pytest.mark.parametrize("text, match", [
    ("", r"s.csv: the sample sheet is empty \(0 bytes\); was it written completely\?"),
    ("sample,label\n", r"s.csv: the sample sheet has a header \(sample, label\) but no rows; add one row per sample"),
    ("\n\n", r"s.csv: the sample sheet holds no header and no rows"),
])
def test_an_empty_sample_sheet(tmp_path, text, match):
    with pytest.raises(ValueError, match=match):
        read_expression(write(tmp_path / "m.csv", GOOD), write(tmp_path / "s.csv", text), label_column="label")


def test_an_empty_matrix_file(tmp_path):
    with pytest.raises(ValueError, match=r"m.csv: the expression file is empty \(0 bytes\)"):
        read_expression(write(tmp_path / "m.csv", ""), write(tmp_path / "s.csv", SHEET4), label_column="label")


@pytest.mark.parametrize("role", ["matrix", "sheet"])
def test_a_fifo_named_csv_is_refused_without_hanging(tmp_path, role):
    fifo = tmp_path / "x.csv"
    os.mkfifo(fifo)
    m, s = (fifo, write(tmp_path / "s.csv", SHEET4)) if role == "matrix" else (write(tmp_path / "m.csv", GOOD), fifo)
    result = {}

    def run():
        try: read_expression(m, s, label_column="label")
        except Exception as e: result["error"] = e

    worker = threading.Thread(target=run, daemon=True)
    worker.start()
    worker.join(10)
    if worker.is_alive():  # the reader blocked on opening the pipe: give it an end of file so that the test can finish
        fd = os.open(fifo, os.O_WRONLY)
        os.close(fd)
        worker.join(10)
        pytest.fail("reading a FIFO blocked until a writer came")
    what = "expression file" if role == "matrix" else "sample sheet"
    assert isinstance(result.get("error"), ValueError), result
    assert str(result["error"]).startswith(f"{fifo}: the {what} is not a regular file (a named pipe")


def test_an_unreadable_file_names_the_fix(tmp_path, monkeypatch):
    m = write(tmp_path / "m.csv", GOOD)
    monkeypatch.setattr(data, "_readable", lambda p: Path(p).name != "m.csv")  # stands in for chmod 000 (root reads anything)
    with pytest.raises(PermissionError) as e:
        read_expression(m, write(tmp_path / "s.csv", SHEET4), label_column="label")
    assert one_line(e) == f"{m}: the expression file cannot be read (permission denied); make it readable (chmod u+r) or copy it"


@pytest.mark.skipif(not hasattr(os, "geteuid") or os.geteuid() == 0, reason="root can read a file without read permission")
def test_an_unreadable_file_for_real(tmp_path):
    s = write(tmp_path / "s.csv", SHEET4)
    s.chmod(0)
    try:
        with pytest.raises(PermissionError, match="the sample sheet cannot be read"):
            read_expression(write(tmp_path / "m.csv", GOOD), s, label_column="label")
    finally:
        s.chmod(0o644)


def test_a_binary_file_named_csv(tmp_path):
    (tmp_path / "m.csv").write_bytes(b"gene,s1\n\xff\xfe\x00\x01,3\n")
    with pytest.raises(ValueError, match=r"m.csv: the expression matrix is not UTF-8 text"):
        read_expression(tmp_path / "m.csv", write(tmp_path / "s.csv", SHEET4), label_column="label")


def test_ragged_rows_name_the_file(tmp_path):
    m = write(tmp_path / "m.csv", "gene,s1,s2,s3,s4\nA,1,2,3,4\nB,5,6,7,9,9,9\n")
    with pytest.raises(ValueError, match=r"m.csv: cannot parse the expression matrix \(.*\); every row needs as many fields"):
        read_expression(m, write(tmp_path / "s.csv", SHEET4), label_column="label")


def test_a_header_without_a_row_id_name(tmp_path):
    m = write(tmp_path / "m.csv", "s1,s2,s3,s4\nA,1,2,3,4\nB,5,6,7,9\n")  # R's write.table without col.names=NA
    with pytest.raises(ValueError, match="m.csv: some rows have more fields than the header's 4; if the header lacks a name"):
        read_expression(m, write(tmp_path / "s.csv", SHEET4), label_column="label")


# --------------------------------------------------------------------------------------- fingerprint (finding 1)
def test_fingerprint_is_equal_for_the_same_content_read_twice(tmp_path):
    m, s = write(tmp_path / "m.csv", GOOD), write(tmp_path / "s.csv", SHEET4)
    a, b = read_expression(m, s, label_column="label"), read_expression(m, s, label_column="label")
    assert a.fingerprint() == b.fingerprint() and len(a.fingerprint()) == 40
    int(a.fingerprint(), 16)  # hexadecimal
    (tmp_path / "copy").mkdir()
    c = read_expression(write(tmp_path / "copy" / "other.csv", GOOD), s, label_column="label")
    assert c.fingerprint() == a.fingerprint()  # the path is not content


def test_fingerprint_differs_when_a_file_is_overwritten_in_place(tmp_path):
    m, s = write(tmp_path / "m.csv", GOOD), write(tmp_path / "s.csv", SHEET4)
    before = read_expression(m, s, label_column="label").fingerprint()
    write(m, GOOD.replace("B,5,6,7,9", "B,5,6,7,8"))  # same path, shape and ids; one value changed
    assert read_expression(m, s, label_column="label").fingerprint() != before
    write(s, sheet_text([("s1", "x"), ("s2", "y"), ("s3", "x"), ("s4", "y")]))  # the same matrix, other labels
    write(m, GOOD)
    assert read_expression(m, s, label_column="label").fingerprint() != before


def test_fingerprint_covers_every_part_of_the_content():
    base = dict(X=np.arange(12.).reshape(4, 3), y=[0, 1, 1, 0], classes=["a", "b"], genes=["g1", "g2", "g3"])
    fp = ExprData(**base).fingerprint()
    changed = [dict(base, X=np.arange(12.).reshape(4, 3)[:, [1, 0, 2]]), dict(base, y=[1, 0, 1, 0]),
               dict(base, classes=["a", "c"]), dict(base, genes=["g1", "g2", "g4"]), dict(base, samples=list("wxyz")),
               dict(base, truth={0: [1]}), dict(base, subclass=[0, 1, 2, 0]), dict(base, X=np.arange(12.).reshape(3, 4), y=[0, 1, 0],
                                                                                       genes=["g1", "g2", "g3", "g4"])]
    fps = [ExprData(**kw).fingerprint() for kw in changed]
    assert fp not in fps and len(set(fps)) == len(fps)
    assert ExprData(**dict(base, X=base["X"].astype(np.float32)), meta={"source": "x"}).fingerprint() == fp  # meta is not content


def test_fingerprint_is_stable_across_versions():
    "The run cache is keyed on it: a change here invalidates every user's cache, so it must be deliberate."
    import hashlib
    d = ExprData(np.arange(6.).reshape(3, 2), [0, 1, 0], ["a", "b"], ["g1", "g2"])
    parts = [("shape", np.array([3, 2], np.int64).tobytes()), ("X", np.arange(6, dtype=np.float32).tobytes()),
             ("y", np.array([0, 1, 0], np.int64).tobytes()), ("classes", b'["a", "b"]'), ("genes", b'["g1", "g2"]'),
             ("samples", b'["S0", "S1", "S2"]'), ("subclasses", b"null")]  # each part tagged and length-prefixed
    expected = hashlib.sha1(b"".join(f"{tag}:{len(b)}:".encode() + b for tag, b in parts)).hexdigest()
    assert d.fingerprint() == expected == "80a6fe42cc960aed71130e71506b23122c775fe6"
