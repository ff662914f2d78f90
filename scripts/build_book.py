"""The course as a website: the executed notebooks, as stored, rendered into a static site.

``make book`` runs this. It re-executes nothing: each page is the notebook's stored outputs
rendered by nbconvert's ``HTMLExporter`` (JupyterLab's look) through a small template of ours
(``scripts/book_templates/book``), with

* a landing page (``index.html``): the course map, each notebook's title, why it matters, what
  you will be able to do (its first markdown cell), and its size and run time;
* one page per notebook (01..10 and the simulator), each with the course map and its own table
  of contents in a sidebar, previous/next links, and its figures embedded;
* exercise solutions (cells tagged ``solution``) folded in ``<details class="solution">``, so
  the question comes first; the answer keys in ``notebooks/solutions/`` are merged back in
  place by ``scripts/answer_keys.py``;
* the freeze-toggle simulator live in the page with no kernel: its own ES module
  (``tlhelpers/simulator/static/freeze_view.js``, copied as is) rendered over the widget state
  the notebook stored, through a kernel-free model (``scripts/book_static/offline_model.js``).
  Toggles, presets and switches redraw in the browser; what needs a kernel says so.

Everything a page loads is in the built folder: no script, style or font comes from another
host (nbconvert's CDN references to require.js, MathJax, mermaid and the widget manager are
left out; the notebooks hold no TeX, and any would stay readable as text).

Usage:
    python scripts/build_book.py [--out build/book]
    cd build/book && python -m http.server     # then open http://localhost:8000
"""

from __future__ import annotations

import argparse
import copy
import html
import json
import re
import shutil
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import answer_keys  # scripts/ is on sys.path: this script's own folder (or pytest's pythonpath)
import nbformat

from tlhelpers.files import atomic_folder

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOKS = ROOT / "notebooks"
TEMPLATES = Path(__file__).resolve().parent / "book_templates"
BOOK_STATIC = Path(__file__).resolve().parent / "book_static"
WIDGET_STATIC = ROOT / "tlhelpers" / "simulator" / "static"
DEFAULT_OUT = ROOT / "build" / "book"
#: Written into the output folder, so a rebuild only ever deletes a folder this script made.
MARKER = ".tlhelpers-book"

WIDGET_VIEW = "application/vnd.jupyter.widget-view+json"
WIDGET_STATE = "application/vnd.jupyter.widget-state+json"
FREEZE_VIEW = "tlhelpers.simulator.view.FreezeView"
#: Shown by the simulator in the page (freeze_view.js renders it in ``.fv-offline-note`` and
#: disables the controls that need a kernel when it is set).
OFFLINE_NOTE = ("Train step, A/B training and the architecture picker need a running kernel: "
                "run make lab and open this notebook.")
COURSE = "Transfer learning with PyTorch"


@dataclass
class Page:
    """One notebook of the course and what the site says about it."""

    source: Path
    notebook: nbformat.NotebookNode
    title: str                      # the first heading, as written ("02 · Inspecting and freezing")
    why: str                        # the first paragraph after the title (markdown)
    objectives: list[str]           # the "What you will be able to do" items (markdown)
    cells: int
    code_cells: int
    run_seconds: float | None       # its last run by make notebooks (metadata course.run_seconds), if stored
    solutions: int = 0
    widgets: dict[str, str] = field(default_factory=dict)

    @property
    def name(self) -> str:
        return self.source.stem

    @property
    def run_on(self) -> str:
        """", on N CPU cores" when the notebook says how many cores ran it."""
        cores = self.notebook.get("metadata", {}).get("course", {}).get("cpu_cores")
        return f", {cores} CPU cores" if isinstance(cores, int) else ""

    @property
    def href(self) -> str:
        return f"{self.name}.html"

    @property
    def number(self) -> str:
        match = re.match(r"(\d+)\s*·\s*", self.title)
        return match.group(1) if match else ""

    @property
    def short_title(self) -> str:
        return re.sub(r"^\d+\s*·\s*", "", self.title)


