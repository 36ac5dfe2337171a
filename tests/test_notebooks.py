"""Every notebook runs top to bottom with nbdev's own runner, one test per notebook.

Cells flagged with one of `tst_flags` in pyproject.toml (`slow`, `tcga`, `gpu`, `notest`) are skipped unless named in
`--nb-flags` (or the `IGTCGA_NB_FLAGS` environment variable)."""
from pathlib import Path

import pytest
from nbdev.config import get_config
from nbdev.test import test_nb as run_notebook

ROOT = Path(__file__).resolve().parent.parent
NOTEBOOKS = sorted((ROOT/"nbs").glob("*.ipynb"))


def test_there_are_notebooks():
    assert {"index", "00_core"} <= {p.stem for p in NOTEBOOKS}


@pytest.mark.parametrize("notebook", NOTEBOOKS, ids=[p.stem for p in NOTEBOOKS])
def test_notebook_runs(notebook, request, monkeypatch):
    monkeypatch.setenv("IGTCGA_PROGRESS", "0")
    monkeypatch.setenv("MPLBACKEND", "Agg")
    skip = get_config(ROOT).tst_flags
    skip = skip.split() if isinstance(skip, str) else list(skip)
    force = request.config.getoption("--nb-flags").split()
    # the failing cell and its traceback go to stderr, which pytest captures and shows with the failure
    ok, seconds = run_notebook(notebook, skip_flags=skip, force_flags=force, basepath=ROOT)
    assert ok, f"{notebook.name} failed: see the captured stderr below for the cell and its traceback"
