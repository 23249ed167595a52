import pytest
import nbformat
from nbformat.v4 import new_code_cell, new_notebook

from uws_core.report import reproduce


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


def test_reproduce_runs_notebooks_then_writes_the_claims_ledger(tmp_path, monkeypatch):
    nbdir = tmp_path / "notebooks"
    nbdir.mkdir()
    nb = new_notebook()
    nb.cells.append(new_code_cell("from uws_core.report.results import save_results\n"
                                  "save_results('07_null_models', {'random_init': {'table': {'random_init': {'rows': 0.3},"
                                  " 'mp': {'rows': 0.3}}}, 'params': {'N_RANDOM_INIT': 5}, 'lora_shared_init': None})"))
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    nbformat.write(nb, nbdir / "07_null_models.ipynb")
    monkeypatch.setattr(reproduce, "NOTEBOOKS", nbdir)
    monkeypatch.setenv("UWS_RESULTS", str(tmp_path / "results"))
    assert reproduce.main([]) == 0
    ledger = (tmp_path / "results" / "CLAIMS.md").read_text()
    assert "Randomly initialised models share a low-rank subspace" in ledger and "N=5: 0.3000 vs 0.3000" in ledger
    assert (tmp_path / "results" / "executed" / "07_null_models.ipynb").is_file()


def test_timeout_must_be_positive():
    with pytest.raises(SystemExit, match="--timeout"):
        reproduce.main(["--timeout", "0"])


def test_jobs_must_be_positive():
    with pytest.raises(SystemExit, match="--jobs"):
        reproduce.main(["--jobs", "0"])


def test_notebooks_run_two_at_a_time_and_errors_surface(tmp_path, monkeypatch):
    """Two notebooks in parallel kernels both write their results; a failing one fails the run."""
    nbdir = tmp_path / "notebooks"
    nbdir.mkdir()
    for name, code in (("01_a", "import time; time.sleep(1); open('a.txt', 'w').write('a')"),
                       ("02_b", "import time; time.sleep(1); open('b.txt', 'w').write('b')")):
        nb = new_notebook()
        nb.cells.append(new_code_cell(code))
        nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
        nbformat.write(nb, nbdir / f"{name}.ipynb")
    monkeypatch.setattr(reproduce, "NOTEBOOKS", nbdir)
    monkeypatch.setenv("UWS_RESULTS", str(tmp_path / "results"))
    assert reproduce.main(["--jobs", "2"]) == 0
    assert (nbdir / "a.txt").read_text() == "a" and (nbdir / "b.txt").read_text() == "b"
    bad = new_notebook()
    bad.cells.append(new_code_cell("raise ValueError('broken notebook')"))
    bad.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    nbformat.write(bad, nbdir / "03_bad.ipynb")
    with pytest.raises(Exception, match="broken notebook"):
        reproduce.main(["--jobs", "2"])


def test_population_needs_reads_every_seed_of_the_kinds_a_notebook_loads(tmp_path):
    from uws_core.zoo.populations import SEEDS

    nb = new_notebook()
    nb.cells.append(new_code_cell('pop = populations.load("lora", 0)\nv = populations.load("vit", s)'))
    path = tmp_path / "09_x.ipynb"
    nbformat.write(nb, path)
    needs = reproduce.population_needs(path)
    assert sorted(needs) == sorted([f"lora/seed{s}" for s in SEEDS["lora"]] + [f"vit/seed{s}" for s in SEEDS["vit"]])
    empty = tmp_path / "00_y.ipynb"
    nbformat.write(new_notebook(), empty)
    assert reproduce.population_needs(empty) == []


