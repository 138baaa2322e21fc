"""examples/quickstart.ipynb runs top to bottom in a real Jupyter kernel (nbclient + ipykernel), and its outputs
are the displays: data splits, a run, show_results / plot_top_losses figures, a comparison and localisation."""
from __future__ import annotations

import os
from pathlib import Path

import pytest

import gapvision

nbformat = pytest.importorskip("nbformat", reason="nbformat is not installed (pip install 'gapvision[notebook]')")
nbclient = pytest.importorskip("nbclient", reason="nbclient is not installed (pip install 'gapvision[notebook]')")
pytest.importorskip("ipykernel", reason="ipykernel is not installed (pip install 'gapvision[notebook]')")

NOTEBOOK = Path(__file__).resolve().parents[1] / "examples" / "quickstart.ipynb"


def html_of(cell: dict) -> str:
    return "".join(o.get("data", {}).get("text/html", "") for o in cell.get("outputs", []))


def has_png(cell: dict) -> bool:
    return any("image/png" in o.get("data", {}) for o in cell.get("outputs", []))


@pytest.mark.slow
def test_quickstart_notebook_executes_and_displays(tmp_path, monkeypatch):
    # the kernel imports the gapvision under test and stays on 2 threads
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join([str(Path(gapvision.__file__).parents[1]),
                                                      os.environ.get("PYTHONPATH", "")]))
    monkeypatch.setenv("OMP_NUM_THREADS", "2")
    nb = nbformat.read(NOTEBOOK, as_version=4)
    assert not any(c.get("outputs") for c in nb.cells if c.cell_type == "code"), "commit the notebook without outputs"
    nbclient.NotebookClient(nb, timeout=300, kernel_name="python3",
                            resources={"metadata": {"path": str(tmp_path)}}).execute()
    code = {c.source.splitlines()[-1]: c for c in nb.cells if c.cell_type == "code"}
    assert 'class="gapvision-data"' in html_of(code["splits"]) and "data:image/jpeg;base64," in html_of(code["splits"])
    run_html = html_of(code["run"])
    assert 'class="gapvision-run"' in run_html and run_html.count("data:image/png;base64,") == 2
    assert has_png(code["run.show_results(8)"]) and has_png(code["run.plot_top_losses(4)"])
    compare_html = html_of(code["result"])
    assert 'class="gapvision-compare"' in compare_html and "best head: <b>" in compare_html
    assert "data:image/png;base64," in compare_html
    found = html_of(code["found"])
    assert 'class="gapvision-localize"' in found and found.count('class="gv-tile"') == 4
    detections = code['found[0]["detections"]  # the same dicts as gapvision localize --json']["outputs"][0]
    assert "'box'" in detections["data"]["text/plain"]
    assert (tmp_path / "runs" / "quickstart-gap" / "model.safetensors").exists()
