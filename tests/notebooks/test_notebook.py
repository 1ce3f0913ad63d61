"""notebooks/retrain_and_approve.ipynb runs, top to bottom, against the local backend: a real
(tiny) retraining run, the comparison, and the approval that deploys to staging."""
from __future__ import annotations

import json
from pathlib import Path

import nbformat
from nbclient import NotebookClient

from scones.config import load_config
from workflow.stages import endpoint_status

import pytest

# Each test takes tens of seconds: runs the notebook: a pipeline, an approval, a deployment.
pytestmark = pytest.mark.slow

NOTEBOOK = Path(__file__).resolve().parents[2] / "notebooks" / "retrain_and_approve.ipynb"


def _with_parameters(notebook, **values):
    """Replace the cell tagged "parameters", as papermill would."""
    cells = [c for c in notebook.cells if "parameters" in c.metadata.get("tags", [])]
    assert len(cells) == 1, "the notebook needs exactly one cell tagged 'parameters'"
    cells[0].source = "\n".join(f"{name} = {value!r}" for name, value in values.items())
    return notebook


def test_the_notebook_retrains_compares_and_approves_locally(small_image_folder, tmp_path):
    workspace = tmp_path / "ws"
    overrides = {"local.workspace": str(workspace),
                 "data.input_url": str(small_image_folder(per_class=30)),
                 "pipeline.accuracy_threshold": 0.0,   # a 1-epoch model must register
                 "deployment.staging.bake_seconds": 0}
    notebook = _with_parameters(nbformat.read(NOTEBOOK, as_version=4), ENV="local",
                                EPOCHS=1, LEARNING_RATE=0.02, OVERRIDES=overrides,
                                APPROVE_IF_NOT_WORSE=True)
    NotebookClient(notebook, timeout=600, kernel_name="python3",
                   resources={"metadata": {"path": str(tmp_path)}}).execute()

    text = "\n".join(output.get("text", "") for cell in notebook.cells
                     for output in cell.get("outputs", []) if output.get("name") == "stdout")
    assert "Succeeded" in text and "no version is approved yet" in text
    assert "version 1: Approved" in text and "staging: created" in text
    config = load_config("local", overrides=overrides)
    assert endpoint_status(config, stage="staging")["ModelPackageVersion"] == 1
    assert endpoint_status(config, stage="prod")["EndpointStatus"] == "NotDeployed"


def test_the_committed_notebook_has_no_outputs():
    """Committed clean: outputs would carry one machine's paths and results into Studio."""
    notebook = json.loads(NOTEBOOK.read_text())
    assert all(not cell.get("outputs") for cell in notebook["cells"] if cell["cell_type"] == "code")
    assert notebook["metadata"]["kernelspec"]["name"] == "python3"
