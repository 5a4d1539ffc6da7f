"""Every notebook in ``notebooks/`` runs top to bottom on CPU, with no error.

The notebooks are jupytext percent-format ``.py`` files; each is converted to
a notebook and executed with nbclient in a fresh ``python3`` kernel. The kernel
sees this checkout's ``jaxlin`` through ``PYTHONPATH``, runs on CPU, and gets
``JAXLIN_NB_SMALL=1`` so that the large problems shrink. Each test also checks
something the notebook must show.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

import jupytext  # the test extra installs these: a missing one is an error, not a skip
import nbclient
import pytest

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOKS = sorted((ROOT / "notebooks").glob("[0-9][0-9]_*.py"))
CELL_TIMEOUT_S = 120
# The limit per notebook; a heavily shared machine may raise it with JAXLIN_NB_BUDGET_S.
BUDGET_S = float(os.environ.get("JAXLIN_NB_BUDGET_S", "60"))

# What each notebook must print (in any stream output), besides running cleanly.
EXPECTED_TEXT = {
    "01_lecture": ["features:", "X shape:", "error in estimating w", "error in estimating b"],
    "02_objects_to_functions": ["same numbers: True", "lambda", "models trained at once"],
    "03_exercises": ["last batch", "huber", "adversarial"],
    "04_jit_exploration": ["compile", "recompiles"],
}
MIN_IMAGES = {
    "01_lecture": 1,
    "02_objects_to_functions": 1,
    "03_exercises": 4,
    "04_jit_exploration": 2,
}


def _kernel_env() -> dict[str, str]:
    """The kernel's environment: this checkout first on the path, CPU, small problems."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
    env["JAX_PLATFORMS"] = "cpu"
    env["JAXLIN_NB_SMALL"] = "1"
    env.pop("MPLBACKEND", None)  # conftest sets Agg; the kernel must draw inline figures
    return env


def _outputs(nb):
    for cell in nb.cells:
        if cell.cell_type == "code":
            yield from cell.get("outputs", [])


def _text(nb) -> str:
    parts = []
    for out in _outputs(nb):
        if out.output_type == "stream":
            parts.append(out.text)
        elif "data" in out and "text/plain" in out.data:
            parts.append(out.data["text/plain"])
    return "\n".join(parts)


@pytest.mark.parametrize("path", NOTEBOOKS, ids=[p.stem for p in NOTEBOOKS])
def test_notebook_runs(path: Path) -> None:
    nb = jupytext.read(path)
    client = nbclient.NotebookClient(
        nb,
        kernel_name="python3",
        timeout=CELL_TIMEOUT_S,
        resources={"metadata": {"path": str(path.parent)}},
    )
    # nbclient passes keyword arguments of execute() on to the kernel manager.
    start = time.perf_counter()
    client.execute(env=_kernel_env())
    elapsed = time.perf_counter() - start
    print(f"{path.name}: {elapsed:.1f} s")

    errors = [o for o in _outputs(nb) if o.output_type == "error"]
    assert not errors, errors
    text = _text(nb)
    for expected in EXPECTED_TEXT.get(path.stem, []):
        assert expected in text, f"{path.name} did not print {expected!r}"
    images = sum("image/png" in o.get("data", {}) for o in _outputs(nb))
    assert images >= MIN_IMAGES.get(path.stem, 1), f"{path.name}: {images} inline figures"
    assert elapsed < BUDGET_S, f"{path.name} took {elapsed:.0f} s (budget {BUDGET_S} s)"


def test_every_notebook_is_checked() -> None:
    assert [p.stem for p in NOTEBOOKS] == sorted(EXPECTED_TEXT)
