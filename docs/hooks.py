"""The documentation site's build hooks (``mkdocs.yml``: ``hooks: [docs/hooks.py]``).

The API reference is generated from the code at every build, so that a new
public name or a new module appears without anyone listing it:

- the public modules are every module of ``jaxlin`` whose dotted name has no
  part starting with ``_``, except ``jaxlin.cli``, whose public interface is the
  ``jaxlin`` command (the command-line page prints its parsers' help);
- a module's public names are its ``__all__``, or, without one, the names it
  defines at top level (``def``, ``class``, assignment) that do not start
  with ``_``;
- each name is rendered once, by mkdocstrings, on the page of the module that
  defines it; a module that re-exports it (``jaxlin``, a package's
  ``__init__``) links there instead, through a cross-reference that breaks the
  ``--strict`` build if the target is missing.

- each module's source is a page of its own (``source/jaxlin/...py``, each line
  an anchor), and every module page and entry links the line that defines it.

Everything is read from the source with ``ast`` (nothing is imported), so
``tests/test_docs.py`` uses the same functions without the ``docs`` extra. A
public module, function or class without a docstring is a build warning, and
``mkdocs build --strict`` turns it into an error.

The notebooks (``notebooks/*.py``) are added to the site from where they are,
and executed by mkdocs-jupyter with ``JAXLIN_NB_SMALL=1`` on the CPU, the
settings of ``tests/test_notebooks.py``. Each one's ``.ipynb`` is made by
jupytext at build time, put beside it on the site, and linked for download
under its page's title.

After a build, every relative link and ``#anchor`` of the site's HTML pages is
checked (``dead_links``); a dead one is a warning, so ``--strict`` fails on it.
mkdocs' own validation (``validation:`` in ``mkdocs.yml``) checks the Markdown
pages' links before that; the notebooks' pages are HTML, checked here.
"""

from __future__ import annotations

import ast
import logging
import os
import re
from dataclasses import dataclass, field
from html.parser import HTMLParser
from pathlib import Path
from urllib.parse import unquote, urlsplit

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "jaxlin"
NOTEBOOKS = sorted((ROOT / "notebooks").glob("[0-9][0-9]_*.py"))
# The command line's modules: documented as the `jaxlin` command, not as an API.
NOT_API = ("jaxlin.cli",)
# The API reference's sections, by what a user does, in the order of the lecture and the
# guides. A public module in none of them is an internal: how the others are built,
# listed last, under INTERNALS.
GROUPS = {
    "The lecture": ("jaxlin", "jaxlin.data", "jaxlin.model", "jaxlin.optim", "jaxlin.train",
                    "jaxlin.shuffle"),
    "Training": ("jaxlin.trainer", "jaxlin.config", "jaxlin.choices", "jaxlin.engines",
                 "jaxlin.engines.trajectory", "jaxlin.sklearn"),
    "Many models": ("jaxlin.sweeps",),
    "Many devices": ("jaxlin.parallel",),
    "Data on disk": ("jaxlin.stream",),
    "Checkpoints": ("jaxlin.checkpoint",),
    "Plots": ("jaxlin.plot",),
    "Course kit": ("jaxlin.course", "jaxlin.course.assignment", "jaxlin.course.checks",
                   "jaxlin.course.grade"),
}  # fmt: skip
INTERNALS = "Internals"

log = logging.getLogger("mkdocs.plugins.jaxlin")


@dataclass
class Module:
    """One module as its source declares it."""

    name: str
    path: Path
    tree: ast.Module
    all: list[str] | None
    defined: dict[str, ast.AST] = field(default_factory=dict)  # top-level definitions
    imports: dict[str, str] = field(default_factory=dict)  # name -> module it comes from

    @property
    def public(self) -> list[str]:
        """``__all__``, or the top-level names it defines that do not start with ``_``."""
        if self.all is not None:
            return list(self.all)
        return [n for n in self.defined if not n.startswith("_")]


