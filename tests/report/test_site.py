"""uws_core.report.site (``make site``) on a tiny fake results directory: executed notebooks made with nbformat, a
claims ledger and a figure; every link and image of the pages resolves."""

from __future__ import annotations

import base64

import nbformat
import pytest
from nbformat.v4 import new_code_cell, new_markdown_cell, new_notebook, new_output

from uws_core.report import site

# a 1x1 PNG
PNG = base64.b64decode("iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mP8z8DwHwAFBQIAX8jx0gAAAABJRU5ErkJggg==")


@pytest.fixture()
def results(tmp_path):
    r = tmp_path / "results"
    (r / "executed").mkdir(parents=True)
    (r / "figures").mkdir()
    nb = new_notebook()
    nb.cells = [new_markdown_cell("# 00 Demo: a spectrum\nText."), new_markdown_cell("## 2. The figure"),
                new_code_cell('fig = plot()\nsave_figure(fig, "00_demo_scree");', execution_count=1,
                              outputs=[new_output("display_data", data={"image/png": base64.b64encode(PNG).decode()})])]
    nbformat.write(nb, r / "executed" / "00_demo.ipynb")
    other = new_notebook()
    other.cells = [new_code_cell("x = 1", execution_count=1)]
    nbformat.write(other, r / "executed" / "01_other.ipynb")
    (r / "figures" / "00_demo_scree.png").write_bytes(PNG)
    (r / "CLAIMS.md").write_text(
        "# Claims ledger (laptop scale)\n\nWritten by a test.\n\n"
        "| claim | paper | replication | ours | criterion | verdict | notebook |\n|---|---|---|---|---|---|---|\n"
        "| A shared subspace | 16 | 16 | 12 | k <= 16 | holds | 00_demo |\n"
        "| Another one | x | y | z | c | not run | 01_other |\n")
    return r


def test_site_opens_on_the_ledger_with_every_figure_one_click_away(results):
    index = site.build_site(results)
    assert index == results / "site" / "index.html"
    text = index.read_text()
    assert text.index("<table>") < text.index("Notebooks")  # the ledger first
    assert "A shared subspace" in text and "<td>holds</td>" in text
    assert 'href="00_demo.html#fig-00_demo_scree"' in text and 'href="01_other.html"' in text
    assert 'src="figures/00_demo_scree.png"' in text
    page = (results / "site" / "00_demo.html").read_text()
    assert 'id="fig-00_demo_scree"' in page and "data:image/png;base64" in page
    assert site.check_site(results / "site") == []


def test_check_site_reports_missing_files_and_anchors(results):
    out = site.build_site(results).parent
    (out / "extra.html").write_text('<a href="00_demo.html#fig-nope">x</a><img src="figures/gone.png">'
                                    '<a href="https://example.org/x">ext</a><a href="#top">t</a><a id="top"></a>')
    bad = site.check_site(out)
    assert bad == ["extra.html: 00_demo.html#fig-nope (no #fig-nope in 00_demo.html)",
                   "extra.html: figures/gone.png (no such file)"]


def test_missing_inputs_are_named(tmp_path, capsys):
    with pytest.raises(site.SiteInputError, match="holds no executed notebook"):
        site.build_site(tmp_path)
    (tmp_path / "executed").mkdir()
    nbformat.write(new_notebook(), tmp_path / "executed" / "00_x.ipynb")
    with pytest.raises(SystemExit) as exc:
        site.main(["--results", str(tmp_path)])
    assert exc.value.code == 1 and "CLAIMS.md is missing" in capsys.readouterr().err


def test_make_site_runs_the_module():
    import shutil
    import subprocess
    from pathlib import Path

    if shutil.which("make") is None:
        pytest.skip("no make on this machine")
    repo = Path(__file__).resolve().parents[2]
    proc = subprocess.run(["make", "--no-print-directory", "-n", "-o", ".venv/.installed", "site"], cwd=repo, capture_output=True, text=True,
                          timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip().splitlines()[-1] == ".venv/bin/python -m uws_core.report.site"
