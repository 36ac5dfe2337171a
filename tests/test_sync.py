"""Hygiene of the literate sources: the package is what the notebooks export, notebooks are clean and light, the README
is what `nbs/index.ipynb` renders to, and CI runs the README's commands."""
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
MAX_NOTEBOOK_BYTES = 300_000


def _nbdev_env():
    env = dict(os.environ)
    env.pop("IN_TEST", None)  # nbdev's export is a no-op under its own test runner
    return env


def _copy_project(dest):
    shutil.copy(ROOT/"pyproject.toml", dest/"pyproject.toml")
    shutil.copytree(ROOT/"nbs", dest/"nbs", ignore=shutil.ignore_patterns(".ipynb_checkpoints"))
    shutil.copytree(ROOT/"igtcga", dest/"igtcga", ignore=shutil.ignore_patterns("__pycache__"))


def _modules(folder):
    return {p.name: p.read_text(encoding="utf-8") for p in sorted(folder.glob("*.py"))}


def test_package_is_what_the_notebooks_export(tmp_path):
    _copy_project(tmp_path)
    for p in (tmp_path/"igtcga").glob("*.py"):
        if p.name != "__init__.py": p.unlink()  # a hand-written module with no notebook must show up as extra
    subprocess.run(["nbdev-export"], cwd=tmp_path, env=_nbdev_env(), check=True, capture_output=True)
    committed, exported = _modules(ROOT/"igtcga"), _modules(tmp_path/"igtcga")
    assert sorted(committed) == sorted(exported), "igtcga/ holds modules that no notebook exports, or misses some"
    stale = [name for name in committed if committed[name] != exported[name]]
    assert not stale, f"igtcga/{stale} differ from what nbdev-export makes of nbs/: edit the notebooks, then run nbdev-export"


def test_notebooks_are_clean(tmp_path):
    _copy_project(tmp_path)
    subprocess.run(["nbdev-clean"], cwd=tmp_path, env=_nbdev_env(), check=True, capture_output=True)
    unclean = [p.name for p in sorted((ROOT/"nbs").glob("*.ipynb"))
               if p.read_bytes() != (tmp_path/"nbs"/p.name).read_bytes()]
    assert not unclean, f"notebooks that nbdev-clean would change: {unclean}; run nbdev-clean"


@pytest.mark.parametrize("notebook", sorted((ROOT/"nbs").glob("*.ipynb")), ids=lambda p: p.stem)
def test_notebook_is_light(notebook):
    size = notebook.stat().st_size
    assert size <= MAX_NOTEBOOK_BYTES, f"{notebook.name} stores {size/1000:.0f} kB (limit 300 kB): shrink its outputs"


def test_readme_is_current():
    from igtcga.docs import readme_markdown
    text, images = readme_markdown(ROOT/"nbs"/"index.ipynb")
    assert (ROOT/"README.md").read_text(encoding="utf-8") == text, "README.md is stale: run igtcga-docs --readme"
    for rel, data in images.items():
        assert (ROOT/rel).exists() and (ROOT/rel).read_bytes() == data, f"{rel} is stale: run igtcga-docs --readme"


def _shell_commands(text):
    return [line.strip() for block in re.findall(r"```sh\n(.*?)```", text, flags=re.S) for line in block.splitlines()]


def test_ci_runs_the_readme_commands():
    readme = (ROOT/"README.md").read_text(encoding="utf-8")
    ci = (ROOT/".ci"/"run").read_text(encoding="utf-8")
    test_cmd = [c for c in _shell_commands(readme) if "pytest" in c]
    assert len(test_cmd) == 1, "the README must give exactly one test command"
    assert test_cmd[0] in ci, f".ci/run must run the README's test command: {test_cmd[0]}"


def test_offline_docs_site(tmp_path):
    """`igtcga-docs` renders one page per notebook, each with prose, code and a sidebar linking every page."""
    from igtcga.docs import build_site
    _copy_project(tmp_path)
    site = build_site(tmp_path, tmp_path/"site")
    notebooks = sorted((ROOT/"nbs").glob("*.ipynb"))
    pages = sorted(site.glob("*.html"))
    assert (site/"index.html").exists()
    assert len(pages) == len(notebooks)
    core = (site/"core.html").read_text(encoding="utf-8")
    assert 'class="igtcga-sidebar"' in core and all(f'href="{p.name}"' in core for p in pages)
    assert "<h2" in core and "set_seed" in core and "highlight" in core  # prose, show_doc, highlighted code
    assert "https://igtcga.github.io" not in core  # links made relative for offline reading
    assert core.index('href="index.html" class') < core.index('href="protocol.html" class') < core.index('href="core.html" class')
    protocol = (site/"protocol.html").read_text(encoding="utf-8")
    assert "<math" in protocol and 'id="s3-5"' in protocol and 'id="b7"' in protocol  # formulas as MathML, anchors
    external = [p.name for p in pages if re.search(r"""<(script|link)\b[^>]*(src|href)=["']?https?:""", p.read_text(encoding="utf-8"))]
    assert not external, f"pages that load scripts or styles from the network: {external}"