# ----------------------------------------------------------------------------- reading

def course_notebooks() -> list[Path]:
    """The pages in reading order: the numbered notebooks, then the simulator."""
    numbered = sorted(NOTEBOOKS.glob("[0-9][0-9]_*.ipynb"))
    simulator = NOTEBOOKS / "simulator.ipynb"
    return numbered + ([simulator] if simulator.exists() else [])


def read_notebook(path: Path) -> nbformat.NotebookNode:
    """The notebook with its exercise solutions in place after their exercises (scripts/answer_keys.py)."""
    return answer_keys.merged(path, verify=False)


def _first_markdown(notebook) -> str:
    return next((cell.source for cell in notebook.cells if cell.cell_type == "markdown"), "")


def describe(path: Path, notebook) -> Page:
    """Title, why, objectives, size and run time, from the notebook itself."""
    text = _first_markdown(notebook)
    lines = text.splitlines()
    title = next((line[2:].strip() for line in lines if line.startswith("# ")), path.stem)
    after_title = text.split("\n", 1)[1] if text.startswith("# ") and "\n" in text else text
    blocks = [b.strip() for b in re.split(r"\n\s*\n", after_title) if b.strip()]
    why = next((b for b in blocks if not b.startswith(("#", "-", "*", "!"))), "")
    objectives: list[str] = []
    heading = re.search(r"^##\s+What you will be able to do\s*$", text, re.M | re.I)
    if heading:
        item: list[str] = []
        for line in text[heading.end():].splitlines():
            if line.startswith("#"):
                break
            if re.match(r"^[-*]\s+", line):
                if item:
                    objectives.append(" ".join(item))
                item = [re.sub(r"^[-*]\s+", "", line).strip()]
            elif line.strip() and item:
                item.append(line.strip())
        if item:
            objectives.append(" ".join(item))
    objectives = [o.rstrip(";.") for o in objectives]
    code = [c for c in notebook.cells if c.cell_type == "code"]
    return Page(source=path, notebook=notebook, title=title, why=why, objectives=objectives,
                cells=len(notebook.cells), code_cells=len(code), run_seconds=run_seconds(notebook),
                solutions=sum("solution" in answer_keys.tags(c) for c in notebook.cells))


def run_seconds(notebook) -> float | None:
    """The notebook's last top-to-bottom run time: ``make notebooks`` (scripts/run_notebooks.py)
    stores it in the notebook's metadata (``course.run_seconds``); None when it holds none."""
    value = notebook.get("metadata", {}).get("course", {}).get("run_seconds")
    return float(value) if isinstance(value, (int, float)) and value >= 0 else None


def _duration(seconds: float) -> str:
    if seconds < 90:
        return f"{seconds:.0f} s"
    return f"{seconds // 60:.0f} min {seconds % 60:02.0f} s"


def size_line(page: Page) -> str:
    cells = f"{page.cells} cells, {page.code_cells} of them code"
    if page.run_seconds is not None:
        return f"ran in {_duration(page.run_seconds)} (make notebooks{page.run_on}) · {cells}"
    return f"{cells} · run time not recorded in the notebook"


# ----------------------------------------------------------------------------- widgets

def _widget_states(notebook) -> dict[str, dict]:
    stored = notebook.metadata.get("widgets", {}).get(WIDGET_STATE, {}).get("state", {})
    return {model_id: dict(model.get("state", {})) for model_id, model in stored.items()}


def _is_freeze_view(state: dict) -> bool:
    return state.get("_anywidget_id") == FREEZE_VIEW or ("blocks" in state and "table" in state
                                                          and "frozen" in state)


def _script_json(value) -> str:
    """JSON safe inside <script>: no "</script>", no "<!--"."""
    return json.dumps(value, ensure_ascii=False).replace("<", "\\u003c").replace(">", "\\u003e")


