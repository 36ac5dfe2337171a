"""`igtcga-reproduce` as a user meets it: every mistake is one line on stderr with exit status 2 before any work,
the options of the API are on the command line, a standardised matrix runs with `--transform auto`, and `--out` is
never replaced when it holds files igtcga did not write."""
import ast
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

EXE = shutil.which("igtcga-reproduce")
TINY = ["--runs", "2", "--n-steps", "32", "--epochs", "5", "--quiet"]


def reproduce(*args, cache=None):
    "Run igtcga-reproduce with `args` (and IGTCGA_CACHE=cache when given); the finished process."
    assert EXE, "the igtcga-reproduce console script is not installed (pip install -e .)"
    env = {**os.environ, **({"IGTCGA_CACHE": str(cache)} if cache is not None else {})}
    return subprocess.run([EXE, *map(str, args)], capture_output=True, text=True, env=env, timeout=600)


def assert_one_line_error(done, *phrases):
    "Exit status 2 and exactly one line on stderr, `igtcga-reproduce: error: ...`, naming every phrase; no traceback."
    lines = done.stderr.strip().splitlines()
    assert done.returncode == 2, done.stderr[-3000:]
    assert len(lines) == 1 and lines[0].startswith("igtcga-reproduce: error: "), done.stderr[-3000:]
    for p in phrases: assert p in lines[0], lines[0]
    return lines[0]


@pytest.mark.parametrize("args, phrases", [
    (["--dataset", "SimuA", "--n-steps", "0"], ["n_steps must be an integer >= 1, got 0"]),
    (["--dataset", "SimuA", "--n-steps", "-5"], ["n_steps must be an integer >= 1, got -5"]),
    (["--dataset", "SimuA", "--runs", "0"], ["runs must be"]),
    (["--dataset", "SimuA", "--epochs", "0"], ["epochs must be"]),
    (["--dataset", "SIMU1", "--n-samples", "34"], ["SIMU1 with n_samples = 34", "lack a training or a test sample", "is the smallest size above 34"]),
    (["--dataset", "SimuA", "--studied", "C7"], ["studied class 'C7' is not a class", "'C0', 'C1'"]),
    (["--dataset", "SimuA", "--baseline", "class_mean:9"], ["baseline class '9'", "index in [0, 1]"]),
    (["--dataset", "SimuA", "--baseline", "median"], ["baseline must be 'zero', 'train_mean' or 'class_mean:<class>'"]),
    (["--dataset", "SimuA", "--transform", "none"], ["transform only applies to your own matrix"]),
    (["--dataset", "SimuA,SimuX"], ["unknown dataset 'SimuX'"]),
])
def test_every_argument_is_checked_before_any_work(tmp_path, args, phrases):
    done = reproduce(*args, "--out", tmp_path/"out", cache=tmp_path/"cache")
    assert_one_line_error(done, *phrases)
    assert not (tmp_path/"out").exists() and not list(tmp_path.rglob("*.pt")) and not list(tmp_path.rglob("*.h5ad"))


def test_the_data_are_checked_before_any_training(tmp_path, write_user_files):
    counts, sheet = write_user_files(tmp_path, n_genes=30)
    done = reproduce("--dataset", counts, "--labels", sheet, "--gap", "31", "--out", tmp_path/"out", *TINY, cache=tmp_path/"cache")
    assert_one_line_error(done, "counts.csv", "gap = 31 is more than the 30 genes")
    missing = reproduce("--dataset", tmp_path/"missing.csv", "--out", tmp_path/"out", cache=tmp_path/"cache")
    assert_one_line_error(missing, "missing.csv")
    assert not list(tmp_path.rglob("*.pt")) and not (tmp_path/"out").exists()


def test_out_is_checked_before_any_work(tmp_path):
    (tmp_path/"a-file").write_text("")
    assert_one_line_error(reproduce("--dataset", "SimuA", "--out", tmp_path/"a-file", cache=tmp_path/"cache"), "is a file")
    ro = tmp_path/"read-only"
    ro.mkdir(); ro.chmod(0o555)
    try: assert_one_line_error(reproduce("--dataset", "SimuA", "--out", ro, cache=tmp_path/"cache"), str(ro), "is read-only")
    finally: ro.chmod(0o755)
    assert not (tmp_path/"cache").exists()  # nothing simulated