def _module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _top_level(body):
    """Statements at module level, including those inside top-level ``if`` and ``try``."""
    for node in body:
        yield node
        if isinstance(node, ast.If):
            yield from _top_level(node.body)
            yield from _top_level(node.orelse)
        elif isinstance(node, ast.Try):
            for block in (node.body, node.orelse, node.finalbody, *[h.body for h in node.handlers]):
                yield from _top_level(block)


def _parse(path: Path) -> Module:
    name = _module_name(path)
    tree = ast.parse(path.read_text(), filename=str(path))
    module = Module(name, path, tree, None)
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    constants = {}  # top-level literals, which ``__all__`` may be computed from
    for node in _top_level(tree.body):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            module.defined[node.name] = node
        elif isinstance(node, (ast.Assign, ast.AnnAssign)):
            targets = node.targets if isinstance(node, ast.Assign) else [node.target]
            for target in (n for t in targets for n in ast.walk(t) if isinstance(n, ast.Name)):
                if target.id == "__all__":  # a literal, or an expression of literals
                    code = compile(ast.Expression(node.value), str(path), "eval")
                    module.all = list(eval(code, {"__builtins__": {}, **constants}))
                else:  # a, b = ... defines both
                    module.defined[target.id] = node
                    try:
                        constants[target.id] = ast.literal_eval(node.value)
                    except (ValueError, TypeError, SyntaxError):  # not a literal
                        pass
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*anchor, *([base] if base else [])])
            for alias in node.names:
                module.imports[alias.asname or alias.name] = base
        elif isinstance(node, ast.Import):
            for alias in node.names:
                module.imports[alias.asname or alias.name.partition(".")[0]] = alias.name
    for name in module.imports:  # ``except ImportError: fcntl = None`` defines no API
        module.defined.pop(name, None)
    return module


def modules() -> dict[str, Module]:
    """Every module of the package, by dotted name (private ones too: re-exports resolve)."""
    found = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        module = _parse(path)
        found[module.name] = module
    return found


def is_public(name: str) -> bool:
    """A module of the public API: no part starts with ``_``, and not the command line."""
    parts = name.split(".")
    return not any(p.startswith("_") for p in parts) and not any(
        name == m or name.startswith(m + ".") for m in NOT_API
    )


def groups(mods: dict[str, Module] | None = None) -> dict[str, list[str]]:
    """The public modules by section of the reference: ``GROUPS``, then the internals."""
    mods = modules() if mods is None else mods
    names = [n for n in mods if is_public(n)]
    grouped = {title: [n for n in members if n in names] for title, members in GROUPS.items()}
    placed = {n for members in grouped.values() for n in members}
    return {**grouped, INTERNALS: sorted(n for n in names if n not in placed)}


def public_modules(mods: dict[str, Module] | None = None) -> list[str]:
    """The public modules, in the reference's order (the lecture's first, internals last)."""
    return [n for members in groups(mods).values() for n in members]


def home(mods: dict[str, Module], module: str, name: str, seen=()) -> str:
    """The dotted path where ``module.name`` is rendered: the public module that defines it."""
    m = mods[module]
    if name in m.defined:
        return f"{module}.{name}"
    if name in m.imports and m.imports[name] in mods and (m.imports[name], name) not in seen:
        target = home(mods, m.imports[name], name, (*seen, (module, name)))
        # A name defined in a private module is rendered where it is made public.
        return target if is_public(target.rpartition(".")[0]) else f"{module}.{name}"
    # Neither defined nor imported here (a lazy ``__getattr__``): the one module that defines it.
    owners = [
        n for n, other in mods.items()
        if is_public(n) and name in other.defined and name in other.public
    ]  # fmt: skip
    if len(owners) != 1:
        raise LookupError(f"{module}.{name}: defined in {owners or 'no public module'}")
    return f"{owners[0]}.{name}"


def api(mods: dict[str, Module] | None = None) -> dict[str, dict[str, str]]:
    """For each public module, its public names and where each one is rendered."""
    mods = modules() if mods is None else mods
    return {m: {n: home(mods, m, n) for n in mods[m].public} for m in public_modules(mods)}