def embed(model_id: str, state: dict, index: int) -> str:
    """A kernel-free simulator: a div, its stored state as JSON, and a module that renders
    freeze_view.js into the div over an OfflineModel of that state."""
    state = {k: v for k, v in state.items() if k not in ("_esm", "_css")}
    state.update(busy="", error="", offline_note=OFFLINE_NOTE)
    element = f"book-widget-{index}"
    return (f'<div class="book-widget jp-OutputArea-output" id="{element}" data-model-id="{html.escape(model_id)}">'
            f"</div>\n"
            f'<script type="application/json" id="{element}-state">{_script_json(state)}</script>\n'
            f'<script type="module">\n'
            f'import * as widget from "./static/freeze_view.js";\n'
            f'import {{ mount, readState }} from "./static/offline_model.js";\n'
            f'mount(widget, document.getElementById("{element}"), readState("{element}-state"));\n'
            f"</script>")


def prepare_widgets(page: Page) -> None:
    """Each FreezeView output with stored state gets an embed; any other widget output (or one
    saved without its state, or a second view of a model already embedded) falls back to its
    image or text representation."""
    states = _widget_states(page.notebook)
    for cell in page.notebook.cells:
        for output in cell.get("outputs", []):
            view = output.get("data", {}).get(WIDGET_VIEW)
            if view is None:
                continue
            model_id = view.get("model_id", "") if isinstance(view, dict) else ""
            state = states.get(model_id)
            if state and _is_freeze_view(state) and model_id not in page.widgets:
                page.widgets[model_id] = embed(model_id, state, len(page.widgets) + 1)
            else:
                del output["data"][WIDGET_VIEW]
    # The state now travels in the embeds. nbconvert renders a widget output only when its model
    # id is in the notebook's widget state, so only the ids stay (the template writes none of it).
    page.notebook.metadata.pop("widgets", None)
    if page.widgets:
        page.notebook.metadata["widgets"] = {WIDGET_STATE: {"version_major": 2, "version_minor": 0,
                                                            "state": {model_id: {} for model_id in page.widgets}}}


# ----------------------------------------------------------------------------- navigation

def _inline(markdown_text: str) -> str:
    """A title as HTML: escaped, `code` spans kept."""
    escaped = html.escape(markdown_text)
    return re.sub(r"`([^`]+)`", r"<code>\1</code>", escaped)


def _plain(markdown_text: str) -> str:
    return markdown_text.replace("`", "")


def course_map(pages: list[Page], current: Page | None) -> str:
    items = []
    for page in pages:
        here = ' aria-current="page" class="book-current"' if page is current else ""
        number = f'<span class="book-number">{html.escape(page.number)}</span> ' if page.number else ""
        items.append(f'<li><a href="{page.href}"{here}>{number}{_inline(page.short_title)}</a></li>')
    return f'<ol class="book-map">\n{"".join(items)}\n</ol>'


def header(pages: list[Page], index: int) -> str:
    previous = pages[index - 1] if index > 0 else None
    following = pages[index + 1] if index + 1 < len(pages) else None
    links = []
    if previous:
        links.append(f'<a class="book-prev" rel="prev" href="{previous.href}">← {_inline(previous.title)}</a>')
    if following:
        links.append(f'<a class="book-next" rel="next" href="{following.href}">{_inline(following.title)} →</a>')
    return (f'<header class="book-header"><a class="book-home" href="index.html">{html.escape(COURSE)}</a>'
            f'<nav class="book-prevnext" aria-label="Previous and next notebook">{" ".join(links)}</nav></header>')


def pager(pages: list[Page], index: int) -> str:
    previous = pages[index - 1] if index > 0 else None
    following = pages[index + 1] if index + 1 < len(pages) else None
    left = (f'<a class="book-prev" rel="prev" href="{previous.href}"><small>Previous</small>{_inline(previous.title)}</a>'
            if previous else '<a class="book-prev" href="index.html"><small>Back to</small>the course map</a>')
    right = (f'<a class="book-next" rel="next" href="{following.href}"><small>Next</small>{_inline(following.title)}</a>'
             if following else '<a class="book-next" href="index.html"><small>Back to</small>the course map</a>')
    return f'<nav class="book-pager" aria-label="Previous and next notebook">{left}{right}</nav>'


