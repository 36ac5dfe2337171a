"""The paper-protocol tables stored in `results/paper/`: complete, consistent with each other, and in range."""
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from igtcga.experiments import RESULT_COLUMNS, summarise

PAPER = Path(__file__).resolve().parents[1]/"results"/"paper"
DATASETS = ["SIMU1", "SIMU2", "SimuA", "SimuB", "SimuC"]


@pytest.mark.parametrize("dataset", DATASETS)
def test_results_cover_ten_seeds_of_both_models(dataset):
    results = pd.read_csv(PAPER/dataset/"results.csv")
    assert list(results.columns[:len(RESULT_COLUMNS)]) == RESULT_COLUMNS
    assert results.groupby("model")["seed"].apply(sorted).to_dict() == {"LR": list(range(1, 11)), "MLP": list(range(1, 11))}
    scores = results[RESULT_COLUMNS[4:]]
    assert scores.notna().all().all() and ((scores >= 0) & (scores <= 100)).all().all()


@pytest.mark.parametrize("dataset", DATASETS)
def test_summary_is_the_summary_of_the_results(dataset):
    stored = pd.read_csv(PAPER/dataset/"summary.csv")
    recomputed = summarise(pd.read_csv(PAPER/dataset/"results.csv"))
    assert list(stored.columns) == list(recomputed.columns)
    numeric = stored.columns[3:]
    np.testing.assert_allclose(stored[numeric].to_numpy(), recomputed[numeric].to_numpy(), atol=2e-4)
    assert "training seeds [1, 2, 3, 4, 5, 6, 7, 8, 9, 10]" in (PAPER/dataset/"report.md").read_text()


@pytest.mark.parametrize("dataset", DATASETS)
def test_stability_and_curves_are_in_range(dataset):
    stability = pd.read_csv(PAPER/dataset/"stability.csv")
    assert set(stability.model) == {"LR", "MLP"} and stability.overlap_mean.between(0, 100).all()
    assert (stability.groupby("model").overlap_mean.last() == 100).all()  # all genes: every pair shares all of them
    curves = pd.read_csv(PAPER/dataset/"curves.csv")
    assert curves.balanced_accuracy.between(0, 100).all() and {"top per class", "random"} <= set(curves.curve)


def test_published_numbers_are_well_formed():
    published = pd.read_csv(PAPER/"published.csv")
    assert set(published.metric) <= set(RESULT_COLUMNS[4:])
    assert not published.duplicated(["dataset", "model", "metric"]).any()
    assert published["mean"].between(0, 100).all() and (published["std"].dropna() >= 0).all()
    # the README tables give every column for SIMU1 and SimuA, for both models
    for d in ("SIMU1", "SimuA"):
        assert published[published.dataset == d].groupby("model").size().to_dict() == {"LR": 11, "MLP": 11}
