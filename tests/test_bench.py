"""`igtcga.bench.measure` called as a notebook calls it, children that die or run too long, and the code paths of the
notebooks' `slow` benchmark cells at tiny sizes.

Each case runs in a Python subprocess whose script comes from stdin: its functions live in a `__main__` that no other
process can import, as in a Jupyter kernel. Every subprocess has a timeout, so a regression that makes `measure`
hang fails here instead of hanging the test run."""
import subprocess, sys, textwrap, time
from pathlib import Path

import pandas as pd
import pytest

ROOT = Path(__file__).resolve().parent.parent

# Runs the exported cells of a notebook in `__main__`, as Jupyter's Run All does (IPython keeps the
# `from __future__ import annotations` of the first cell for the later ones, so do we).
RUN_EXPORTED_CELLS = """
import __future__, json
def run_exported_cells(path):
    for cell in json.load(open(path))["cells"]:
        src = "".join(cell["source"])
        if cell["cell_type"] == "code" and src.startswith("#| export"):
            exec(compile(src, path, "exec", flags=__future__.annotations.compiler_flag, dont_inherit=True), globals())
"""


def run_stdin(script:str, timeout:float=120)->str:
    "Run `script` as `python -` in the project root; fail if it errs or runs past `timeout` seconds."
    try:
        p = subprocess.run([sys.executable, "-"], input=textwrap.dedent(script), capture_output=True, text=True,
                           timeout=timeout, cwd=ROOT)
    except subprocess.TimeoutExpired:
        pytest.fail(f"the script ran past {timeout} s: measure hangs")
    assert p.returncode == 0, p.stdout[-2000:] + p.stderr[-4000:]
    return p.stdout


def test_main_function_runs_with_large_arguments():
    "A function of an unimportable `__main__` (no igtcga namesake), with arguments far larger than a pipe's buffer."
    out = run_stdin("""
        import numpy as np
        from igtcga.bench import measure
        def _bench_run(X, scale=1.0): return float(X.sum() * scale)
        X = np.ones((4000, 1000))  # 32 MB
        m = measure(_bench_run, X, scale=2.0)
        assert m["result"] == 8e6 and m["seconds"] > 0, m
        print("ok", m["result"])
    """, timeout=60)
    assert out.startswith("ok 8000000.0")


def test_notebook_functions_run_as_their_igtcga_namesakes():
    "The exported cells of 03_graph run in `__main__` (as in Jupyter): `measure` runs igtcga.graph's copies in a fresh interpreter."
    out = run_stdin(RUN_EXPORTED_CELLS + textwrap.dedent("""
        run_exported_cells("nbs/03_graph.ipynb")
        import math, tempfile
        from pathlib import Path
        import igtcga.graph, igtcga.bench as bench
        assert _ours.__module__ == "__main__"
        assert bench._namesake(_ours) is igtcga.graph._ours
        assert bench._namesake(GeneGraph) is igtcga.graph.GeneGraph
        with tempfile.TemporaryDirectory() as d:  # importable by name: no fork needed
            assert bench._write_call(Path(d) / "call.pkl", _ours, (_bench_data(50, 40), 0.5), {})
        m = measure(_ours, _bench_data(200, 300), 0.5)
        assert m["result"]["nnz"] > 0 and math.isfinite(m["peak_mb"]), m
        def _ours(X, threshold): return "edited in the notebook"  # differs from igtcga's: not replaced, run forked
        assert bench._namesake(_ours) is None
        assert measure(_ours, _bench_data(20, 30), 0.5)["result"] == "edited in the notebook"
        print("ok")
    """))
    assert out.strip() == "ok"


def _fails_in_child(call:str, error:str, message:str, setup:str="")->str:
    "A script that runs `measure(...)` as `call` and checks that it raises `error` with `message`, quickly."
    return f"""
        import os, time
        from igtcga.bench import measure
        {setup}
        t0 = time.perf_counter()
        try: {call}
        except {error} as e: assert {message!r} in str(e), e
        else: raise AssertionError("no {error}")
        assert time.perf_counter() - t0 < 20
        print("ok")
    """


@pytest.mark.parametrize("call", ["measure(os._exit, 3)", "measure(_crash, 3)"])
def test_dead_child_raises_at_once(call):
    "A child that dies without a result, in a fresh interpreter or forked from `__main__`, raises with its exit code."
    script = _fails_in_child(call, "RuntimeError", "without a result (exit code 3)", setup="def _crash(code): os._exit(code)")
    assert run_stdin(script, timeout=60).strip() == "ok"


def test_timeout_kills_the_child():
    script = _fails_in_child("measure(time.sleep, 60, timeout_s=1)", "TimeoutError", "ran past timeout_s=1 s")
    assert run_stdin(script, timeout=60).strip() == "ok"


def test_error_in_child_is_reported():
    script = _fails_in_child('measure(int, "not a number")', "RuntimeError", "failed in its child process")
    assert run_stdin(script, timeout=60).strip() == "ok"
    script = _fails_in_child('measure(int, "not a number")', "RuntimeError", "invalid literal")
    assert run_stdin(script, timeout=60).strip() == "ok"


@pytest.mark.parametrize("notebook", ["01_simulation", "02a_tcga", "03_graph", "05_training", "08_experiments"])
def test_benchmark_cell_code_paths(notebook):
    "The notebook's benchmark run from its own cells in `__main__`, at tiny sizes; every notebook function has its igtcga namesake."
    t0 = time.perf_counter()
    out = run_stdin(RUN_EXPORTED_CELLS + textwrap.dedent(f"""
        import types
        run_exported_cells("nbs/{notebook}.ipynb")
        from igtcga.bench import _namesake
        mine = [v for v in list(globals().values())
                if isinstance(v, (type, types.FunctionType)) and v.__module__ == "__main__" and v.__name__ != "run_exported_cells"]
        missing = [v.__qualname__ for v in mine if _namesake(v) is None]
        assert not missing, f"not the same as in the exported module (run nbdev-export?): {{missing}}"
        rows = _benchmark(tiny=True)
        assert rows and all(r["ours_s"] > 0 for r in rows if "extrapolated" not in r["case"]), rows  # a linear fit through two tiny timings can be anything
        print("ok", len(rows))
    """), timeout=180)
    assert out.startswith("ok"), out
    assert time.perf_counter() - t0 < 180


def test_benchmarks_are_reached_through_bench(monkeypatch):
    import igtcga.bench as bench, igtcga.graph, igtcga.simulation, igtcga.tcga, igtcga.training
    for mod in (igtcga.graph, igtcga.simulation, igtcga.tcga, igtcga.training):
        assert "benchmark" not in mod.__all__ and not hasattr(mod, "benchmark"), mod.__name__
        assert callable(mod._benchmark)
    assert all(target.endswith(":_benchmark") for target in bench.BENCHMARKS.values())
    monkeypatch.setattr(igtcga.graph, "_benchmark", lambda quick=False: [dict(benchmark="graph", case="stub", quick=quick)])
    table = bench.benchmark("graph", quick=True)
    assert isinstance(table, pd.DataFrame) and table.to_dict("records") == [dict(benchmark="graph", case="stub", quick=True)]
    with pytest.raises(ValueError, match=r"unknown benchmark\(s\) \['speed'\]"): bench.benchmark("speed")
