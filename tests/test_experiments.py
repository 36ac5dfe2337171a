"""The end-to-end runner: a user's own CSV through `igtcga-reproduce`, caching by content and resumption, damaged
cache files, bad settings, the report's account of the data, and an output folder written as a whole."""
import logging
import os
import re
import shutil
import socket
import subprocess
import sys
import time

import numpy as np
import pandas as pd
import pytest

from igtcga.experiments import RESULT_COLUMNS, Experiment, run_experiment, step_key, summarise
from igtcga.simulation import SimParams, simulate

METRICS = ["train_acc", "balanced_test_acc", "PGU_local", "PGU_global", "PGI_local", "PGI_global", "PGR"]


def tiny(dataset, labels=None, **kwargs):
    "A seconds-long experiment on a user's file."
    return Experiment(**{**dict(dataset=str(dataset), labels=None if labels is None else str(labels), models=("LR",), runs=2,
                                n_steps=32, n_random=2, epochs=5), **kwargs})


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
    assert not Experiment.paper("SIMU2").shuffle and Experiment.paper("brca").shuffle  # the study's batch order per dataset


def test_batch_order_flags(tmp_path, capsys):
    from igtcga.experiments import _reproduce
    args = dict(dataset="SimuA", models="LR", runs=1, n_samples=None, seed=0, out=str(tmp_path/"out"), labels=None, label_column="class",
                sample_column=None, orientation="auto", sep=None, transform="auto", baseline=None, studied=None, gap=10, n_steps=None,
                epochs=1, paper=True, device="cpu", force=False, quiet=True)
    with pytest.raises(ValueError, match="contradict"): _reproduce(**args, fixed_order=True, reshuffle=True)
    assert not (tmp_path/"out").exists()  # refused before any work


