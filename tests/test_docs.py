"""The documentation: the README stays short, the benchmarks page is the JSON's, the
API reference covers every public name, and the built site has no dead link.

The README and benchmarks checks need nothing beyond the test extra; the API
reference's are read from ``docs/hooks.py`` (``ast`` only), checked against
what ``import jaxlin`` exposes; the configuration check and the checks of the
built site (one ``mkdocs build --strict``, shared by those tests) need the
``docs`` extra. CI builds the whole site the same way (``.ci/run``).
"""

from __future__ import annotations

import importlib
import importlib.util
import inspect
import os
import pkgutil
import sys
from pathlib import Path

import pytest

import jaxlin

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[1]
SET_UP_COMMANDS = ["pip install . && jaxlin train", 'pip install -e ".[test]" && pytest']


def _load(path: Path, name: str):
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # dataclasses look their module up
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def hooks():
    return _load(ROOT / "docs" / "hooks.py", "jaxlin_docs_hooks")


def test_readme_is_short_and_keeps_the_set_up_commands():
    text = (ROOT / "README.md").read_text()
    assert len(text.splitlines()) <= 160
    for command in SET_UP_COMMANDS:
        assert f"\n{command}\n" in text, command
    assert 'pytest -m "not slow"' in text


def test_benchmarks_page_is_generated_from_the_json():
    report = _load(ROOT / "benchmarks" / "report.py", "jaxlin_benchmarks_report")
    committed = (ROOT / "docs" / "benchmarks.md").read_text()
    assert report.render() == committed, "run: python benchmarks/report.py"


def _runtime_public_modules() -> list[str]:
    names = ["jaxlin"]
    for info in pkgutil.walk_packages(jaxlin.__path__, "jaxlin."):
        parts = info.name.split(".")
        if any(p.startswith("_") for p in parts) or parts[1] == "cli":
            continue
        names.append(info.name)
    return names


def _runtime_public_names(module) -> set[str]:
    """``__all__``; without it, the functions and classes the module defines."""
    if hasattr(module, "__all__"):
        return set(module.__all__)
    return {
        n
        for n, v in vars(module).items()
        if not n.startswith("_")
        and (inspect.isfunction(v) or inspect.isclass(v))
        and v.__module__ == module.__name__
    }


def test_the_reference_has_a_page_per_public_module(hooks):
    assert sorted(hooks.public_modules()) == sorted(_runtime_public_modules())


def test_every_public_name_is_in_the_api_reference(hooks):
    pages = hooks.pages()
    where = hooks.api()
    for name in _runtime_public_modules():
        if name == "jaxlin.sklearn":
            pytest.importorskip("sklearn")
        module = importlib.import_module(name)
        page = pages[hooks.page_path(name)]
        for public in sorted(_runtime_public_names(module)):
            assert public in where[name], f"{name}.{public} is not in the API reference"
            target = where[name][public]
            assert (
                f"::: {target}\n" in page  # rendered here
                or f"{{#{target}}}" in page  # rendered here from its source line
                or f"][{target}]" in page  # linked to where it is rendered
            ), f"{name}.{public}: no entry on {hooks.page_path(name)}"
            home = pages[hooks.page_path(target.rpartition(".")[0])]
            assert f"::: {target}\n" in home or f"{{#{target}}}" in home, target


def test_every_entry_of_the_reference_links_the_line_that_defines_it(hooks):
    """Each module page links its file's source page, and each entry the line where it
    is defined (its first decorator, its ``def`` or ``class``, or its assignment)."""
    import re

    mods = hooks.modules()
    entries = 0
    for path, text in hooks.pages(mods).items():
        module = mods[text.splitlines()[0].strip("# `")]
        rel = module.path.relative_to(ROOT).as_posix()
        links = re.findall(r"^Source: \[[^\]]+\]\(([^)#]+)(?:#L-(\d+))?\)$", text, re.M)
        target = (Path("docs") / path).parent / links[0][0]
        assert target.resolve() == (ROOT / "docs" / hooks.source_path(module)).resolve()
        assert links[0][1] == "" and hooks.source_path(module) == f"source/{rel}.md"
        names = re.findall(rf"^::: {re.escape(module.name)}\.(\w+)$|^## `(\w+)`", text, re.M)
        assert len(links) == 1 + len(names), path
        lines = module.path.read_text().splitlines()
        for (name, other), (_, line) in zip(names, links[1:], strict=True):
            at = int(line) - 1
            while lines[at].startswith("@"):  # decorators, then what they decorate
                at += 1
            definition = rf"^((async )?def |class ){name or other}\b|^[\w, ]*\b{name or other}\b"
            assert re.match(definition, lines[at]), (path, name or other, lines[at])
            entries += 1
    assert entries > 100