def page_path(module: str) -> str:
    """The source path of a module's API page, relative to ``docs/``."""
    return "api/index.md" if module == "jaxlin" else f"api/{module}.md"


def source_path(module: Module) -> str:
    """The path of a module's source page, relative to ``docs/``: ``source/jaxlin/x.py.md``."""
    return f"source/{module.path.relative_to(ROOT).as_posix()}.md"


def source_page(module: Module) -> str:
    """A module's source page as Markdown: its title and a placeholder, which
    ``on_page_content`` replaces with ``source_html`` (Markdown would spend
    seconds parsing the highlighted HTML of every module)."""
    return f"# `{module.path.relative_to(ROOT).as_posix()}`\n\n{SOURCE_PLACEHOLDER}\n"


SOURCE_PLACEHOLDER = "<!-- jaxlin: the module's source -->"


def source_html(path: Path) -> tuple[str, int]:
    """A file's source highlighted, with an anchor on each line (``L-N``); and its
    number of lines."""
    from pygments import highlight
    from pygments.formatters import HtmlFormatter
    from pygments.lexers import PythonLexer

    formatter = HtmlFormatter(
        linenos="table", anchorlinenos=True, lineanchors=LINE_ANCHOR, cssclass="highlight",
        wrapcode=True,
    )  # fmt: skip
    text = path.read_text()
    return highlight(text, PythonLexer(), formatter), len(text.splitlines())


def first_line(node: ast.AST) -> int:
    """Where a definition starts in its file: its first decorator, or the statement."""
    decorators = getattr(node, "decorator_list", [])
    return min([node.lineno, *(d.lineno for d in decorators)])


def source_link(module: Module, page: str, node: ast.AST | None = None) -> str:
    """A Markdown link from the page ``page`` to ``node``'s line in its module's source
    page (to the file's first line without ``node``)."""
    depth = page.count("/")
    target = "../" * depth + source_path(module)
    rel = module.path.relative_to(ROOT).as_posix()
    if node is None:
        return f"[{rel}]({target})"
    line = first_line(node)
    return f"[{rel}, line {line}]({target}#{LINE_ANCHOR}-{line})"


LINE_ANCHOR = "L"  # a source page's line N has the id L-N


def _summary(mods: dict[str, Module], dotted: str) -> str:
    module, _, name = dotted.rpartition(".")
    node = mods[module].defined.get(name)
    if isinstance(node, (ast.Assign, ast.AnnAssign)) and node.value is not None:
        value = ast.unparse(node.value)
        text = f"`= {value if len(value) <= 60 else value[:57] + '...'}`"
    else:
        doc = ast.get_docstring(node) if isinstance(node, (ast.FunctionDef, ast.ClassDef)) else None
        text = (doc or "").strip().split("\n\n")[0].replace("\n", " ")
    return text.replace("|", "\\|")


def pages(mods: dict[str, Module] | None = None) -> dict[str, str]:
    """The API reference's Markdown pages, by path under ``docs/``."""
    mods = modules() if mods is None else mods
    out = {}
    for module, names in api(mods).items():
        own = [n for n, where in names.items() if where == f"{module}.{n}"]
        elsewhere = {n: where for n, where in names.items() if n not in own}
        lines = [f"# `{module}`", ""]
        if module in groups(mods)[INTERNALS]:
            lines += [
                '!!! note "Internals"',
                "    How the rest of jaxlin is built: nothing here is needed to use it.",
                "",
            ]
        lines += [f"::: {module}", "    options:", "      members: false"]
        lines += ["      show_root_heading: false", ""]
        lines += [f"Source: {source_link(mods[module], page_path(module))}", ""]
        if module == "jaxlin":
            lines += [
                "Every name below is importable as `jaxlin.NAME`; each links to the",
                "module that defines it.",
                "",
                "| name | what it is |",
                "|---|---|",
            ]
            lines += [f"| [`{n}`][{w}] | {_summary(mods, w)} |" for n, w in elsewhere.items()]
            lines.append("")
        elif elsewhere:
            lines += ["Also importable from here:", ""]
            lines += [
                f"- [`{n}`][{w}], from `{w.rpartition('.')[0]}`" for n, w in elsewhere.items()
            ]
            lines.append("")
        for n in own:
            node = mods[module].defined[n]
            if isinstance(node, ast.Assign) and not isinstance(node.targets[0], ast.Name):
                # ``a, b = ...``: griffe does not collect the names of an unpacking.
                source = ast.get_source_segment(mods[module].path.read_text(), node)
                lines += [f"## `{n}` {{#{module}.{n}}}", "", f"```python\n{source}\n```", ""]
            else:
                lines += [f"::: {module}.{n}", ""]
            lines += [f"Source: {source_link(mods[module], page_path(module), node)}", ""]
        out[page_path(module)] = "\n".join(lines)
    return out


