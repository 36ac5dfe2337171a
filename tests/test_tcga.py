"""igtcga.tcga: the full parsing path on fixtures in the real formats (cross-checked against the original's pandas
algorithm, protocol §2.2/§2.3), integrity checks, and the download path against a local HTTP server: truncated files are
detected and fetched again, interrupted transfers resume, recorded and published hashes are enforced."""
import gzip, hashlib, http.server, json, os, shutil, sys, threading
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from igtcga.tcga import (TCGA_SOURCES, UNWANTED_LABELS, CorruptFileError, Source, fetch, load_tcga, parse_gdc,
                         parse_pancan, read_cdr_types, read_gdc_labels, read_gene_matrix, read_header, verify_file)

FIX = Path(__file__).parent / "fixtures"
PANCAN_X = FIX / "EBPlusPlusAdjustPANCAN_IlluminaHiSeq_RNASeqV2.geneExp.tsv"
CDR = FIX / "TCGA-CDR-SupplementalTableS1.xlsx"


# ------------------------------------------------------------------------------------------------ the original algorithm
def original_pancan(expression, phenotype_df):
    "dataset.py of the original (protocol §2.2), on the fixture, in pandas."
    df = pd.read_csv(expression, sep="\t", index_col="gene_id").transpose()
    df = df.drop(labels=[c for c in df.columns if c[:2] == "__"], axis=1)
    df = df[df.columns[df.max() > 0]]
    df = df.loc[np.isin([s.split("-")[3][:2] for s in df.index], ["01", "03"])]
    df = df.dropna(axis=1)
    labels = phenotype_df.set_index("bcr_patient_barcode")["type"]
    ids = [s for s in df.index if "-".join(s.split("-")[:3]) in labels.index]
    y = [labels["-".join(s.split("-")[:3])] for s in ids]
    return df.loc[ids], y


def original_gdc(expression, phenotype, project):
    df = pd.read_csv(expression, compression="gzip", sep="\t", index_col="Ensembl_ID").transpose()
    df = df.drop(labels=[c for c in df.columns if c[:2] == "__"], axis=1)
    df = df[df.columns[df.max() > 0]].dropna(axis=1)
    labels = pd.read_csv(phenotype, compression="gzip", sep="\t", index_col="submitter_id.samples")["sample_type.samples"]
    unwanted = UNWANTED_LABELS[project]
    ids = [s for s in df.index if s in labels.index and labels[s] == labels[s] and labels[s] not in unwanted]
    return df.loc[ids], [labels[s] for s in ids]


def test_pancan_fixture_matches_the_original_algorithm():
    d = parse_pancan(PANCAN_X, CDR)
    ref, y = original_pancan(PANCAN_X, pd.read_excel(CDR, index_col="Unnamed: 0"))
    assert d.samples == list(ref.index) and d.genes == list(ref.columns)
    np.testing.assert_allclose(d.X, ref.to_numpy(), rtol=1e-6)
    assert [d.classes[i] for i in d.y] == y
    assert d.classes == sorted(set(y))


def test_pancan_fixture_by_design():
    d = parse_pancan(PANCAN_X, CDR)
    assert d.class_counts() == {"ACC": 3, "BRCA": 4, "KIRC": 2, "LAML": 2, "UVM": 2}
    assert d.shape == (13, 10)
    codes = {s.split("-")[3][:2] for s in d.samples}
    assert codes == {"01", "03"}
    for gone in ("?|100130426", "NAT1|9", "SERPINA3|12", "OR4F29|729759"):
        assert gone not in d.genes
    for kept in ("NAT2|10", "XIST|7503", "OR4F5|79501", "SLC35E2|9906", "SLC35E2|728661"):
        assert kept in d.genes
    assert d.X.min() < 0  # EB++ values can be slightly negative
    assert d.meta["dropped_genes"] == dict(htseq_rows=0, max_not_positive=2, missing_values=2)
    assert d.meta["dropped_samples"] == dict(sample_type=3, no_label=1)  # two normals (11A), one metastatic (06A)


def test_pancan_readme_filter_drops_laml():
    d = parse_pancan(PANCAN_X, CDR, sample_types=("01",))
    assert "LAML" not in d.classes and d.n_samples == 11


