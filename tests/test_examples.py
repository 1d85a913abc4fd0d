"""The plain example scripts and the benchmark notebook run, at a small size.

Scripts honour ``SKDCCM_EXAMPLE_QUICK=1``; they run in this process through ``runpy`` (a new
interpreter per script would spend seconds importing torch each time). The notebook runs in
a Jupyter kernel through nbclient, with its ``parameters`` cell overridden by a small size,
as papermill does. Gallery examples (``plot_*.py``) are tested with the documentation.
"""

from __future__ import annotations

import runpy
import sys
from pathlib import Path

import pytest

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"
SCRIPTS = sorted(path for path in EXAMPLES.glob("*.py") if not path.name.startswith("plot_"))
NOTEBOOK = EXAMPLES / "benchmark_vs_kmeans.ipynb"

#: Small enough to run in seconds; every code path of the notebook still runs.
NOTEBOOK_QUICK_PARAMETERS = {"N_SAMPLES": 120, "MAX_ITER": 1, "SEEDS": (0,)}


def test_the_examples_are_there():
    names = {path.name for path in SCRIPTS}
    assert {"compare_with_kmeans.py", "pipeline_gridsearch.py", "persistence.py"} <= names
    assert NOTEBOOK.is_file()


@pytest.mark.parametrize("script", SCRIPTS, ids=lambda path: path.name)
def test_example_script_runs_quickly(script, monkeypatch, tmp_path, capsys):
    monkeypatch.setenv("SKDCCM_EXAMPLE_QUICK", "1")
    monkeypatch.setenv("MPLBACKEND", "Agg")
    monkeypatch.setattr(sys, "argv", [str(script)])
    monkeypatch.chdir(tmp_path)  # anything a script writes lands here
    runpy.run_path(str(script), run_name="__main__")
    out = capsys.readouterr().out
    assert out.strip(), f"{script.name} printed nothing"
    assert not list(tmp_path.iterdir()), f"{script.name} left files in the working folder"


def _with_parameters(notebook, values):
    """Insert a cell that overrides the ``parameters`` cell, right after it (papermill's way)."""
    from nbformat.v4 import new_code_cell

    tagged = [i for i, cell in enumerate(notebook.cells)
              if "parameters" in cell.get("metadata", {}).get("tags", [])]
    assert len(tagged) == 1, "the notebook needs exactly one cell tagged 'parameters'"
    source = "\n".join(f"{name} = {value!r}" for name, value in values.items())
    # Every overridden name must exist in the parameters cell: a rename would otherwise be
    # overridden silently by nothing.
    parameters = notebook.cells[tagged[0]].source
    for name in values:
        assert f"{name} = " in parameters, f"{name} is not a notebook parameter"
    cell = new_code_cell(source, metadata={"tags": ["injected-parameters"]})
    notebook.cells.insert(tagged[0] + 1, cell)
    return notebook


def test_benchmark_notebook_runs_at_a_small_size(tmp_path):
    nbformat = pytest.importorskip("nbformat")
    nbclient = pytest.importorskip("nbclient")
    pytest.importorskip("ipykernel")
    notebook = _with_parameters(nbformat.read(NOTEBOOK, as_version=4),
                                NOTEBOOK_QUICK_PARAMETERS)
    client = nbclient.NotebookClient(notebook, timeout=600, kernel_name="python3",
                                     resources={"metadata": {"path": str(tmp_path)}})
    client.execute()  # raises CellExecutionError on the first failing cell

    outputs = [out for cell in notebook.cells if cell.cell_type == "code"
               for out in cell.get("outputs", [])]
    assert not [out for out in outputs if out.output_type == "error"]
    tables = [out["data"]["text/html"] for out in outputs
              if out.output_type == "execute_result" and "text/html" in out.get("data", {})]
    summary = tables[-1]  # the mean ± std table is the last table the notebook shows
    for text in ("KMeans", "DCCM", "ACC", "NMI", "ARI", "SECONDS", "±"):
        assert text in summary
    figures = [out for out in outputs if "image/png" in out.get("data", {})]
    # digit samples, confusion matrices, t-SNE embeddings, training record
    assert len(figures) == 4