@pytest.mark.parametrize("kwargs, match", [
    (dict(dataset="SIMU9"), "unknown dataset"),
    (dict(models=("LR", "SVM")), "unknown model"),
    (dict(runs=0), "runs must be"),
    (dict(split="random"), "split must be"),
    (dict(n_steps=0), "n_steps must be an integer >= 1, got 0"),
    (dict(n_steps=-5), "n_steps must be an integer >= 1, got -5"),
    (dict(epochs=0), "epochs must be"),
    (dict(gap=0), "gap must be"),
    (dict(tol=0), "tol must be"),
    (dict(dataset="SIMU1", n_samples=34), "is the smallest size above 34"),
    (dict(dataset="SIMU1", n_samples=20), "n_samples must be an integer >= 33"),
    (dict(dataset="SimuA", gap=60_000), "gap = 60000 is more than the 50000 genes"),
    (dict(dataset="SimuA", studied_classes=["C5"]), "studied class 'C5' is not a class"),
    (dict(dataset="SimuA", baseline="class_mean:C9"), "baseline class 'C9' is not a class"),
    (dict(baseline="median"), "baseline must be"),
    (dict(transform="log2"), "transform only applies to your own matrix"),
    (dict(labels="samples.csv"), "labels only applies to your own matrix"),
    (dict(dataset="x.csv", transform="log10"), "transform must be one of"),
    (dict(dataset="x.csv", orientation="rows"), "orientation must be one of"),
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


# ------------------------------------------------------------------------------------------------- caching by content
def test_cache_is_keyed_by_content_not_by_path(tmp_path, write_user_files):
    counts, sheet = write_user_files(tmp_path/"project1")
    cache = tmp_path/"cache"
    first = run_experiment(tiny(counts, sheet), tmp_path/"a", cache, quiet=True)
    write_user_files(tmp_path/"project1", kind="noise")  # overwritten in place: same path, shape, ids and labels
    noise = run_experiment(tiny(counts, sheet), tmp_path/"b", cache, quiet=True)
    assert len(list((cache/"runs").iterdir())) == 2
    assert not first[METRICS].equals(noise[METRICS])
    other, other_sheet = write_user_files(tmp_path/"project2", seed=1)  # another project's counts.csv, same shape
    run_experiment(tiny(other, other_sheet), tmp_path/"c", cache, quiet=True)
    assert len(list((cache/"runs").iterdir())) == 3
    again = run_experiment(tiny(counts, sheet), tmp_path/"d", cache, quiet=True)  # the same content: the cache answers
    pd.testing.assert_frame_equal(again, noise)


def test_the_transform_is_part_of_the_cache_key(tmp_path, write_user_files):
    counts, sheet = write_user_files(tmp_path)
    for choice in ("log2", "none"): run_experiment(tiny(counts, sheet, transform=choice), tmp_path/choice, tmp_path/"cache", quiet=True)
    assert len(list((tmp_path/"cache"/"runs").iterdir())) == 2
    assert "Input transform: log2 as asked" in (tmp_path/"log2"/"report.md").read_text()
    assert "Input transform: none as asked" in (tmp_path/"none"/"report.md").read_text()


def _truncate(path):
    "Cut a file short, in the middle of a line for a text file."
    data = path.read_bytes()[: path.stat().st_size // 2]
    path.write_bytes(data[:-1] if data.endswith(b"\n") else data)


def test_every_damaged_cache_file_is_named_deleted_and_recomputed(tmp_path, write_user_files, caplog):
    counts, sheet = write_user_files(tmp_path)
    exp = tiny(counts, sheet, models=("DiffuseLR",))  # a Diffuse model: the graph is cached too
    first = run_experiment(exp, tmp_path/"a", tmp_path/"cache", quiet=True)
    patterns = dict(graph="graphs/*.npz", checkpoint="runs/*/*/run01_seed1.pt", attributions="runs/*/*/run01_ig_*.npz",
                    metrics="runs/*/*/run02_metrics_*.json", stability="runs/*/*/stability_*.csv", curves="runs/*/*/curves_*.csv")
    damaged = {}
    for kind, pattern in patterns.items():
        [damaged[kind]] = (tmp_path/"cache").glob(pattern)
        _truncate(damaged[kind])
    with caplog.at_level(logging.WARNING, logger="igtcga"):
        again = run_experiment(exp, tmp_path/"b", tmp_path/"cache", quiet=True)
    pd.testing.assert_frame_equal(first, again)
    for kind, path in damaged.items():
        assert any(f"{path} is damaged" in r.getMessage() for r in caplog.records), f"no warning names the damaged {kind} file"
        assert path.exists() and path.stat().st_size > 0, f"the {kind} file was not recomputed"
    for name in ("results.csv", "stability.csv", "curves.csv"):
        assert (tmp_path/"a"/name).read_bytes() == (tmp_path/"b"/name).read_bytes()


def test_a_damaged_simulated_dataset_is_drawn_again(tmp_path, caplog):
    from igtcga.experiments import load_dataset
    exp = Experiment(dataset="SimuA", n_samples=40)
    data = load_dataset(exp, tmp_path, quiet=True)
    [path] = (tmp_path/"data").glob("*.h5ad")
    _truncate(path)
    with caplog.at_level(logging.WARNING, logger="igtcga"):
        again = load_dataset(exp, tmp_path, quiet=True)
    assert np.array_equal(again.X, data.X) and again.samples == data.samples
    assert f"{path} is damaged" in caplog.text


def test_graphs_go_to_the_cache_given(tmp_path, write_user_files, monkeypatch):
    monkeypatch.setenv("IGTCGA_CACHE", str(tmp_path/"default"))
    counts, sheet = write_user_files(tmp_path)
    run_experiment(tiny(counts, sheet, models=("DiffuseLR",)), tmp_path/"out", tmp_path/"mine", quiet=True)
    assert len(list((tmp_path/"mine"/"graphs").glob("*.npz"))) == 1
    assert not (tmp_path/"default").exists() or not any((tmp_path/"default").rglob("*"))


def test_preset_results_do_not_depend_on_how_the_defaults_are_spelled(tmp_path):
    "A preset's files are the same from a cold and a warm cache, and with its baseline and studied class given by name."
    base = dict(dataset="SimuA", models=("LR",), runs=1, n_samples=40, n_steps=32, n_random=2, epochs=2)
    run_experiment(Experiment(**base), tmp_path/"a", tmp_path/"cache", quiet=True)
    run_experiment(Experiment(**base), tmp_path/"b", tmp_path/"cache", quiet=True)
    run_experiment(Experiment(**base, baseline="class_mean:C1", studied_classes=["C0"], gap=10), tmp_path/"c", tmp_path/"cache", quiet=True)
    for name in ("results.csv", "summary.csv", "stability.csv", "curves.csv"):
        assert (tmp_path/"a"/name).read_bytes() == (tmp_path/"b"/name).read_bytes() == (tmp_path/"c"/name).read_bytes(), name
    assert len(list((tmp_path/"cache").rglob("*_ig_*.npz"))) == 1  # the keys see class indices: the same attributions


# --------------------------------------------------------------------------------------------- data the run can use
def test_runs_that_get_no_test_sample_right_leave_stability_working(tmp_path, caplog):
    "Two samples per class, and each class's test sample is the other class's training profile: no run gets one right."
    from igtcga.data import read_expression, stratified_split
    y = np.array([0, 0, 1, 1])
    split = stratified_split(y, seed=0)
    profiles = np.random.default_rng(0).poisson(30, size=(2, 30)).astype(float)
    profiles[1, :5] += 60
    X = np.stack([profiles[y[i]] if i in split.train else profiles[1 - y[i]] for i in range(4)])
    samples = [f"P{i}" for i in range(4)]
    pd.DataFrame(X.T, index=[f"G{j}" for j in range(30)], columns=samples).rename_axis("gene").to_csv(tmp_path/"m.csv")
    pd.DataFrame({"sample": samples, "class": np.array(["a", "b"])[y]}).to_csv(tmp_path/"s.csv", index=False)
    assert read_expression(tmp_path/"m.csv", tmp_path/"s.csv").y.tolist() == y.tolist()
    with caplog.at_level(logging.WARNING, logger="igtcga"):
        res = run_experiment(tiny(tmp_path/"m.csv", tmp_path/"s.csv", epochs=25), tmp_path/"out", tmp_path/"cache", quiet=True)
    assert (res["train_acc"] == 100).all() and (res["balanced_test_acc"] == 0).all()
    assert pd.read_csv(tmp_path/"out"/"stability.csv").empty and pd.read_csv(tmp_path/"out"/"curves.csv").empty
    assert "classify no studied test sample correctly" in caplog.text


def test_report_states_what_the_data_were(tmp_path, write_user_files):
    counts, sheet = write_user_files(tmp_path, sheet_rows=36)  # the sheet lacks 4 samples
    run_experiment(tiny(counts, sheet), tmp_path/"out", tmp_path/"cache", quiet=True)
    report = (tmp_path/"out"/"report.md").read_text()
    assert "36 samples × 30 genes, 2 classes" in report and "stratified split" in report
    assert re.search(r"\| 0 \| normal \| 20 \| \d+ \| \d+ \|", report) and re.search(r"\| 1 \| tumour \| 16 \|", report)
    transform = next(line for line in report.splitlines() if line.startswith("Input transform:"))
    assert "counts-like" in transform and "log2(x + 1)" in transform
    assert "dropped 4 sample(s): not in the sample sheet" in report
    assert report.index("## Data") < report.index("## Settings") < report.index("## Wall time per stage")


# -------------------------------------------------------------------------------------- the output folder as a whole
def test_a_run_killed_while_writing_leaves_the_old_folder_whole(tmp_path, write_user_files, monkeypatch):
    import igtcga.experiments as ex
    counts, sheet = write_user_files(tmp_path/"data")
    run_experiment(tiny(counts, sheet), tmp_path/"out", tmp_path/"cache", quiet=True)
    before = {p.name: p.read_bytes() for p in (tmp_path/"out").iterdir()}
    real = ex.atomic_write
    def killed_at_the_report(path, *args, **kwargs):
        if os.path.basename(path) == "report.md": raise KeyboardInterrupt("killed between two output files")
        return real(path, *args, **kwargs)
    monkeypatch.setattr(ex, "atomic_write", killed_at_the_report)
    with pytest.raises(KeyboardInterrupt):
        run_experiment(tiny(counts, sheet, runs=3), tmp_path/"out", tmp_path/"cache", quiet=True)
    assert {p.name: p.read_bytes() for p in (tmp_path/"out").iterdir()} == before
    assert not [p.name for p in tmp_path.iterdir() if p.name.startswith(".out.")]


def test_left_overs_of_interrupted_runs_are_cleaned(tmp_path, write_user_files):
    counts, sheet = write_user_files(tmp_path/"data")
    exp = tiny(counts, sheet)
    run_experiment(exp, tmp_path/"out", tmp_path/"cache", quiet=True)
    [run_dir] = (tmp_path/"cache"/"runs").glob("*/LR-e5")
    hour_ago = time.time() - 3600
    old_tmp, new_tmp = run_dir/".run01_seed1.abcd1234.pt", run_dir/".run02_seed2.wxyz5678.pt"  # `atomic_path`'s names
    for p in (old_tmp, new_tmp): p.write_bytes(b"half a checkpoint")
    os.utime(old_tmp, (hour_ago, hour_ago))
    ended = subprocess.Popen([sys.executable, "-c", "pass"]); ended.wait()
    host = re.sub(r"[^A-Za-z0-9]", "_", socket.gethostname())[:40]
    gone = tmp_path/f".out.staging-{host}-{ended.pid}-abcdefgh"  # its process has ended
    busy = tmp_path/".out.staging-elsewhere-1-abcdefgh"  # another machine's, young: may be writing right now
    abandoned = tmp_path/".out.old-elsewhere-1-abcdefgh"
    for p in (gone, busy, abandoned): p.mkdir()
    os.utime(abandoned, (hour_ago, hour_ago))
    run_experiment(exp, tmp_path/"out", tmp_path/"cache", quiet=True)
    assert not old_tmp.exists() and new_tmp.exists()
    assert not gone.exists() and not abandoned.exists() and busy.exists()
