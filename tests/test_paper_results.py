"""The paper-protocol tables stored in `results/paper/`: complete, consistent with each other, and in range."""
from pathlib import Path

import json

import numpy as np
import pandas as pd
import pytest

from igtcga.experiments import MANIFEST, RESULT_COLUMNS, _files_under, check_out, summarise

PAPER = Path(__file__).resolve().parents[1]/"results"/"paper"
DATASETS = ["SIMU1", "SIMU2", "SimuA", "SimuB", "SimuC"]
SERIES = {"fixed": PAPER/"fixed_order", "reshuffled": PAPER}  # the study's batch order, and igtcga's default
FOLDERS = [pytest.param(folder/d, id=f"{o}-{d}") for o, folder in SERIES.items() for d in DATASETS]


@pytest.mark.parametrize("folder", FOLDERS)
def test_results_cover_ten_seeds_of_both_models(folder):
    results = pd.read_csv(folder/"results.csv")
    assert list(results.columns[:len(RESULT_COLUMNS)]) == RESULT_COLUMNS
    assert results.groupby("model")["seed"].apply(sorted).to_dict() == {"LR": list(range(1, 11)), "MLP": list(range(1, 11))}
    scores = results[RESULT_COLUMNS[4:]]
    assert scores.notna().all().all() and ((scores >= 0) & (scores <= 100)).all().all()


@pytest.mark.parametrize("folder", FOLDERS)
def test_summary_is_the_summary_of_the_results(folder):
    stored = pd.read_csv(folder/"summary.csv")
    recomputed = summarise(pd.read_csv(folder/"results.csv"))
    assert list(stored.columns) == list(recomputed.columns)
    numeric = stored.columns[3:]
    np.testing.assert_allclose(stored[numeric].to_numpy(), recomputed[numeric].to_numpy(), atol=2e-4)
    assert "training seeds [1, 2, 3, 4, 5, 6, 7, 8, 9, 10]" in (folder/"report.md").read_text()


@pytest.mark.parametrize("folder", FOLDERS)
def test_stability_and_curves_are_in_range(folder):
    stability = pd.read_csv(folder/"stability.csv")
    assert set(stability.model) == {"LR", "MLP"} and stability.overlap_mean.between(0, 100).all()
    assert (stability.groupby("model").overlap_mean.last() == 100).all()  # all genes: every pair shares all of them
    curves = pd.read_csv(folder/"curves.csv")
    assert curves.balanced_accuracy.between(0, 100).all() and {"top per class", "random"} <= set(curves.curve)


def test_published_numbers_are_well_formed():
    published = pd.read_csv(PAPER/"published.csv")
    assert set(published.metric) <= set(RESULT_COLUMNS[4:])
    assert not published.duplicated(["dataset", "model", "metric"]).any()
    assert published["mean"].between(0, 100).all() and (published["std"].dropna() >= 0).all()
    # the README tables give every column for SIMU1 and SimuA, for both models
    for d in ("SIMU1", "SimuA"):
        assert published[published.dataset == d].groupby("model").size().to_dict() == {"LR": 11, "MLP": 11}


@pytest.mark.parametrize("order, folder", SERIES.items())
def test_each_series_has_its_batch_order_and_a_complete_manifest(order, folder):
    for d in DATASETS:
        manifest = json.loads((folder/d/MANIFEST).read_text())
        assert manifest["files"] == [f for f in _files_under(folder/d) if f != MANIFEST]  # every stored file is igtcga's
        [exp] = manifest["experiments"]
        assert (exp["dataset"], exp["shuffle"], exp["runs"], exp["n_samples"]) == (d, order == "reshuffled", 10, None)
        check_out(folder/d, False)  # the recompute command may replace the folder


def test_the_fixed_series_can_be_recomputed_in_place():
    check_out(PAPER/"fixed_order", False)  # its top manifest lists every stored file, so `--out results/paper/fixed_order` works
    assert [e["dataset"] for e in json.loads((PAPER/"fixed_order"/MANIFEST).read_text())["experiments"]] == DATASETS