def test_cdr_table_from_xlsx_and_from_the_original_rewritten_tsv(tmp_path):
    xl = read_cdr_types(CDR)
    df = pd.read_excel(CDR, index_col="Unnamed: 0")  # what the original downloader did, then wrote a gzipped TSV
    df.to_csv(tmp_path / "pancan_phenotype.tsv.gz", index=None, sep="\t", compression="gzip")
    pd.testing.assert_series_equal(read_cdr_types(tmp_path / "pancan_phenotype.tsv.gz"), xl)
    assert xl["TCGA-AB-2803"] == "LAML" and len(xl) == 14
    with pytest.raises(KeyError, match="is this the TCGA-CDR table"):
        read_cdr_types(FIX / "TCGA-BRCA.GDC_phenotype.tsv.gz")
    bad = df.copy()
    bad.loc[99] = bad.iloc[0]
    bad.loc[99, "type"] = "BRCA"
    bad.to_csv(tmp_path / "bad.tsv", index=None, sep="\t")
    with pytest.raises(ValueError, match="two different 'type' values"):
        read_cdr_types(tmp_path / "bad.tsv")


@pytest.mark.parametrize("project, counts", [("BRCA", {"Primary Tumor": 3, "Solid Tissue Normal": 3}),
                                             ("KIRC", {"Primary Tumor": 3, "Solid Tissue Normal": 2})])
def test_gdc_fixtures_match_the_original_algorithm(project, counts):
    expr, pheno = FIX / f"TCGA-{project}.htseq_counts.tsv.gz", FIX / f"TCGA-{project}.GDC_phenotype.tsv.gz"
    d = parse_gdc(expr, pheno, project)
    ref, y = original_gdc(expr, pheno, project)
    assert d.samples == list(ref.index) and d.genes == list(ref.columns)
    np.testing.assert_allclose(d.X, ref.to_numpy(), rtol=1e-6)
    assert [d.classes[i] for i in d.y] == y
    assert d.class_counts() == counts
    # protocol §12 B17: alphabetical classes, the normal class (1) is the reference / baseline class
    assert d.classes == ["Primary Tumor", "Solid Tissue Normal"]
    assert d.meta["reference_class"] == "Solid Tissue Normal" and d.meta["studied_classes"] == ["Primary Tumor"]
    assert "ENSG00000000938.11" not in d.genes and "ENSG00000001036.12" in d.genes
    assert not any(g.startswith("__") for g in d.genes)


def test_gdc_labels_and_errors(tmp_path):
    labels = read_gdc_labels(FIX / "TCGA-KIRC.GDC_phenotype.tsv.gz")
    assert labels["TCGA-CZ-5985-05A"] == "Additional - New Primary"
    with pytest.raises(KeyError, match="GDC hub phenotype table"):
        read_gdc_labels(FIX / "TCGA-KIRC.GDC_phenotype.tsv.gz", label_column="nope")
    with pytest.raises(FileNotFoundError):
        read_gdc_labels(tmp_path / "missing.tsv.gz")


@pytest.mark.parametrize("engine", ["c", "pyarrow"])
def test_gene_matrix_engines_agree(engine):
    if engine == "pyarrow": pytest.importorskip("pyarrow.csv")
    for path in (PANCAN_X, FIX / "TCGA-BRCA.htseq_counts.tsv.gz"):
        n = len(read_header(path)) - 1
        keep = np.arange(n) % 3 != 0
        scope = np.arange(n) % 2 == 0
        X, genes, samples, dropped = read_gene_matrix(path, keep=keep, nan_scope=scope, engine=engine, chunk_genes=3)
        # independent: pandas in one go
        df = pd.read_csv(path, sep="\t", index_col=0)
        df = df[~df.index.astype(str).str.startswith("__")]
        df = df[(df.max(axis=1) > 0) & ~df.iloc[:, scope].isna().any(axis=1)]
        assert genes == list(df.index.astype(str)) and samples == list(df.columns[keep])
        np.testing.assert_allclose(X, df.iloc[:, keep].to_numpy().T, rtol=1e-6)
        assert X.dtype == np.float32 and X.flags["C_CONTIGUOUS"]


def test_gene_matrix_bad_input(tmp_path):
    with pytest.raises(ValueError, match="boolean masks over the 17 samples"):
        read_gene_matrix(PANCAN_X, keep=[True, False])
    bad = tmp_path / "bad.tsv"
    bad.write_text("gene_id\ta\tb\nG1|1\t1\tx\n")
    with pytest.raises(ValueError, match="non-numeric value among genes 'G1|1'"):
        read_gene_matrix(bad, engine="c")
    with pytest.raises(ValueError, match="engine must be"):
        read_gene_matrix(PANCAN_X, engine="polars")
    dup = tmp_path / "dup.tsv"
    dup.write_text("gene_id\ta\ta\nG1|1\t1\t2\n")
    assert read_header(dup) == ["gene_id", "a", "a.1"]  # as pandas (and so the original) named them