TOC_SLOT = "<!--book-toc-->"
HEADING = re.compile(r'<h([23]) id="([^"]+)">(.*?)<a class="anchor-link"', re.S)


def sidebar(pages: list[Page], page: Page) -> str:
    return (f'<nav class="book-sidebar" aria-label="Course">'
            f'<p class="book-sidebar-title"><a href="index.html">Course map</a></p>{course_map(pages, page)}'
            f'{TOC_SLOT}</nav>')


def table_of_contents(body: str) -> str:
    """The page's ## and ### headings (as nbconvert rendered them, with their anchors)."""
    items = []
    for level, anchor, text in HEADING.findall(body):
        items.append(f'<li class="book-toc-h{level}"><a href="#{anchor}">{text.strip()}</a></li>')
    if not items:
        return ""
    return f'<p class="book-sidebar-title">On this page</p><ul class="book-toc">\n{"".join(items)}\n</ul>'


def _fix_links(body: str, pages: list[Page], page: Page) -> str:
    """Links between notebooks go to their pages; links to an answer key go to the folded
    solutions on the notebook's own page."""
    built = {p.source.name: p for p in pages}

    def replace(match: re.Match) -> str:
        attribute, target, fragment = match.group(1), match.group(2), match.group(3) or ""
        name = target.rsplit("/", 1)[-1]
        if name in built and target.startswith("solutions/"):
            other = built[name]
            where = "" if other is page else other.href
            return f'{attribute}="{where}#solution-1"'
        if name in built and "/" not in target:
            return f'{attribute}="{built[name].href}{fragment}"'
        return match.group(0)

    return re.sub(r'(href)="((?:solutions/)?[\w.-]+\.ipynb)(#[^"]*)?"', replace, body)


def _number_solutions(body: str) -> str:
    counter = iter(range(1, 10_000))
    return re.sub(r'<details class="solution">', lambda m: f'<details class="solution" id="solution-{next(counter)}">',
                  body)


# ----------------------------------------------------------------------------- building

def exporter():
    from nbconvert import HTMLExporter

    return HTMLExporter(template_name="book", extra_template_basedirs=[str(TEMPLATES)])


def render_page(pages: list[Page], index: int, html_exporter) -> str:
    page = pages[index]
    notebook = copy.deepcopy(page.notebook)
    notebook.metadata["title"] = f"{_plain(page.title)} · {COURSE}"
    resources = {
        "metadata": {"name": page.name, "path": str(page.source.parent)},
        "book": {"widgets": page.widgets, "header": header(pages, index), "sidebar": sidebar(pages, page),
                 "pager": pager(pages, index)},
    }
    body, _ = html_exporter.from_notebook_node(notebook, resources=resources)
    body = body.replace(TOC_SLOT, table_of_contents(body), 1)
    body = _number_solutions(body)
    return _fix_links(body, pages, page)


def _markdown(text: str) -> str:
    from nbconvert.filters.markdown_mistune import markdown2html_mistune

    return markdown2html_mistune(text)