def missing_docstrings(mods: dict[str, Module] | None = None) -> list[str]:
    """Public modules, functions and classes of the reference that have no docstring."""
    mods = modules() if mods is None else mods
    missing = []
    for module, names in api(mods).items():
        if not ast.get_docstring(mods[module].tree):
            missing.append(f"module {module}")
        for n, where in names.items():
            if where != f"{module}.{n}":
                continue
            node = mods[module].defined[n]
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
                if not ast.get_docstring(node):
                    missing.append(where)
    return missing


def cli_help() -> str:
    """Every subcommand's ``--help``, as the parser prints it (100 columns)."""
    import argparse

    os.environ["COLUMNS"] = "100"
    from jaxlin.cli import build_parser

    parser = build_parser()
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    blocks = [("jaxlin --help", parser.format_help())]
    blocks += [(f"jaxlin {name} --help", p.format_help()) for name, p in sub.choices.items()]
    return "\n".join(f"### `{title}`\n\n```text\n{text.rstrip()}\n```\n" for title, text in blocks)


# ---- mkdocs hooks -----------------------------------------------------------------------


def notebook_title(path: Path) -> str:
    """A notebook's title in the navigation: its first heading, as plain text."""
    for line in path.read_text().splitlines():
        if line.startswith("# # "):
            return line[4:].replace("`", "").strip()
    return path.stem


_COMMAND = {}  # the mkdocs command of this process ("build", "serve", "gh-deploy")


def on_startup(command, dirty):
    """Remember the command: ``serve`` shows the notebooks without executing them."""
    del dirty
    _COMMAND["name"] = command


def on_config(config):
    """The notebooks' kernel: this checkout, the CPU, the tests' small sizes, inline figures.

    ``mkdocs serve`` renders the notebooks as they are, without running them
    (executing all four takes minutes before the first page answers), unless
    ``JAXLIN_DOCS_EXECUTE`` says otherwise; ``mkdocs build`` executes them.
    """
    jupyter = config.plugins.get("mkdocs-jupyter")
    if _COMMAND.get("name") == "serve" and "JAXLIN_DOCS_EXECUTE" not in os.environ and jupyter:
        jupyter.config["execute"] = False
    os.environ["JAXLIN_NB_SMALL"] = "1"
    os.environ["JAX_PLATFORMS"] = "cpu"
    os.environ.pop("MPLBACKEND", None)
    path = [str(ROOT), os.environ.get("PYTHONPATH")]
    os.environ["PYTHONPATH"] = os.pathsep.join(filter(None, path))
    api_nav = [
        {title: [{module: page_path(module)} for module in members]}
        for title, members in groups().items()
        if members
    ]
    notebooks = [{notebook_title(p): f"notebooks/{p.name}"} for p in NOTEBOOKS]
    for entry in config.nav:
        if isinstance(entry, dict) and "Notebooks" in entry:
            entry["Notebooks"] = notebooks
        if isinstance(entry, dict) and "API reference" in entry:
            entry["API reference"] = api_nav
    return config


def _priority(value):
    try:
        from mkdocs.plugins import event_priority
    except ImportError:  # imported by the tests, without mkdocs
        return lambda f: f
    return event_priority(value)