def test_schedule_starts_a_task_only_after_its_needs_and_by_priority():
    import threading
    import time

    log, lock = [], threading.Lock()

    def task(name, seconds):
        def run():
            with lock:
                log.append(("start", name))
            time.sleep(seconds)
            with lock:
                log.append(("end", name))
        return run

    tasks = {"pop_a": task("pop_a", 0.3), "pop_b": task("pop_b", 0.05), "nb_1": task("nb_1", 0.01),
             "nb_2": task("nb_2", 0.01)}
    reproduce.schedule(tasks, {"nb_1": ["pop_a"], "nb_2": ["pop_b"]}, jobs=2)
    order = [e for e in log]
    assert order.index(("start", "nb_1")) > order.index(("end", "pop_a"))
    assert order.index(("start", "nb_2")) > order.index(("end", "pop_b"))
    # nb_2 does not wait for the slow pop_a: it runs in the slot pop_b freed
    assert order.index(("end", "nb_2")) < order.index(("end", "pop_a"))


def test_schedule_raises_the_first_error_and_refuses_unknown_needs():
    def boom():
        raise ValueError("broken build")

    ran = []
    with pytest.raises(ValueError, match="broken build"):
        reproduce.schedule({"a": boom, "b": lambda: ran.append("b")}, {"b": ["a"]}, jobs=2)
    assert ran == []
    with pytest.raises(KeyError, match="missing"):
        reproduce.schedule({"a": lambda: None}, {"a": ["missing"]}, jobs=1)


def test_schedule_counts_finished_tasks_and_names_the_running_ones():
    class Bar:  # records what schedule() shows
        def __init__(self):
            self.n, self.postfixes = 0, []

        def update(self, n):
            self.n += n

        def set_postfix_str(self, s):
            self.postfixes.append(s)

    bar = Bar()
    reproduce.schedule({"pop_a": lambda: None, "02_b.ipynb": lambda: None}, {"02_b.ipynb": ["pop_a"]}, jobs=2,
                       progress=bar)
    assert bar.n == 2
    assert "running pop_a" in bar.postfixes and "running 02_b.ipynb" in bar.postfixes
    assert bar.postfixes[-1] == ""


def test_kernels_use_the_ipc_transport_and_do_not_warn_about_tcp(tmp_path, capfd):
    import os

    nb = new_notebook()
    nb.cells.append(new_code_cell("print(6 * 7)"))
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    path = tmp_path / "nb.ipynb"
    nbformat.write(nb, path)
    if os.name == "posix":
        assert reproduce.kernel_config().KernelManager.transport == "ipc"
    reproduce.execute_inplace(path, timeout=120)
    assert nbformat.read(path, as_version=4).cells[0].outputs[0].text == "42\n"
    assert "without encryption" not in capfd.readouterr().err


@pytest.mark.parametrize("how", ["inplace", "papermill"])
def test_kernels_keep_their_own_log_off_the_terminal(how, tmp_path, capfd, monkeypatch):
    """A kernel's own ERROR log line (such as "KeyboardInterrupt caught in kernel." when a shutdown's SIGINT meets a
    message still being handled) does not reach the terminal; the notebook's outputs still do reach the notebook.
    Negative control: the same kernel started without KERNEL_ARGUMENTS prints the line."""
    nb = new_notebook()
    nb.cells.append(new_code_cell("from ipykernel.kernelapp import IPKernelApp\n"
                                  "IPKernelApp.instance().log.error('uws-kernel-log-line')\nprint(6 * 7)"))
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    path = tmp_path / "nb.ipynb"
    nbformat.write(nb, path)
    monkeypatch.setattr(reproduce, "results_dir", lambda: tmp_path / "results")

    def run():
        if how == "inplace":
            reproduce.execute_inplace(path, timeout=120)
            return nbformat.read(path, as_version=4)
        return nbformat.read(reproduce.execute_to_results(path, timeout=120), as_version=4)

    out = run()
    assert [o.get("text") for o in out.cells[0].outputs if o.output_type == "stream"] == ["42\n"]
    assert "uws-kernel-log-line" not in capfd.readouterr().err
    monkeypatch.setattr(reproduce, "KERNEL_ARGUMENTS", [])
    run()
    assert "uws-kernel-log-line" in capfd.readouterr().err
