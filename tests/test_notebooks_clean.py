"""Notebooks run clean in a Jupyter kernel: no stderr stream, no warning box, no error."""

from pathlib import Path

import pytest

pytestmark = pytest.mark.slow  # left out of `make quick`; CI runs every test

NOTEBOOK_DIR = Path(__file__).resolve().parent.parent / "notebooks"


@pytest.mark.parametrize(
    "name", ["00_primer", "01_pretrain", "02_importance", "03_prune", "04_figures", "05_study"]
)
def test_no_stderr_in_a_kernel(name, monkeypatch):
    # Progress bars are widgets in a kernel (what JupyterLab shows), not text on stderr.
    import nbformat  # imported here: collecting the quick tests need not pay for it
    from nbclient import NotebookClient

    monkeypatch.setenv("DPLIB_PROFILE", "smoke")
    monkeypatch.delenv("DPLIB_PROGRESS", raising=False)
    notebook = nbformat.read(NOTEBOOK_DIR / f"{name}.ipynb", as_version=4)
    client = NotebookClient(
        notebook,
        timeout=600,
        kernel_name="python3",
        resources={"metadata": {"path": str(NOTEBOOK_DIR)}},
    )
    client.execute()
    noisy = [
        (index, output.get("name") or output.output_type)
        for index, cell in enumerate(notebook.cells)
        for output in cell.get("outputs", [])
        if output.output_type == "error"
        or (output.output_type == "stream" and output.name == "stderr")
    ]
    assert noisy == [], f"{name}: cells writing to stderr or failing: {noisy}"
