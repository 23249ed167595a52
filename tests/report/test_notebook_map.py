"""docs/architecture.md is the current map of notebook sections to the uws_core functions they call."""
import json

from uws_core.report.notebook_map import REPO, notebook_calls, render_map


def test_committed_map_is_current():
    notebooks = sorted((REPO / "notebooks").glob("[0-9][0-9]_*.ipynb"))
    assert (REPO / "docs" / "architecture.md").read_text() == render_map(notebooks), \
        "docs/architecture.md is stale: python -m uws_core.report.notebook_map > docs/architecture.md"


def test_sections_collect_calls_of_imported_names_and_module_attributes(tmp_path):
    cells = [{"cell_type": "code", "source": ["from uws_core.linalg.spectral import stack_spectrum as ss\n",
                                              "from uws_core.report import plots\n"]},
             {"cell_type": "markdown", "source": ["## Method\n"]},
             {"cell_type": "code", "source": ["s = ss(x)\n", "plots.grid(2)\n", "sss = 1\n"]},
             {"cell_type": "markdown", "source": ["## Nothing\n"]},
             {"cell_type": "code", "source": ["print(1)\n"]}]
    nb = tmp_path / "01_x.ipynb"
    nb.write_text(json.dumps({"cells": cells}))
    assert notebook_calls(nb) == [("Method", ["uws_core.linalg.spectral.stack_spectrum", "uws_core.report.plots.grid"])]