def test_every_public_function_class_and_module_has_a_docstring(hooks):
    assert hooks.missing_docstrings() == []


def test_the_site_configuration_lists_the_generated_pages(hooks):
    config_module = pytest.importorskip("mkdocs.config")
    config = config_module.load_config(str(ROOT / "mkdocs.yml"))
    saved = dict(os.environ)  # on_config sets the notebooks' kernel environment
    try:
        config = hooks.on_config(config)
    finally:
        os.environ.clear()
        os.environ.update(saved)
    nav = {k: v for entry in config.nav if isinstance(entry, dict) for k, v in entry.items()}
    sections = [next(iter(entry)) for entry in nav["API reference"]]
    assert sections[0] == "The lecture" and sections[-1] == hooks.INTERNALS
    pages = [next(iter(p.values())) for e in nav["API reference"] for p in next(iter(e.values()))]
    assert pages == [hooks.page_path(m) for m in hooks.public_modules()]
    assert "jaxlin.checks" in hooks.groups()[hooks.INTERNALS]  # internals: one separate section
    listed = [next(iter(entry.items())) for entry in nav["Notebooks"]]
    assert [path for _, path in listed] == [f"notebooks/{p.name}" for p in hooks.NOTEBOOKS]
    assert ("Exploring jax.jit", "notebooks/04_jit_exploration.py") in listed  # code as text


@pytest.fixture(scope="module")
def site(tmp_path_factory) -> Path:
    """The site, built as CI builds it (``mkdocs build --strict``, notebooks not executed)."""
    pytest.importorskip("mkdocs")
    import subprocess

    out = tmp_path_factory.mktemp("site")
    env = dict(os.environ, JAXLIN_DOCS_EXECUTE="false", NO_MKDOCS_2_WARNING="1")
    built = subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(out)],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert built.returncode == 0, built.stderr[-3000:]
    return out


def test_the_reference_shows_no_optional_parameter_as_required(hooks, site):
    """The built site's parameter tables agree with the signatures (the strict build
    also fails on any disagreement, from docs/hooks.py's on_post_build)."""
    pages = sorted(site.glob("api/*/index.html"))
    rows = sum(len(hooks.rows(p.read_text())) for p in pages)
    assert rows > 50  # the tables were found and read
    problems = [q for p in pages for q in hooks.misdocumented_parameters(p.read_text())]
    assert problems == []


def test_the_built_site_has_no_dead_link_or_anchor(hooks, site):
    """Every relative link of every built page, the notebooks' included, reaches a file,
    and its ``#anchor`` an id of that page (the strict build fails on one, too)."""
    notebook = (site / "notebooks" / "02_objects_to_functions" / "index.html").read_text()
    assert notebook.count('href="#') > 10  # the notebook's contents, checked below
    assert hooks.dead_links(site) == []


def test_the_link_check_finds_a_missing_file_and_a_missing_anchor(hooks, tmp_path):
    (tmp_path / "guide").mkdir()
    (tmp_path / "guide" / "index.html").write_text('<h2 id="usage">Usage</h2>')
    (tmp_path / "index.html").write_text(
        '<a href="guide/">ok</a> <a href="guide/#usage">ok</a> <a href="#top">ok</a>'
        '<a name="top"></a> <a href="https://example.org/x">external</a>'
        '<a href="/guide/index.html">ok</a> <img src="missing.png">'
        '<a href="guide/#install">no anchor</a> <a href="other/">no page</a>'
    )
    assert hooks.dead_links(tmp_path) == [
        "index.html: missing.png",
        "index.html: guide/#install (no such anchor)",
        "index.html: other/",
    ]


def test_each_notebook_page_links_its_ipynb(hooks, site):
    jupytext = pytest.importorskip("jupytext")
    for path in hooks.NOTEBOOKS:
        page = (site / "notebooks" / path.stem / "index.html").read_text()
        assert f'<a href="../{path.stem}.ipynb" download>Download this notebook' in page
        cells = jupytext.read(site / "notebooks" / f"{path.stem}.ipynb").cells
        assert [c.source for c in cells] == [c.source for c in jupytext.read(path).cells]