@_priority(100)  # before mkdocs-jupyter's on_files, which wraps the notebooks
def on_files(files, config):
    """Add the generated API pages, the notebooks and the benchmark figure to the site."""
    from mkdocs.structure.files import File, InclusionLevel

    mods = modules()
    for problem in missing_docstrings(mods):
        log.warning("no docstring: %s (the API reference renders every public name)", problem)
    for path, text in pages(mods).items():
        files.append(File.generated(config, path, content=text))
    for name in public_modules(mods):  # reached from the reference's links, not the nav
        module = mods[name]
        page = File.generated(
            config, source_path(module), content=source_page(module),
            inclusion=InclusionLevel.NOT_IN_NAV,
        )  # fmt: skip
        files.append(page)
    for extra in [*NOTEBOOKS, ROOT / "benchmarks/results/scaling_cpu.png"]:
        rel = extra.relative_to(ROOT).as_posix()
        files.append(File(rel, str(ROOT), config["site_dir"], config["use_directory_urls"]))
    for path in NOTEBOOKS:  # each notebook's .ipynb, for download from its page
        files.append(File.generated(config, ipynb_path(path), content=notebook_ipynb(path)))
    return files


def ipynb_path(path: Path) -> str:
    """Where a notebook's ``.ipynb`` is on the site: beside its ``.py`` source."""
    return f"notebooks/{path.stem}.ipynb"


def notebook_ipynb(path: Path) -> str:
    """A notebook's ``.ipynb``, made by jupytext from its ``.py`` (cells, no outputs)."""
    import jupytext

    return jupytext.writes(jupytext.read(path), fmt="ipynb")


NOTEBOOK_HEADING = re.compile(r'<h([1-6]) id="([^"]+)"')


def _anchors(toc):
    for anchor in toc:
        yield anchor
        yield from _anchors(anchor.children)


def on_page_content(html, page, config, files):
    """A module's source page gets its code. A notebook's page: its table of contents
    links to its headings' ids, and a download link to its ``.ipynb`` is put under
    its title.

    mkdocs-jupyter makes the contents' anchors from the headings' text without
    their code (``jax.jit``), while the page's headings keep it in their ids;
    the contents take the page's ids, heading by heading.
    """
    if page.file.src_uri.startswith("source/"):  # a module's source page
        code, lines = source_html(ROOT / page.file.src_uri.removeprefix("source/")[:-3])
        page.present_anchor_ids.update(f"{LINE_ANCHOR}-{i}" for i in range(1, lines + 1))
        return html.replace(SOURCE_PLACEHOLDER, code)  # its lines' anchors, known to mkdocs
    path = ROOT / page.file.src_uri
    if path not in NOTEBOOKS:
        return html
    headings = [(int(level), i) for level, i in NOTEBOOK_HEADING.findall(html)]
    anchors = list(_anchors(page.toc))
    if [a.level for a in anchors] == [level for level, _ in headings]:
        for anchor, (_, heading_id) in zip(anchors, headings, strict=True):
            anchor.id = heading_id
    else:
        log.warning("%s: the table of contents does not match the headings", page.file.src_uri)
    ipynb = files.get_file_from_path(ipynb_path(path))
    href = ipynb.url_relative_to(page.file)
    link = (
        f'<p class="jaxlin-download"><a href="{href}" download>Download this notebook '
        f"({Path(ipynb.src_uri).name})</a> to run it in Jupyter with jaxlin installed: "
        f"its cells, without the outputs shown here.</p>"
    )
    end = html.find("</h1>")
    if end < 0:
        return link + html
    end += len("</h1>")
    return html[:end] + link + html[end:]


CELL = re.compile(r"<td>(.*?)</td>", re.S)


def rows(table: str) -> list[tuple[str, str, str]]:
    """``(name, type, default)`` of each row of a parameters table's HTML."""
    out = []
    for row in table.split('<tr class="doc-section-item">')[1:]:
        cells = CELL.findall(row.partition("</tr>")[0])
        if len(cells) == 4:
            name = re.sub(r"<[^>]+>", "", cells[0]).strip()
            out.append((name, cells[1], cells[3]))
    return out


HEADING = re.compile(r'<h[2-4] id="(jaxlin\.[\w.]+)" class="doc doc-heading"')


