"""The end-to-end runner: a user's own CSV through `igtcga-reproduce`, caching and resumption, bad settings."""
import os
import shutil
import subprocess

import numpy as np
import pandas as pd
import pytest

from igtcga.experiments import RESULT_COLUMNS, Experiment, run_experiment, step_key, summarise
from igtcga.simulation import SimParams, simulate


@pytest.fixture(scope="module")
def user_files(tmp_path_factory):
    "A genes × samples CSV and a sample sheet, written the way a user would (no ground truth travels with them)."
    d = tmp_path_factory.mktemp("user")
    params = SimParams("toy", n_generated=2, n_genes=300, n_pathways=30, n_overexpressed=5, n_samples=80)
    data = simulate(params, seed=3)
    counts = pd.DataFrame(data.X.T, index=[f"GENE{i}" for i in range(data.n_genes)], columns=[f"P{i:03d}" for i in range(data.n_samples)])
    counts.index.name = "gene"
    counts.to_csv(d/"counts.csv")
    sheet = pd.DataFrame({"sample_id": counts.columns, "condition": np.where(data.y == 0, "tumour", "normal")})
    sheet.sample(frac=1, random_state=0).to_csv(d/"samples.csv", index=False)  # any row order
    return d


def test_user_csv_end_to_end_through_the_cli(user_files, tmp_path):
    out = tmp_path/"out"
    exe = shutil.which("igtcga-reproduce")
    assert exe, "the igtcga-reproduce console script is not installed (pip install -e .)"
    cmd = [exe, "--dataset", str(user_files/"counts.csv"), "--labels", str(user_files/"samples.csv"), "--label-column", "condition",
           "--models", "LR", "--runs", "2", "--epochs", "5", "--n-steps", "64", "--out", str(out), "--quiet"]
    done = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, "IGTCGA_CACHE": str(tmp_path/"cache")})
    assert done.returncode == 0, done.stderr[-3000:]
    results = pd.read_csv(out/"results.csv")
    assert list(results.columns[:len(RESULT_COLUMNS)]) == RESULT_COLUMNS
    assert len(results) == 2 and results["seed"].tolist() == [1, 2]
    assert results[["FA_local", "FA_global", "FA_local_diffused", "FA_global_diffused"]].isna().all().all()  # no truth
    pg = results[["PGU_local", "PGI_local", "PGU_global", "PGI_global", "PGR"]]
    assert pg.notna().all().all() and ((pg >= 0) & (pg <= 100)).all().all()
    assert (results["PGI_local"] > results["PGU_local"]).all()  # removing the most important genes hurts more
    assert (out/"summary.csv").exists() and "counts.csv" in (out/"report.md").read_text()


def test_cache_reuses_training_and_recomputes_what_changed(tmp_path):
    exp = Experiment(dataset="SimuA", models=("LR",), runs=2, n_samples=60, n_steps=32, n_random=2, epochs=3)
    first = run_experiment(exp, tmp_path/"a", cache=tmp_path/"cache", quiet=True)
    checkpoints = sorted((tmp_path/"cache"/"runs").rglob("*.pt"))
    assert len(checkpoints) == 2
    stamps = [p.stat().st_mtime_ns for p in checkpoints]
    again = run_experiment(exp, tmp_path/"b", cache=tmp_path/"cache", quiet=True)
    pd.testing.assert_frame_equal(first, again)
    looser = Experiment(dataset="SimuA", models=("LR",), runs=2, n_samples=60, n_steps=32, n_random=2, epochs=3, tol=1e-2)
    run_experiment(looser, tmp_path/"c", cache=tmp_path/"cache", quiet=True)
    assert [p.stat().st_mtime_ns for p in checkpoints] == stamps  # training not redone
    assert len(list((tmp_path/"cache"/"runs").rglob("*_ig_*.npz"))) == 4  # attributions redone for the new tolerance
    # an interrupted series resumes: delete one checkpoint, only that run is retrained
    checkpoints[1].unlink()
    resumed = run_experiment(exp, tmp_path/"d", cache=tmp_path/"cache", quiet=True)
    assert checkpoints[1].exists() and checkpoints[0].stat().st_mtime_ns == stamps[0]
    assert resumed["balanced_test_acc"].tolist() == first["balanced_test_acc"].tolist()  # same seed, same model


def test_defaults_follow_the_study():
    assert (Experiment(dataset="SIMU1").baseline, Experiment(dataset="SIMU1").studied_classes) == ("zero", None)
    brca = Experiment(dataset="BRCA")
    assert (brca.dataset, brca.baseline, brca.studied_classes, brca.split) == ("brca", "class_mean:1", [0], "paper")
    assert Experiment(dataset="data.csv").split == "stratified"
    assert Experiment.paper("SIMU2").runs == 10 and Experiment.paper("SIMU2").n_samples is None


@pytest.mark.parametrize("kwargs, match", [
    (dict(dataset="SIMU9"), "unknown dataset"),
    (dict(models=("LR", "SVM")), "unknown model"),
    (dict(runs=0), "runs must be"),
    (dict(split="random"), "split must be"),
])
def test_bad_settings(kwargs, match):
    with pytest.raises(ValueError, match=match): Experiment(**kwargs)


def test_summary_is_mean_and_population_std():
    rows = pd.DataFrame(dict(dataset="D", model=["LR"] * 3 + ["MLP"], run=[1, 2, 3, 1], seed=[1, 2, 3, 1],
                             train_acc=[100.0] * 4, balanced_test_acc=[97.0, 98.0, 99.0, 90.0]))
    s = summarise(rows).set_index("model")
    assert s.loc["LR", "balanced_test_acc_mean"] == pytest.approx(98.0)
    assert s.loc["LR", "balanced_test_acc_std"] == pytest.approx(np.std([97.0, 98.0, 99.0]))
    assert s.loc["MLP", "balanced_test_acc_std"] == 0 and s.loc["MLP", "runs"] == 1
    assert step_key("x", [1, 2]) != step_key("x", [2, 1])


def test_cli_checks_every_dataset_of_a_list_before_running(tmp_path):
    exe = shutil.which("igtcga-reproduce")
    done = subprocess.run([exe, "--dataset", "SimuA,SimuX", "--out", str(tmp_path/"out"), "--quiet"], capture_output=True, text=True,
                          env={**os.environ, "IGTCGA_CACHE": str(tmp_path/"cache")})
    assert done.returncode != 0 and "unknown dataset 'SimuX'" in done.stderr
    assert not (tmp_path/"out").exists() and not (tmp_path/"cache").exists()  # nothing started


def test_fixed_batch_order_is_its_own_cached_series(tmp_path):
    from igtcga.training import load_checkpoint
    tiny = dict(dataset="SimuA", models=("LR",), runs=1, n_samples=40, n_steps=32, n_random=2, epochs=2)
    run_experiment(Experiment(**tiny), tmp_path/"a", cache=tmp_path/"cache", quiet=True)
    run_experiment(Experiment(**tiny, shuffle=False), tmp_path/"b", cache=tmp_path/"cache", quiet=True)
    reshuffled, fixed = (sorted((tmp_path/"cache"/"runs").rglob(f"{d}/run01_seed1.pt")) for d in ("LR-e2", "LR-e2-fixed"))
    assert len(reshuffled) == len(fixed) == 1
    assert load_checkpoint(reshuffled[0]).hparams["shuffle"] is True and load_checkpoint(fixed[0]).hparams["shuffle"] is False
    assert "| shuffle | False |" in (tmp_path/"b"/"report.md").read_text()
