"""Shared pytest configuration: the project root, `--nb-flags` to run notebook cells that are skipped by default, a
temporary igtcga cache for the whole session, and a writer of tiny user matrices."""
import os
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

ROOT = Path(__file__).resolve().parent.parent


def pytest_addoption(parser):
    parser.addoption("--nb-flags", default=os.environ.get("IGTCGA_NB_FLAGS", ""),
                     help="space-separated notebook cell flags to run as well (e.g. 'slow gpu tcga')")


@pytest.fixture(scope="session")
def root():
    return ROOT


@pytest.fixture(scope="session", autouse=True)
def igtcga_cache(tmp_path_factory):
    """igtcga's cache (`$IGTCGA_CACHE`) is a fresh temporary folder for the whole session, removed at the end: the tests,
    the notebooks they run and the command-line tools they start (which inherit the environment) never write graphs,
    simulations or downloads into the per-user cache folder."""
    path = tmp_path_factory.mktemp("igtcga-cache")
    before = os.environ.get("IGTCGA_CACHE")
    os.environ["IGTCGA_CACHE"] = str(path)
    yield path
    if before is None: os.environ.pop("IGTCGA_CACHE", None)
    else: os.environ["IGTCGA_CACHE"] = before
    shutil.rmtree(path, ignore_errors=True)


def _write_user_files(folder, kind="counts", n_per_class=20, n_genes=30, seed=0, name="counts.csv", sep=",",
                      samples_as_rows=False, id_column_first=True, sheet_rows=None, numeric_ids=False):
    """A two-class matrix the way a user would have it (genes × samples by default) and its sample sheet; returns both
    paths. `kind`: "counts" (Poisson, genes 0-4 up in the tumours), "zscored" (the same, log2 then z-scored per gene:
    negative values), or "noise" (the same shape, ids and labels, other values). `sheet_rows`: how many samples the sheet lists."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    n = 2 * n_per_class
    y = np.repeat(["normal", "tumour"], n_per_class)
    X = rng.poisson(30, size=(n, n_genes)).astype(float)
    if kind != "noise": X[y == "tumour", :5] += 40
    if kind == "zscored":
        X = np.log2(X + 1)
        X = (X - X.mean(0)) / X.std(0)
    samples = [str(i + 1) if numeric_ids else f"P{i:03d}" for i in range(n)]
    genes = [str(j + 1) if numeric_ids else f"GENE{j}" for j in range(n_genes)]
    table = pd.DataFrame(X, index=samples, columns=genes)
    if not samples_as_rows: table = table.T
    table.index.name = "id"
    table.to_csv(folder/name, sep=sep, float_format="%.6g")
    sheet = pd.DataFrame({"sample": samples, "class": y, "batch": "b1"})
    if not id_column_first: sheet = sheet[["batch", "class", "sample"]]
    sheet.iloc[:sheet_rows].to_csv(folder/"samples.csv", index=False)
    return folder/name, folder/"samples.csv"


@pytest.fixture(scope="session")
def write_user_files():
    "The writer of tiny user matrices (see `_write_user_files`)."
    return _write_user_files
