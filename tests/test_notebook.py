"""notebooks/lcam_quickstart.ipynb: committed without outputs, and it runs.

The notebook is executed by nbclient in a kernel of this interpreter (the
virtual environment's), with cwd = notebooks/, as a user would run it: on one
CPU device (the 8 fake devices of conftest.py are not passed on) and with
JAX's normal compiler settings. It takes well under a minute on two idle
cores, most of it compiling WRN-10-1 for the CIFAR-10 part.
"""

import json
import os
from pathlib import Path
import sys

import pytest

nbformat = pytest.importorskip("nbformat")
nbclient = pytest.importorskip("nbclient")
pytest.importorskip("ipykernel")
from jupyter_client.kernelspec import KernelSpecManager  # noqa: E402
from jupyter_client.manager import AsyncKernelManager  # noqa: E402

NOTEBOOK_DIR = Path(__file__).resolve().parent.parent / "notebooks"
NOTEBOOK = NOTEBOOK_DIR / "lcam_quickstart.ipynb"
_FORCED_DEVICES = "--xla_force_host_platform_device_count"


def _code_cells(notebook):
  return [cell for cell in notebook.cells if cell.cell_type == "code"]


def test_committed_notebook_has_no_outputs():
  notebook = nbformat.read(NOTEBOOK, as_version=4)
  nbformat.validate(notebook)
  assert _code_cells(notebook)
  for cell in _code_cells(notebook):
    assert cell.outputs == [], cell.source[:80]
    assert cell.execution_count is None, cell.source[:80]


def _kernel_manager(tmp_path: Path) -> AsyncKernelManager:
  """A kernel running this interpreter, whatever kernelspecs are installed."""
  spec_dir = tmp_path / "kernels" / "optax-lcam-test"
  spec_dir.mkdir(parents=True)
  (spec_dir / "kernel.json").write_text(json.dumps({
      "argv": [sys.executable, "-m", "ipykernel_launcher",
               "-f", "{connection_file}"],
      "display_name": "optax-lcam test", "language": "python"}))
  specs = KernelSpecManager(kernel_dirs=[str(tmp_path / "kernels")],
                            ensure_native_kernel=False)
  return AsyncKernelManager(kernel_name="optax-lcam-test",
                            kernel_spec_manager=specs)


def _kernel_env(tmp_path: Path) -> dict[str, str]:
  env = dict(os.environ)
  flags = [f for f in env.pop("XLA_FLAGS", "").split()
           if not f.startswith(_FORCED_DEVICES)]
  if flags:
    env["XLA_FLAGS"] = " ".join(flags)
  env.pop("MPLBACKEND", None)  # the notebook draws inline
  # Anything the notebook might cache by default stays in the test's folder.
  env["OPTAX_LCAM_CACHE"] = str(tmp_path / "cache")
  env["XDG_CACHE_HOME"] = str(tmp_path / "xdg_cache")
  return env


def _text(cell) -> str:
  parts = []
  for output in cell.outputs:
    if output.output_type == "stream":
      parts.append(output.text)
    elif "data" in output:
      parts.append(output.data.get("text/plain", ""))
  return "".join(parts)


def test_notebook_runs(tmp_path):
  notebook = nbformat.read(NOTEBOOK, as_version=4)
  client = nbclient.NotebookClient(
      notebook, km=_kernel_manager(tmp_path), timeout=600,
      resources={"metadata": {"path": str(NOTEBOOK_DIR)}})
  client.execute(env=_kernel_env(tmp_path))  # raises CellExecutionError

  cells = _code_cells(notebook)
  errors = [o for cell in cells for o in cell.outputs
            if o.output_type == "error"]
  assert not errors, errors
  text = "\n".join(_text(cell) for cell in cells)
  assert "LCAM: final loss" in text
  assert "loss-controlled AdamW: final loss" in text
  assert "epoch 2: train loss" in text and "test accuracy" in text
  if (NOTEBOOK_DIR.parent.parent / "shared" / "data" /
      "cifar10_jpeg.tar.gz").is_file():
    assert "train: 1000 images, 10 classes" in text
    assert "data source: folder:" in text
  else:
    assert "SYNTHETIC" in text
  figures = [o for cell in cells for o in cell.outputs
             if "image/png" in o.get("data", {})]
  assert len(figures) >= 4  # two toy runs, the harness's curves, its steps
