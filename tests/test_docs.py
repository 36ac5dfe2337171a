"""The offline docs site (`igtcga-docs`): formulas rendered to MathML with no network, no external scripts, links between
notebooks resolved to pages, descriptions and fenced blocks rendered, the sidebar in reading order."""
import json
import re

import pytest

pytest.importorskip("nbconvert")
pytest.importorskip("latex2mathml")

PYPROJECT = """[project]
name = "toy"
version = "0.0.1"

[tool.nbdev]
lib_path = "toy"
nbs_path = "nbs"
doc_path = "_docs"
"""


def _nb(*cells):
    return {"cells": [{"cell_type": "markdown", "id": f"c{i}", "metadata": {}, "source": s} for i, s in enumerate(cells)],
            "metadata": {"kernelspec": {"display_name": "python3", "language": "python", "name": "python3"}},
            "nbformat": 4, "nbformat_minor": 5}


@pytest.fixture(scope="module")
def site(tmp_path_factory):
    from igtcga.docs import build_site
    root = tmp_path_factory.mktemp("toy")
    (root/"pyproject.toml").write_text(PYPROJECT)
    (root/"toy").mkdir()
    (root/"toy"/"__init__.py").write_text("")
    nbs = root/"nbs"
    nbs.mkdir()
    pages = {
        "index.ipynb": _nb("# toy\n\n> The home page.", "Read [the protocol](protocol.ipynb#s3-5) first."),
        "protocol.ipynb": _nb("# The protocol\n\n> What `toy` does.", '<a id="s3-5"></a>\n\n### 3.5 A section\n\nText.'),
        "01_maths.ipynb": _nb(
            "# maths\n\n> Formulas, with `code` in the description.",
            "Inline $\\Delta_i = p_y(x) - p_y(x^{(i)})$ and $|G_c|$, a price of \\$5, code `$HOME`.\n\n"
            "$$\\hat A = D^{-1/2}(A^+ + I)\\,D^{-1/2}$$\n\n"
            "| a | b |\n|---|---|\n| $k_c = \\lvert G_c \\rvert$ | [cited](protocol.ipynb#s3-5) |\n\n"
            "```sh\necho $PATH && ls $x$\n```\n\nSee [the home page](index.ipynb) and [B7](protocol.ipynb#b7)."),
        "00_aaa.ipynb": _nb("# aaa\n\n> First by name."),
    }
    for name, nb in pages.items(): (nbs/name).write_text(json.dumps(nb))
    out = build_site(root, root/"site")
    return {p.name: p.read_text(encoding="utf-8") for p in out.glob("*.html")}


def _text(page):
    "The visible text of a page's content, without code, styles and scripts."
    body = page[page.index("<main>"):]
    body = re.sub(r"<(code|pre|style|script|math)\b.*?</\1>", "", body, flags=re.S)
    return re.sub(r"<[^>]+>", "", body)


def test_formulas_become_mathml(site):
    page = site["maths.html"]
    assert page.count("<math") == 4 and 'display="block"' in page
    assert "$" not in _text(page).replace("$5", ""), "TeX left in the page"
    assert "$5" in _text(page) and "<code>$HOME</code>" in page  # an escaped dollar and a code span stay as they are
    block = re.search(r'<div class="highlight"><pre>.*?</pre>', page, flags=re.S).group()
    assert "$PATH" in block and "$x" in block and "<math" not in block  # so does a fenced block


def test_no_mathjax_and_no_external_scripts(site):
    for name, page in site.items():
        assert "mathjax" not in page.lower(), name
        assert not re.search(r"""<(script|link|img)\b[^>]*(src|href)=["']?(https?:)?//""", page), name
        assert not re.search(r"""import\(["']https?:""", page), name


def test_description_renders_inline_code(site):
    assert '<p class="igtcga-description">Formulas, with <code>code</code> in the description.</p>' in site["maths.html"]
    assert "`" not in re.search(r'<p class="igtcga-description">.*?</p>', site["protocol.html"]).group()


def test_notebook_links_go_to_pages(site):
    page = site["maths.html"]
    assert 'href="protocol.html#s3-5"' in page and 'href="protocol.html#b7"' in page and 'href="index.html"' in page
    assert ".ipynb" not in page
    assert 'href="protocol.html#s3-5"' in site["index.html"]
    assert 'id="s3-5"' in site["protocol.html"]


def test_sidebar_order_and_code_styles(site):
    nav = re.search(r'<nav class="igtcga-sidebar">.*?</nav>', site["aaa.html"], flags=re.S).group()
    assert re.findall(r'href="(\w+)\.html" class', nav) == ["index", "protocol", "aaa", "maths"]
    page = site["maths.html"]
    assert re.search(r'<div class="highlight"><pre>.*echo', page, flags=re.S)  # the sh block is highlighted
    assert ".jp-RenderedMarkdown .highlight" in page and "pre-wrap" in page  # styled, and long code lines wrap