# ------------------------------------------------------------------------------------------------------------- fixtures
def test_fixtures_are_small_and_regenerate_identically(tmp_path):
    assert sum(p.stat().st_size for p in FIX.iterdir() if p.is_file()) < 200_000
    import importlib.util
    spec = importlib.util.spec_from_file_location("make_fixtures", FIX / "make_fixtures.py")
    module, keep = importlib.util.module_from_spec(spec), sys.dont_write_bytecode
    sys.dont_write_bytecode = True  # no __pycache__ inside the fixtures folder
    try: spec.loader.exec_module(module)
    finally: sys.dont_write_bytecode = keep
    module.main(tmp_path)
    for p in FIX.iterdir():
        if p.suffix in (".tsv", ".csv", ".gz"):
            assert (tmp_path / p.name).read_bytes() == p.read_bytes(), p.name
    pd.testing.assert_frame_equal(pd.read_excel(tmp_path / CDR.name), pd.read_excel(CDR))


# ------------------------------------------------------------------------------------------------------ integrity checks
def test_verify_file_catches_truncation_and_corruption(tmp_path):
    for name in (PANCAN_X.name, CDR.name, "TCGA-BRCA.htseq_counts.tsv.gz"):
        assert verify_file(FIX / name) == FIX / name
        raw = (FIX / name).read_bytes()
        cut = tmp_path / name
        cut.write_bytes(raw[:-50])
        with pytest.raises(CorruptFileError):
            verify_file(cut)
    raw = bytearray((FIX / "TCGA-BRCA.htseq_counts.tsv.gz").read_bytes())
    raw[len(raw) // 2] ^= 0xFF  # one flipped byte inside the deflate stream
    flipped = tmp_path / "flipped.tsv.gz"
    flipped.write_bytes(bytes(raw))
    with pytest.raises(CorruptFileError, match="gzip"):
        verify_file(flipped)
    empty = tmp_path / "empty.tsv"
    empty.write_bytes(b"")
    with pytest.raises(CorruptFileError, match="missing or empty"):
        verify_file(empty)


# ------------------------------------------------------------------------------------------------------------ downloads
class Server:
    "A local HTTP server: files by path, a per-path plan of misbehaviours, Range support, a request log."
    def __init__(self):
        self.files, self.plan, self.log = {}, {}, []
        outer = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def log_message(self, *args): pass

            def do_GET(self):
                rng = self.headers.get("Range")
                outer.log.append((self.path, rng))
                if self.path not in outer.files:
                    self.send_error(404)
                    return
                data = outer.files[self.path]
                mode = outer.plan.get(self.path, []).pop(0) if outer.plan.get(self.path) else "full"
                start = int(rng.split("=")[1].split("-")[0]) if rng and mode in ("full", "drop") else 0
                body = data[start:]
                if mode == "truncated": body = body[: len(body) // 2]  # a consistent but short response
                self.send_response(206 if start else 200)
                if start: self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                if mode == "drop":  # announce everything, send half, hang up
                    self.wfile.write(body[: len(body) // 2])
                    self.wfile.flush()
                    self.close_connection = True
                    return
                self.wfile.write(body)

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def add(self, name, data):
        self.files["/" + name] = data
        return Source(f"{self.url}/{name}", name)

    def hits(self, name): return [r for p, r in self.log if p == "/" + name]


@pytest.fixture
def server(monkeypatch):
    monkeypatch.setenv("NO_PROXY", "127.0.0.1,localhost")
    monkeypatch.setenv("no_proxy", "127.0.0.1,localhost")
    s = Server()
    yield s
    s.httpd.shutdown()
    s.httpd.server_close()


def big_gz(n_lines=4000, seed=0):
    rng = np.random.default_rng(seed)
    text = "Ensembl_ID\tS1\tS2\n" + "".join(f"ENSG{i:011d}.1\t{a:.9f}\t{b:.9f}\n" for i, (a, b) in enumerate(rng.random((n_lines, 2))))
    return gzip.compress(text.encode(), mtime=0)


def test_download_records_hash_and_reuses_the_verified_copy(server, tmp_path):
    data = (FIX / "TCGA-BRCA.htseq_counts.tsv.gz").read_bytes()
    src = server.add("TCGA-BRCA.htseq_counts.tsv.gz", data)
    path = fetch(src, tmp_path, quiet=True, wait=0)
    assert path.read_bytes() == data
    record = json.loads((tmp_path / "sha256.json").read_text())[src.fname]
    assert record["sha256"] == hashlib.sha256(data).hexdigest() and record["size"] == len(data)
    fetch(src, tmp_path, quiet=True, wait=0)
    assert len(server.hits(src.fname)) == 1  # the second call used the verified copy


def test_truncated_file_is_detected_and_fetched_again(server, tmp_path):
    data = big_gz()
    src = server.add("TCGA-KIRC.htseq_counts.tsv.gz", data)
    server.plan["/" + src.fname] = ["truncated"]
    path = fetch(src, tmp_path, quiet=True, wait=0)
    assert path.read_bytes() == data
    assert len(server.hits(src.fname)) == 2
    assert not (tmp_path / (src.fname + ".part")).exists()


def test_interrupted_transfer_resumes_with_a_range_request(server, tmp_path):
    data = big_gz(8000)
    src = server.add("TCGA-BRCA.htseq_counts.tsv.gz", data)
    server.plan["/" + src.fname] = ["drop"]
    path = fetch(src, tmp_path, quiet=True, wait=0, chunk_size=1024)
    assert path.read_bytes() == data
    hits = server.hits(src.fname)
    assert len(hits) == 2 and hits[0] is None
    assert hits[1] is not None and int(hits[1].split("=")[1].rstrip("-")) > 0  # asked only for the rest


def test_a_file_that_never_arrives_whole_is_never_kept(server, tmp_path):
    src = server.add("TCGA-KIRC.GDC_phenotype.tsv.gz", big_gz())
    server.plan["/" + src.fname] = ["truncated"] * 3
    with pytest.raises(RuntimeError, match="in 3 attempts"):
        fetch(src, tmp_path, quiet=True, wait=0)
    assert not (tmp_path / src.fname).exists() and not (tmp_path / "sha256.json").exists()


def test_damaged_local_copy_is_replaced(server, tmp_path):
    data = big_gz()
    src = server.add("TCGA-KIRC.htseq_counts.tsv.gz", data)
    path = fetch(src, tmp_path, quiet=True, wait=0)
    damaged = bytearray(data)
    damaged[100] ^= 1
    path.write_bytes(bytes(damaged))  # damaged after the hash was recorded
    assert fetch(src, tmp_path, quiet=True, wait=0).read_bytes() == data
    assert len(server.hits(src.fname)) == 2


def test_existing_truncated_copy_without_record_is_replaced(server, tmp_path):
    data = big_gz()
    src = server.add("TCGA-KIRC.htseq_counts.tsv.gz", data)
    (tmp_path / src.fname).write_bytes(data[:-20])
    assert fetch(src, tmp_path, quiet=True, wait=0).read_bytes() == data


def test_published_md5_is_enforced(server, tmp_path):
    data = CDR.read_bytes()
    good = server.add("TCGA-CDR-SupplementalTableS1.xlsx", data)
    server.files["/files/good"] = json.dumps({"data": {"md5sum": hashlib.md5(data).hexdigest(), "file_size": len(data)}}).encode()
    server.files["/files/bad"] = json.dumps({"data": {"md5sum": "0" * 32}}).encode()
    path = fetch(Source(good.url, good.fname, md5_url=server.url + "/files/good"), tmp_path / "a", quiet=True, wait=0)
    assert path.read_bytes() == data
    assert "published md5" in json.loads((tmp_path / "a" / "sha256.json").read_text())[good.fname]["checked_by"]
    with pytest.raises(ValueError, match="does not match the hash published md5"):
        fetch(Source(good.url, good.fname, md5_url=server.url + "/files/bad"), tmp_path / "b", quiet=True, wait=0)
    assert not (tmp_path / "b" / good.fname).exists()
    # no record to be had (404): structural checks only
    fetch(Source(good.url, good.fname, md5_url=server.url + "/files/none"), tmp_path / "c", quiet=True, wait=0)
    assert json.loads((tmp_path / "c" / "sha256.json").read_text())[good.fname]["checked_by"] == "structure"


@pytest.mark.parametrize("name", ["pancan", "BRCA"])
def test_load_tcga_end_to_end_through_http_and_the_cache(server, tmp_path, name):
    key = "pancan" if name == "pancan" else name
    sources = {k: server.add(s.fname, (FIX / s.fname).read_bytes()) for k, s in TCGA_SOURCES[key].items()}
    d = load_tcga(name, folder=tmp_path, sources=sources, quiet=True)
    direct = (parse_pancan(PANCAN_X, CDR) if name == "pancan" else
              parse_gdc(FIX / "TCGA-BRCA.htseq_counts.tsv.gz", FIX / "TCGA-BRCA.GDC_phenotype.tsv.gz", "BRCA"))
    np.testing.assert_array_equal(d.X, direct.X)
    assert d.samples == direct.samples and d.genes == direct.genes
    assert (tmp_path / f"{key}.h5ad").exists()
    server.httpd.shutdown()  # the second load needs no network: verified files and the parsed cache
    again = load_tcga(name, folder=tmp_path, sources=sources)
    np.testing.assert_array_equal(again.y, d.y)
    assert again.classes == d.classes


def test_load_tcga_unknown_name():
    with pytest.raises(ValueError, match="unknown TCGA dataset 'LUAD'"):
        load_tcga("LUAD")
