import nbformat
from nbformat.v4 import new_code_cell, new_notebook

from uws_core import reproduce


def test_notebooks_are_found_in_run_order():
    names = [p.name for p in reproduce.notebooks()]
    assert names == sorted(names) and names[0].startswith("00_")
    assert all(n[:2].isdigit() and n[2] == "_" for n in names)


def test_clean_metadata_keeps_outputs_and_counts():
    nb = new_notebook()
    cell = new_code_cell("print(1)", execution_count=3, outputs=[nbformat.v4.new_output("stream", text="1\n")])
    cell.metadata.update({"execution": {"iopub.status.busy": "2026"}, "papermill": {"duration": 1.0}, "tags": ["x"]})
    nb.cells.append(cell)
    nb.metadata["papermill"] = {"parameters": {}}
    out = reproduce.clean_metadata(nb)
    assert "papermill" not in out.metadata
    assert out.cells[0].metadata == {"tags": ["x"]}
    assert out.cells[0].execution_count == 3 and out.cells[0].outputs[0].text == "1\n"
