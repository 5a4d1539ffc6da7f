"""Every notebook in ``notebooks/`` runs top to bottom on CPU, with no error.

The notebooks are jupytext percent-format ``.py`` files; each is converted to
a notebook and executed with nbclient in a fresh ``python3`` kernel. The kernel
sees this checkout's ``jaxlin`` through ``PYTHONPATH``, runs on CPU, and gets
``JAXLIN_NB_SMALL=1`` so that the large problems shrink. Each test also checks
something the notebook must show, that no cell writes to stderr (no error, no
warning), and that every figure it draws says what it shows: each of its axes
has a title or both axis labels. The figures are inspected in the kernel, by a
hook on matplotlib's ``print_figure`` (what the inline backend calls to render
each figure), installed by a cell added before the notebook's own.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import jupytext  # the test extra installs these: a missing one is an error, not a skip
import nbclient
import nbformat
import pytest

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOKS = sorted((ROOT / "notebooks").glob("[0-9][0-9]_*.py"))
CELL_TIMEOUT_S = 120

# What each notebook must print (in any stream output), besides running cleanly.
EXPECTED_TEXT = {
    "01_lecture": [
        "features:",
        "X shape:",
        "one epoch of minibatches: equal",
        "our training loop vs fit(engine='step'): equal",
        "error in estimating w",
        "error in estimating b",
        "times the noise floor",
    ],
    "02_objects_to_functions": [
        "same numbers: True",
        "lambda",
        "jax.debug.print: 3.0",
        "global set to 3.0, still: 2.0",
        "TracerBoolConversionError",
        "models trained at once",
        "their mean is the batch gradient: True",
    ],
    "03_exercises": [
        "last batch",
        "the reader holds the data in memory: False",  # 3.3.2 reads from the files
        "streamed",
        "order='runs'",
        "largest difference from jaxlin.fit",
        "at trained parameters",
        "huber",
        "adversarial",
    ],
    "04_jit_exploration": ["compile", "estimate", "recompiles", "TRACING CACHE MISS"],
}
MIN_IMAGES = {
    "01_lecture": 2,
    "02_objects_to_functions": 1,
    "03_exercises": 6,
    "04_jit_exploration": 5,
}
FIGURE_REPORT = "FIGURE-CHECK:"

# Runs in the kernel before the notebook: every figure rendered is checked for
# a title or both axis labels on each visible axes, and failures are kept.
FIGURE_HOOK = """
import matplotlib.backend_bases as _backend_bases

_unlabelled_figures = []
_print_figure = _backend_bases.FigureCanvasBase.print_figure


def _checked_print_figure(self, *args, **kwargs):
    for _i, _ax in enumerate(self.figure.get_axes()):
        if not _ax.get_visible() or not _ax.axison:
            continue
        _titled = any(_ax.get_title(loc) for loc in ("left", "center", "right"))
        if not _titled and not (_ax.get_xlabel() and _ax.get_ylabel()):
            _labels = (_ax.get_xlabel(), _ax.get_ylabel())
            _unlabelled_figures.append(f"axes {_i}, no title, (xlabel, ylabel) = {_labels}")
    return _print_figure(self, *args, **kwargs)


_backend_bases.FigureCanvasBase.print_figure = _checked_print_figure
"""
FIGURE_RESULT = f"import json; print({FIGURE_REPORT!r}, json.dumps(_unlabelled_figures))"


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


def _figure_report(nb) -> list[str]:
    """The unlabelled axes the hook found, read from (and removed with) the last cell."""
    last = nb.cells.pop()
    text = "".join(o.get("text", "") for o in last.get("outputs", []))
    assert FIGURE_REPORT in text, f"the figure check did not run: {last.get('outputs')}"
    nb.cells.pop(0)  # the hook
    return json.loads(text.split(FIGURE_REPORT, 1)[1])


def _execute(nb, folder: Path) -> float:
    """Run ``nb`` in a fresh kernel with the figure hook around it; returns the seconds taken."""
    nb.cells.insert(0, nbformat.v4.new_code_cell(FIGURE_HOOK))
    nb.cells.append(nbformat.v4.new_code_cell(FIGURE_RESULT))
    client = nbclient.NotebookClient(
        nb,
        kernel_name="python3",
        timeout=CELL_TIMEOUT_S,
        resources={"metadata": {"path": str(folder)}},
    )
    # nbclient passes keyword arguments of execute() on to the kernel manager.
    start = time.perf_counter()
    client.execute(env=_kernel_env())
    return time.perf_counter() - start


def test_the_figure_check_finds_an_unlabelled_figure(tmp_path: Path) -> None:
    """The hook is not vacuous: a bare plot is reported, a titled one is not."""
    nb = nbformat.v4.new_notebook()
    nb.cells = [
        nbformat.v4.new_code_cell(
            "%matplotlib inline\nimport matplotlib.pyplot as plt\n"
            "plt.plot([1, 2]); plt.show()\n"
            "plt.plot([1, 2]); plt.title('labelled'); plt.show()"
        )
    ]
    _execute(nb, tmp_path)
    unlabelled = _figure_report(nb)
    assert len(unlabelled) == 1, unlabelled
    assert sum("image/png" in o.get("data", {}) for o in _outputs(nb)) == 2


@pytest.mark.parametrize("path", NOTEBOOKS, ids=[p.stem for p in NOTEBOOKS])
def test_notebook_runs(path: Path) -> None:
    nb = jupytext.read(path)
    elapsed = _execute(nb, path.parent)
    print(f"{path.name}: {elapsed:.1f} s")

    unlabelled = _figure_report(nb)
    errors = [o for o in _outputs(nb) if o.output_type == "error"]
    assert not errors, errors
    stderr = [o.text for o in _outputs(nb) if o.output_type == "stream" and o.name == "stderr"]
    assert not stderr, f"{path.name} wrote to stderr: {stderr}"
    assert not unlabelled, f"{path.name}: figures without a title or axis labels: {unlabelled}"
    text = _text(nb)
    for expected in EXPECTED_TEXT.get(path.stem, []):
        assert expected in text, f"{path.name} did not print {expected!r}"
    images = sum("image/png" in o.get("data", {}) for o in _outputs(nb))
    assert images >= MIN_IMAGES.get(path.stem, 1), f"{path.name}: {images} inline figures"


def test_every_notebook_is_checked() -> None:
    assert [p.stem for p in NOTEBOOKS] == sorted(EXPECTED_TEXT)
