"""The runner's units through joblib: loky processes, a Dask LocalCluster and Ray on 127.0.0.1, each compared with the
sequential run byte for byte; the per-unit lock; and a worker that dies leaves nothing a later run trusts."""
import multiprocessing as mp
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest

from igtcga.experiments import Experiment, run_experiment, run_unit

EXP = dict(dataset="SimuA", models=("LR", "MLP"), runs=2, n_samples=60, n_steps=32, n_random=2, epochs=4)
FILES = ("results.csv", "stability.csv", "curves.csv", "genes.csv", "sanity.csv")


@pytest.fixture(scope="module")
def sequential(tmp_path_factory):
    "The reference: the sequential run in its own cache."
    d = tmp_path_factory.mktemp("seq")
    run_experiment(Experiment(**EXP), d/"out", d/"cache", quiet=True)
    return d/"out"


def same_outputs(a:Path, b:Path):
    for name in FILES: assert (a/name).read_bytes() == (b/name).read_bytes(), f"{name} differs"


def test_loky_two_jobs_gives_the_sequential_results(sequential, tmp_path):
    run_experiment(Experiment(**EXP), tmp_path/"out", tmp_path/"cache", quiet=True, n_jobs=2, backend="loky")
    same_outputs(sequential, tmp_path/"out")


def test_joblib_parallel_config_is_honoured(sequential, tmp_path):
    import joblib
    with joblib.parallel_config(backend="threading", n_jobs=2):
        run_experiment(Experiment(**EXP), tmp_path/"out", tmp_path/"cache", quiet=True)
    same_outputs(sequential, tmp_path/"out")
    assert len(list((tmp_path/"cache").rglob("run0*_metrics_*.json"))) == 4


def test_dask_local_cluster_gives_the_sequential_results(sequential, tmp_path):
    dist = pytest.importorskip("dask.distributed")
    with dist.LocalCluster(n_workers=2, threads_per_worker=1, processes=True, host="127.0.0.1", dashboard_address=None) as cluster:
        run_experiment(Experiment(**EXP), tmp_path/"out", tmp_path/"cache", quiet=True, backend="dask", scheduler=cluster.scheduler_address)
    same_outputs(sequential, tmp_path/"out")


def test_cli_jobs_2_backend_dask(sequential, tmp_path):
    pytest.importorskip("dask.distributed")
    exe = shutil.which("igtcga-reproduce")
    args = [exe, "--dataset", "SimuA", "--models", "LR,MLP", "--runs", "2", "--n-samples", "60", "--n-steps", "32",
            "--epochs", "4", "--quiet", "--jobs", "2", "--backend", "dask", "--out", str(tmp_path/"out")]
    env = {**os.environ, "IGTCGA_CACHE": str(tmp_path/"cache")}
    done = subprocess.run(args, capture_output=True, text=True, env=env, timeout=900)
    assert done.returncode == 0, done.stderr[-3000:]
    # the CLI's defaults (n_random 30) differ from EXP's: compare with the sequential CLI run
    seq = subprocess.run(args[:-6] + ["--out", str(tmp_path/"seq")], capture_output=True, text=True, env=env, timeout=900)
    assert seq.returncode == 0, seq.stderr[-3000:]
    same_outputs(tmp_path/"seq", tmp_path/"out")


def test_ray_gives_the_sequential_results(sequential, tmp_path):
    ray = pytest.importorskip("ray")
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, _node_ip_address="127.0.0.1")
    try: run_experiment(Experiment(**EXP), tmp_path/"out", tmp_path/"cache", quiet=True, backend="ray", n_jobs=2)
    finally: ray.shutdown()
    same_outputs(sequential, tmp_path/"out")


def test_two_workers_never_compute_the_same_unit_twice(tmp_path):
    import joblib
    exp = Experiment(**{**EXP, "models": ("LR",)})
    run_experiment(exp, tmp_path/"warm", tmp_path/"cache", quiet=True, n_jobs=1)  # data, graph and the other units exist
    for f in (tmp_path/"cache").rglob("run01_*"): f.unlink()  # unit (LR, 1) is to be done again
    out = joblib.Parallel(n_jobs=2, backend="loky")(joblib.delayed(run_unit)(exp, "LR", 1, str(tmp_path/"cache")) for _ in range(2))
    assert sorted(u["computed"] for u in out) == [False, True]
    assert out[0]["metrics"] == out[1]["metrics"]


def _hold_lock(path, ready):
    from filelock import FileLock
    lock = FileLock(path); lock.acquire()
    Path(str(path) + ".partial").write_text("half a file")  # what a dying worker might leave: not a cache file name
    ready.set(); time.sleep(600)


def test_a_dead_worker_releases_its_unit(tmp_path):
    from filelock import FileLock, Timeout
    lock = tmp_path/"run01.lock"
    ready = mp.get_context("spawn").Event()
    p = mp.get_context("spawn").Process(target=_hold_lock, args=(lock, ready)); p.start()
    assert ready.wait(60)
    with pytest.raises(Timeout): FileLock(lock).acquire(timeout=0.5)  # held while the worker lives
    os.kill(p.pid, signal.SIGKILL); p.join()
    with FileLock(lock, timeout=10): pass  # released by the operating system when it died


def test_bad_parallel_options_are_one_line_errors(tmp_path):
    exe = shutil.which("igtcga-reproduce")
    for args, words in ((["--jobs", "0"], "--jobs"), (["--backend", "spark"], "--backend must be one of"),
                        (["--scheduler", "tcp://127.0.0.1:1"], "--scheduler joins")):
        done = subprocess.run([exe, "--dataset", "SimuA", "--out", str(tmp_path/"o"), *args], capture_output=True, text=True, timeout=120)
        lines = done.stderr.strip().splitlines()
        assert done.returncode == 2 and len(lines) == 1 and words in lines[0], done.stderr
