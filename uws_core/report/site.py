"""``make site``: a static site for readers of the paper, from what ``make reproduce`` wrote.

Input: ``results/executed/NN_*.ipynb`` (the executed notebooks), ``results/CLAIMS.md`` (the claims ledger,
:mod:`uws_core.claims`) and ``results/figures/*.png``. Output: ``results/site/`` (default), opened at
``index.html``:

* ``index.html``: the claims ledger first (rendered from CLAIMS.md by mistune), each claim's notebook a link
  to that notebook's page and each figure the notebook saves a link to the figure's place in that page; then
  every notebook with its figures as thumbnails, one click from the figure in context;
* ``NN_name.html``: each notebook by nbconvert's HTML exporter (``lab`` template, images inlined), with an
  anchor ``#fig-<name>`` at every cell that calls ``save_figure(fig, "<name>")``;
* ``figures/``: copies of ``results/figures/*.png`` (the thumbnails).

:func:`check_site` lists every relative link and image of the pages that does not resolve (a missing file, or
an ``#anchor`` that the target page does not define); ``python -m uws_core.report.site`` fails when there is one.
Links to other sites (nbconvert's MathJax / require.js CDN) are not followed.
"""

from __future__ import annotations

import argparse
import html
import re
import shutil
from html.parser import HTMLParser
from pathlib import Path

import nbformat

from uws_core.report.results import results_dir

__all__ = ["SiteInputError", "figures_of", "build_site", "check_site", "main"]

FIGURE_CALL = re.compile(r"save_figure\(\s*\w+\s*,\s*[\"']([^\"']+)[\"']")
STYLE = ("body{font-family:system-ui,sans-serif;max-width:78rem;margin:2rem auto;padding:0 1rem;line-height:1.45}"
         "table{border-collapse:collapse;font-size:.82rem}td,th{border:1px solid #ccc;padding:.25rem .45rem;"
         "vertical-align:top}th{background:#f4f4f4}.figs{display:flex;flex-wrap:wrap;gap:.8rem}"
         ".figs a{display:block;width:15rem;font-size:.8rem;text-decoration:none}.figs img{width:100%;"
         "border:1px solid #ddd}h2{margin-top:2.2rem}")


class SiteInputError(ValueError):
    """The results directory lacks what the site is made from."""


def figures_of(nb: nbformat.NotebookNode) -> list[tuple[int, str]]:
    """(cell index, figure name) of every ``save_figure(fig, "<name>")`` call in the notebook's code cells."""
    return [(i, name) for i, cell in enumerate(nb.cells) if cell.cell_type == "code"
            for name in FIGURE_CALL.findall(cell.source)]


def _title(nb: nbformat.NotebookNode, fallback: str) -> str:
    for cell in nb.cells:
        if cell.cell_type == "markdown":
            m = re.search(r"^#\s+(.+)$", cell.source, re.M)
            if m:
                return m.group(1).strip()
    return fallback


def notebook_page(path: Path, out: Path) -> tuple[str, list[str]]:
    """Export one executed notebook to ``out/<stem>.html``; returns (title, figure names) for the index."""
    from nbconvert import HTMLExporter

    try:
        nb = nbformat.read(path, as_version=4)
    except (OSError, ValueError) as exc:
        raise SiteInputError(f"{path}: cannot read the notebook ({exc})") from None
    figures = figures_of(nb)
    for i, name in figures:  # an anchor where the figure is made (an output, so it renders as HTML)
        anchor = nbformat.v4.new_output("display_data", data={"text/html": f'<a id="fig-{html.escape(name)}"></a>'})
        nb.cells[i].outputs.insert(0, anchor)
    body, _ = HTMLExporter(template_name="lab").from_notebook_node(nb)
    (out / f"{path.stem}.html").write_text(body)
    return _title(nb, path.stem), [name for _, name in figures]


def _ledger_markdown(text: str, pages: dict[str, list[str]]) -> str:
    """CLAIMS.md with each row's notebook cell (the last one) turned into links to the page and its figures."""
    out = []
    for line in text.splitlines():
        cells = line.split("|")
        stem = cells[-2].strip() if line.startswith("|") and len(cells) > 3 else ""
        if stem in pages:
            figs = ", ".join(f"[{name}]({stem}.html#fig-{name})" for name in pages[stem])
            cells[-2] = f" [{stem}]({stem}.html)" + (f"<br>figures: {figs}" if figs else "") + " "
            line = "|".join(cells)
        out.append(line)
    return "\n".join(out)