def test_debug_shows_the_traceback(tmp_path):
    done = reproduce("--dataset", "SimuA", "--n-steps", "0", "--out", tmp_path/"out", "--debug", cache=tmp_path/"cache")
    assert done.returncode != 0 and "Traceback" in done.stderr and "n_steps must be" in done.stderr


def test_a_standardised_matrix_runs_with_transform_auto(tmp_path, write_user_files):
    counts, sheet = write_user_files(tmp_path, kind="zscored")  # 40 samples × 30 genes, z-scored: negative values
    assert pd.read_csv(counts, index_col=0).to_numpy().min() < 0
    done = reproduce("--dataset", counts, "--labels", sheet, "--transform", "auto", "--models", "LR", "--out", tmp_path/"out",
                     *TINY, cache=tmp_path/"cache")
    assert done.returncode == 0, done.stderr[-3000:]
    report = (tmp_path/"out"/"report.md").read_text()
    assert "## Data" in report and "40 samples × 30 genes, 2 classes" in report
    assert "| 0 | normal | 20 |" in report and "| 1 | tumour | 20 |" in report
    transform = next(line for line in report.splitlines() if line.startswith("Input transform:"))
    assert "standardised only" in transform and "log2" not in transform, transform
    assert len(pd.read_csv(tmp_path/"out"/"results.csv")) == 2


def test_reading_options_reach_the_reader(tmp_path, write_user_files):
    "Samples × genes, ';'-separated, the sample ids in the sheet's last column, numeric ids: each option says how to read it."
    counts, sheet = write_user_files(tmp_path, name="expr.txt", sep=";", samples_as_rows=True, id_column_first=False,
                                     numeric_ids=True, sheet_rows=36)
    done = reproduce("--dataset", counts, "--labels", sheet, "--sep", ";", "--orientation", "samples_x_genes",
                     "--sample-column", "sample", "--models", "LR", "--out", tmp_path/"out", *TINY, cache=tmp_path/"cache")
    assert done.returncode == 0, done.stderr[-3000:]
    report = (tmp_path/"out"/"report.md").read_text()
    assert "36 samples × 30 genes" in report and "samples × genes" in report and "';'" in report
    assert "dropped 4 sample(s)" in report  # what reading dropped, and why, is in the report


def test_baseline_studied_and_gap_reach_the_experiment(tmp_path, write_user_files):
    counts, sheet = write_user_files(tmp_path)
    done = reproduce("--dataset", counts, "--labels", sheet, "--baseline", "class_mean:normal", "--studied", "tumour",
                     "--gap", "3", "--models", "LR", "--out", tmp_path/"out", *TINY, cache=tmp_path/"cache")
    assert done.returncode == 0, done.stderr[-3000:]
    settings = json.loads((tmp_path/"out"/".igtcga-run.json").read_text())["experiments"][0]
    assert (settings["baseline"], settings["studied_classes"], settings["gap"]) == ("class_mean:0", [1], 3)


def test_out_holding_someone_elses_files_is_refused_unless_force(tmp_path, write_user_files):
    counts, sheet = write_user_files(tmp_path/"data")
    out = tmp_path/"my-analysis"
    out.mkdir()
    (out/"results.csv").write_text("my own results\n")
    (out/"report.md").write_text("# my notes\n")
    args = ["--dataset", counts, "--labels", sheet, "--models", "LR", "--out", out, *TINY]
    refused = reproduce(*args, cache=tmp_path/"cache")
    assert_one_line_error(refused, "which igtcga did not write", "--force")
    assert re.search(r"holds (report\.md|results\.csv)", refused.stderr)
    assert (out/"results.csv").read_text() == "my own results\n" and not list(tmp_path.rglob("*.pt"))
    done = reproduce(*args, "--force", cache=tmp_path/"cache")
    assert done.returncode == 0, done.stderr[-3000:]
    manifest = json.loads((out/".igtcga-run.json").read_text())
    assert sorted(p.name for p in out.iterdir()) == sorted(manifest["files"] + [".igtcga-run.json"])
    assert not (out/"report.md").read_text().startswith("# my notes")
    again = reproduce(*args, cache=tmp_path/"cache")  # igtcga's own folder is replaced without --force
    assert again.returncode == 0, again.stderr[-3000:]
    assert not [p for p in tmp_path.iterdir() if ".staging-" in p.name or ".old-" in p.name]


