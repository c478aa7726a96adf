"""examples/iti_in_a_notebook.ipynb runs end to end on the bundled model, as a reader runs it (nbclient, a
fresh kernel started in the repository root); its own asserts check that reloaded shifts answer as before."""
from __future__ import annotations

import pytest

from tests.conftest import REPO_ROOT

NOTEBOOK = REPO_ROOT / "examples" / "iti_in_a_notebook.ipynb"


@pytest.mark.slow
def test_the_notebook_runs_end_to_end(bundled_folder):
    import nbformat
    from nbclient import NotebookClient

    notebook = nbformat.read(NOTEBOOK, as_version=4)
    NotebookClient(notebook, timeout=900, kernel_name="python3",
                   resources={"metadata": {"path": str(REPO_ROOT)}}).execute()
    outputs = [output for cell in notebook.cells if cell.cell_type == "code" for output in cell.outputs]
    assert not [o for o in outputs if o.output_type == "error"]
    printed = "".join(o.get("text", "") for o in outputs if o.output_type == "stream")
    assert "without ITI:" in printed and "with ITI:" in printed and "8 heads, alpha 5" in printed
    assert any("image/png" in o.get("data", {}) for o in outputs if o.output_type in ("display_data", "execute_result"))
