"Shared pytest configuration: the project root, and `--nb-flags` to run notebook cells that are skipped by default."
import os
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


def pytest_addoption(parser):
    parser.addoption("--nb-flags", default=os.environ.get("IGTCGA_NB_FLAGS", ""),
                     help="space-separated notebook cell flags to run as well (e.g. 'slow gpu tcga')")


@pytest.fixture(scope="session")
def root():
    return ROOT