def build_site(results: Path | str | None = None, out: Path | str | None = None) -> Path:
    """Write the site (module docstring) and return its ``index.html``."""
    import mistune

    results = Path(results) if results is not None else results_dir()
    out = Path(out) if out is not None else results / "site"
    notebooks = sorted((results / "executed").glob("[0-9][0-9]_*.ipynb"))
    claims = results / "CLAIMS.md"
    if not notebooks:
        raise SiteInputError(f"{results / 'executed'} holds no executed notebook: run `make reproduce` first")
    if not claims.is_file():
        raise SiteInputError(f"{claims} is missing: run `make reproduce` (or `python -m uws_core.claims`) first")
    out.mkdir(parents=True, exist_ok=True)
    (out / "figures").mkdir(exist_ok=True)
    pages, titles = {}, {}
    for path in notebooks:
        titles[path.stem], pages[path.stem] = notebook_page(path, out)
    for png in sorted((results / "figures").glob("*.png")):
        shutil.copy2(png, out / "figures" / png.name)
    render = mistune.create_markdown(plugins=["table"], escape=False)
    parts = [render(_ledger_markdown(claims.read_text(), pages)), "<h2>Notebooks</h2>"]
    for stem, figs in pages.items():
        parts.append(f'<h3><a href="{stem}.html">{html.escape(titles[stem])}</a></h3>')
        thumbs = []
        for name in figs:
            img = (f'<img src="figures/{html.escape(name)}.png" alt="{html.escape(name)}" loading="lazy">'
                   if (out / "figures" / f"{name}.png").is_file() else "")
            thumbs.append(f'<a href="{stem}.html#fig-{html.escape(name)}">{img}{html.escape(name)}</a>')
        parts.append(f'<div class="figs">{"".join(thumbs)}</div>' if thumbs else "<p>(no figure)</p>")
    index = out / "index.html"
    index.write_text("<!doctype html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
                     "<title>uws: claims ledger and notebooks</title>"
                     f"<style>{STYLE}</style></head><body>\n" + "\n".join(parts) + "\n</body></html>\n")
    return index


class _Links(HTMLParser):
    def __init__(self):
        super().__init__()
        self.links, self.ids = [], set()

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        for attr in ("id", "name") if tag == "a" else ("id",):
            if a.get(attr):
                self.ids.add(a[attr])
        for attr in ("href", "src"):
            if a.get(attr):
                self.links.append((tag, a[attr]))


def _parse(path: Path) -> _Links:
    p = _Links()
    p.feed(path.read_text())
    return p


def check_site(site: Path | str) -> list[str]:
    """Every relative link or image of the site's pages that does not resolve, as ``page: target (why)``."""
    site = Path(site)
    parsed = {p: _parse(p) for p in sorted(site.glob("*.html"))}
    bad = []
    for page, links in parsed.items():
        for tag, target in links.links:
            if re.match(r"^(https?:|mailto:|data:|javascript:)", target) or target.startswith("//"):
                continue
            file, _, anchor = target.partition("#")
            dest = page if not file else (page.parent / file).resolve()
            if not dest.is_file():
                bad.append(f"{page.name}: {target} (no such file)")
                continue
            if anchor and dest.suffix == ".html":
                ids = parsed[dest].ids if dest in parsed else _parse(dest).ids
                if anchor not in ids:
                    bad.append(f"{page.name}: {target} (no #{anchor} in {dest.name})")
    return bad


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m uws_core.report.site", description=__doc__.split("\n\n")[0])
    parser.add_argument("--results", type=Path, default=None, help="results directory (default: results/ or UWS_RESULTS)")
    parser.add_argument("--out", type=Path, default=None, help="site directory (default: RESULTS/site)")
    args = parser.parse_args(argv)
    try:
        index = build_site(args.results, args.out)
    except SiteInputError as exc:
        parser.exit(1, f"uws site: error: {exc}\n")
    bad = check_site(index.parent)
    for line in bad:
        print(f"broken link: {line}")
    print(f"site: {index} ({len(list(index.parent.glob('*.html'))) - 1} notebook pages)")
    return 1 if bad else 0


if __name__ == "__main__":
    raise SystemExit(main())