def test_a_damaged_cache_file_is_a_warning_line_and_recomputed(tmp_path, write_user_files):
    counts, sheet = write_user_files(tmp_path)
    args = ["--dataset", counts, "--labels", sheet, "--models", "LR", *TINY]
    assert reproduce(*args, "--out", tmp_path/"a", cache=tmp_path/"cache").returncode == 0
    metrics = sorted((tmp_path/"cache").rglob("run01_metrics_*.json"))
    assert len(metrics) == 1
    metrics[0].write_text(metrics[0].read_text()[:10])
    done = reproduce(*args, "--out", tmp_path/"b", cache=tmp_path/"cache")
    assert done.returncode == 0, done.stderr[-3000:]
    assert f"igtcga-reproduce: warning: cached metrics {metrics[0]} is damaged" in done.stderr
    assert (tmp_path/"a"/"results.csv").read_bytes() == (tmp_path/"b"/"results.csv").read_bytes()


# ----------------------------------------------------------------------------------------- the tests' own cache
def test_the_suite_runs_with_a_temporary_cache(igtcga_cache, tmp_path_factory):
    from igtcga.core import cache_dir
    base = tmp_path_factory.getbasetemp().resolve()
    assert Path(os.environ["IGTCGA_CACHE"]) == igtcga_cache
    assert base in cache_dir("graphs", create=False).resolve().parents


def test_no_test_points_igtcga_at_a_lasting_cache():
    "Every cache folder the tests give igtcga (cache=, folder=, IGTCGA_CACHE) is a temporary one, and none is the user's."
    here = Path(__file__).resolve()
    for path in sorted(here.parent.glob("*.py")):
        if path == here: continue
        text = path.read_text()
        for banned in ("Path.home(", "expanduser(", "os_cache(", ".cache/igtcga", 'delenv("IGTCGA_CACHE'):
            assert banned not in text, f"{path.name} uses {banned}"
        for node in ast.walk(ast.parse(text)):
            values = []
            if isinstance(node, ast.Call):
                values += [k.value for k in node.keywords if k.arg in ("cache", "folder")]
                if ast.unparse(node.func).endswith("setenv") and node.args and ast.unparse(node.args[0]) == "'IGTCGA_CACHE'":
                    values.append(node.args[1])
            if isinstance(node, ast.Dict):
                values += [v for k, v in zip(node.keys, node.values) if k is not None and ast.unparse(k) == "'IGTCGA_CACHE'"]
            for v in values:
                src = ast.unparse(v)
                assert src in ("True", "False", "None", "cache") or "tmp" in src, f"{path.name}: a cache that is not temporary: {src}"


@pytest.mark.parametrize("args, phrase", [
    (["SIMU9"], "unknown preset 'SIMU9'"),
    (["SimuA", "--out", "x.csv"], "--out must end in .h5ad, got 'x.csv'"),
    (["SimuA", "--n-samples", "0"], "n_samples"),
])
def test_igtcga_simulate_errors_are_one_line_too(tmp_path, args, phrase):
    exe = shutil.which("igtcga-simulate")
    assert exe, "the igtcga-simulate console script is not installed (pip install -e .)"
    done = subprocess.run([exe, *args], capture_output=True, text=True, cwd=tmp_path, timeout=120)
    lines = done.stderr.strip().splitlines()
    assert done.returncode == 2 and len(lines) == 1 and lines[0].startswith("igtcga-simulate: error: "), done.stderr[-2000:]
    assert phrase in lines[0], lines[0]
    assert not list(tmp_path.iterdir()), "nothing is written after an error"