def misdocumented_parameters(html: str) -> list[str]:
    """Parameter rows of a built API page that contradict the signature: an optional
    parameter shown as required, a required one shown with a default, a name the
    signature does not have, or no type where the signature annotates one."""
    import importlib
    import inspect

    problems = []
    headings = list(HEADING.finditer(html))
    for i, heading in enumerate(headings):
        where = heading.group(1)
        end = headings[i + 1].start() if i + 1 < len(headings) else len(html)
        section = html[heading.end() : end]
        table = section.find('<span class="doc-section-title">Parameters:</span>')
        if table < 0:
            continue
        module, _, name = where.rpartition(".")
        try:
            target = getattr(importlib.import_module(module), name)
            params = inspect.signature(target).parameters
        except (ImportError, AttributeError, TypeError, ValueError):
            continue  # a class attribute or a method: rendered from its own heading
        for shown, typed, default in rows(section[table : section.find("</table>", table)]):
            shown = shown.lstrip("*")
            if shown not in params:
                problems.append(f"{where}: parameter {shown!r} is not in the signature")
                continue
            param = params[shown]
            required = "<em>required</em>" in default
            has_default = param.default is not inspect.Parameter.empty
            variadic = param.kind in (param.VAR_POSITIONAL, param.VAR_KEYWORD)
            if required and (has_default or variadic):
                problems.append(f"{where}: optional parameter {shown!r} shown as required")
            if has_default and not required and not default.strip():
                problems.append(f"{where}: parameter {shown!r} shown without its default")
            if param.annotation is not inspect.Parameter.empty and not typed.strip():
                problems.append(f"{where}: parameter {shown!r} shown without its type")
    return problems


class _Links(HTMLParser):
    """A page's element ids (and ``<a name>``s), and its relative link targets."""

    def __init__(self):
        super().__init__()
        self.ids: set[str] = set()
        self.links: list[str] = []

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        for name in ("id", "name") if tag == "a" else ("id",):
            if attrs.get(name):
                self.ids.add(attrs[name])
        for name in ("href", "src"):
            target = attrs.get(name)
            if target is not None and not urlsplit(target).scheme and not target.startswith("//"):
                self.links.append(target)


def dead_links(site_dir: str | Path) -> list[str]:
    """Every relative ``href`` or ``src`` of the built site's HTML pages whose file, or
    whose ``#anchor`` in an HTML target, does not exist: ``"page: link"`` each."""
    site = Path(site_dir).resolve()
    pages = {}
    for html in sorted(site.rglob("*.html")):
        parser = _Links()
        parser.feed(html.read_text(encoding="utf-8"))
        pages[html] = parser
    dead = []
    for html, parser in pages.items():
        for link in parser.links:
            parts = urlsplit(link)
            target = html
            if parts.path:  # relative to the page, or from the site's root ("/api/")
                base = site if parts.path.startswith("/") else html.parent
                target = (base / unquote(parts.path).lstrip("/")).resolve()
                if target.is_dir():
                    target = target / "index.html"
            if not target.is_file() or site not in target.parents:
                dead.append(f"{html.relative_to(site)}: {link}")
            elif parts.fragment and target in pages:
                if unquote(parts.fragment) not in pages[target].ids:
                    dead.append(f"{html.relative_to(site)}: {link} (no such anchor)")
    return dead


def on_post_build(config):
    """Every parameter table of the built reference agrees with its signature, and no
    page links to a file or an anchor that the site does not have (not while serving:
    the build that publishes checks it)."""
    if _COMMAND.get("name") == "serve":
        return
    for page in sorted(Path(config["site_dir"], "api").glob("*/index.html")):
        for problem in misdocumented_parameters(page.read_text()):
            log.warning("API reference: %s", problem)
    for link in dead_links(config["site_dir"]):
        log.warning("dead link: %s", link)


def on_page_markdown(markdown, page, config, files):
    """The command-line page gets the parsers' help text."""
    if page.file.src_uri == "cli.md":
        return markdown.replace("<!-- cli-help -->", cli_help())
    return markdown