def landing(pages: list[Page]) -> str:
    cards = []
    for page in pages:
        objectives = "".join(f"<li>{_markdown(o).strip().removeprefix('<p>').removesuffix('</p>')}</li>"
                             for o in page.objectives)
        folded = (f'<details class="book-objectives"><summary>What you will be able to do '
                  f"({len(page.objectives)})</summary><ul>{objectives}</ul></details>" if page.objectives else "")
        solutions = f" · {page.solutions} exercises with folded solutions" if page.solutions else ""
        widget = " · live simulator in the page" if page.widgets else ""
        cards.append(
            f'<li class="book-card" id="map-{page.name}">'
            f'<h2><a href="{page.href}">{_inline(page.title)}</a></h2>'
            f'<div class="book-why">{_markdown(page.why)}</div>{folded}'
            f'<p class="book-size">{html.escape(size_line(page))}{solutions}{widget}</p></li>')
    return f"""<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1.0">
<title>{html.escape(COURSE)}</title>
<link rel="icon" href="data:,">
<link rel="stylesheet" href="static/jupyterlab-theme-light.css">
<link rel="stylesheet" href="static/book.css">
<script type="module" src="static/book.js"></script>
</head>
<body class="book-landing">
<header class="book-header"><a class="book-home" href="index.html">{html.escape(COURSE)}</a></header>
<main class="book-index">
<h1>{html.escape(COURSE)}</h1>
<p class="book-lead">A short course in notebooks: take a network trained on ImageNet, look inside it, freeze
parts of it, give it a new head, train it, fine-tune it, and find out what changes when your data looks
nothing like ImageNet. These pages are the notebooks as they last ran, every number computed by the
notebook; solutions are folded under each exercise. To run them yourself, offline on a laptop CPU:
<code>make lab</code>.</p>
<h2 class="book-map-title">The course map</h2>
<ol class="book-cards">
{"".join(cards)}
</ol>
<p class="book-built">Built by <code>make book</code> from the notebooks' stored outputs (nothing re-executed).</p>
</main>
</body>
</html>
"""


def _copy_static(out: Path, html_exporter) -> None:
    static = out / "static"
    static.mkdir()
    for name in ("freeze_view.js", "freeze_view.css"):
        shutil.copyfile(WIDGET_STATIC / name, static / name)
    for path in sorted(BOOK_STATIC.iterdir()):
        if path.is_file():
            shutil.copyfile(path, static / path.name)
    # JupyterLab's styles from nbconvert's lab template (system fonts and data: icons only).
    lab_static = next((Path(d) / "static" for d in html_exporter.template_paths
                       if (Path(d) / "static" / "index.css").exists()), None)
    if lab_static is None:
        raise FileNotFoundError("nbconvert's lab template (static/index.css) was not found")
    shutil.copyfile(lab_static / "index.css", static / "jupyterlab-index.css")
    shutil.copyfile(lab_static / "theme-light.css", static / "jupyterlab-theme-light.css")
    figures = NOTEBOOKS / "figures"
    if figures.is_dir():
        shutil.copytree(figures, out / "figures")


def _check_replaceable(out: Path) -> None:
    if out.exists() and any(out.iterdir()) and not (out / MARKER).exists():
        raise FileExistsError(f"{out} holds files this script did not write; choose an empty or new folder")


def build(out: Path = DEFAULT_OUT, notebooks: list[Path] | None = None) -> Path:
    """Build the site beside ``out`` and swap it into place; return ``out``'s index.html.

    The new site is written into a staging folder next to ``out``
    (:func:`tlhelpers.files.atomic_folder`); only when every page is written does it replace an
    earlier build, so a failed build leaves the old site whole. ``out`` must be new, empty or a
    site this script built (it holds the marker file).
    """
    out = Path(out)
    _check_replaceable(out)
    pages = [describe(path, read_notebook(path)) for path in (notebooks or course_notebooks())]
    for page in pages:
        prepare_widgets(page)
    html_exporter = exporter()
    with atomic_folder(out) as staging:
        (staging / MARKER).write_text("written by scripts/build_book.py; the whole folder is rebuilt each time\n")
        _copy_static(staging, html_exporter)
        for index, page in enumerate(pages):
            (staging / page.href).write_text(render_page(pages, index, html_exporter), encoding="utf-8")
        (staging / "index.html").write_text(landing(pages), encoding="utf-8")
    return out / "index.html"


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help="output folder (default build/book)")
    args = parser.parse_args(argv)
    started = time.perf_counter()
    index_html = build(args.out)
    pages = len(list(index_html.parent.glob("*.html"))) - 1
    where = index_html.parent.relative_to(ROOT) if index_html.parent.is_relative_to(ROOT) else index_html.parent
    print(f"Built {pages} notebook pages and the course map into {where}/ in {time.perf_counter() - started:.1f} s.")
    print(f"Read it: cd {where} && python -m http.server   (then open http://127.0.0.1:8000)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
