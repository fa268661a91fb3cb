"""Every colab/*.ipynb runs top to bottom on CPU (its CPU-sized path), in the order a user
would run them: the training notebooks first, then "use a trained model" on their runs."""

import glob
import os

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
LAST = ("dermjax_use_model.ipynb",)   # needs a finished run of the notebooks before it
NOTEBOOKS = sorted(glob.glob(os.path.join(REPO, "colab", "*.ipynb")),
                   key=lambda p: (os.path.basename(p) in LAST, p))


@pytest.fixture(scope="module")
def runs_dir(tmp_path_factory):
  return str(tmp_path_factory.mktemp("notebook_runs"))


def test_there_are_notebooks():
  names = {os.path.basename(p) for p in NOTEBOOKS}
  assert {"dermjax_gaze.ipynb", "dermjax_train_row.ipynb", "dermjax_use_model.ipynb"} <= names


@pytest.mark.parametrize("path", NOTEBOOKS, ids=os.path.basename)
def test_notebook_runs_top_to_bottom(path, runs_dir, monkeypatch):
  nbformat = pytest.importorskip("nbformat")
  nbclient = pytest.importorskip("nbclient")
  monkeypatch.setenv("DERMJAX_RUNS", runs_dir)
  monkeypatch.setenv("JAX_PLATFORMS", "cpu")
  monkeypatch.setenv("PYTHONPATH", os.pathsep.join([REPO, os.environ.get("PYTHONPATH", "")]))
  notebook = nbformat.read(path, as_version=4)
  client = nbclient.NotebookClient(notebook, timeout=900, kernel_name="python3",
                                   resources={"metadata": {"path": os.path.dirname(path)}})
  client.execute()   # raises CellExecutionError naming the failing cell
  outputs = [o for cell in notebook.cells if cell.cell_type == "code" for o in cell.outputs]
  assert not [o for o in outputs if o.get("output_type") == "error"]
  text = "".join(o.get("text", "") for o in outputs)
  assert "CPU device(s)" in text  # the accelerator cell said what it got
