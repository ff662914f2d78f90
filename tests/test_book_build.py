"""The course website (``make book``, scripts/build_book.py), checked without a browser.

The site is built once into a temporary folder from the notebooks as they are stored. Every
page must be there and linked from the course map; nothing a page loads (script, style, image,
frame, icon) may come from another host, and no style sheet may pull anything in from one;
exercise solutions are folded in ``<details class="solution">``; each simulator output is a
kernel-free embed of the package's own freeze_view.js over the stored widget state, and an
output saved without its widget state falls back to its picture. tests/ui/test_book.py drives
the same site in a real browser.
"""

from __future__ import annotations

import json
import re
from html.parser import HTMLParser
from pathlib import Path

import nbformat
import pytest

ROOT = Path(__file__).resolve().parents[1]
import build_book as book  # noqa: E402  (scripts/ is on pytest's pythonpath)

#: Tags whose src/href the page loads by itself (a prose <a href> is only followed on a click).
LOADED = {"script": "src", "link": "href", "img": "src", "iframe": "src", "source": "src", "video": "src",
          "audio": "src", "embed": "src", "object": "data", "track": "src", "input": "src"}


class Loads(HTMLParser):
    """Every URL a page fetches without a click, plus the inline module scripts."""

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.urls: list[tuple[str, str]] = []
        self.scripts: list[tuple[str, str]] = []   # (type, text) of every inline script
        self._in_script = False

    @property
    def modules(self) -> list[str]:
        return [text for kind, text in self.scripts if kind == "module"]

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        if tag in LOADED and attrs.get(LOADED[tag]):
            self.urls.append((tag, attrs[LOADED[tag]]))
        if tag == "script" and not attrs.get("src"):
            self._in_script = True
            self.scripts.append((attrs.get("type") or "text/javascript", ""))

    def handle_endtag(self, tag):
        if tag == "script":
            self._in_script = False

    def handle_data(self, data):
        if self._in_script:
            kind, text = self.scripts[-1]
            self.scripts[-1] = (kind, text + data)


class Anchors(HTMLParser):
    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.anchors: list[dict] = []

    def handle_starttag(self, tag, attrs):
        if tag == "a":
            self.anchors.append(dict(attrs))


def anchors(page: Path) -> list[dict]:
    parser = Anchors()
    parser.feed(page.read_text(encoding="utf-8"))
    return parser.anchors


def loads(page: Path) -> Loads:
    parser = Loads()
    parser.feed(page.read_text(encoding="utf-8"))
    return parser


@pytest.fixture(scope="module")
def site(tmp_path_factory) -> Path:
    index = book.build(tmp_path_factory.mktemp("book") / "book")
    assert index.name == "index.html" and index.exists()
    return index.parent


def expected_pages() -> list[str]:
    return [path.stem + ".html" for path in book.course_notebooks()]


def test_the_course_has_its_eleven_pages() -> None:
    names = expected_pages()
    assert names[-1] == "simulator.html"
    assert [n[:2] for n in names[:-1]] == [f"{i:02d}" for i in range(1, 11)]


def test_every_page_exists_and_the_course_map_links_it(site: Path) -> None:
    for name in expected_pages():
        assert (site / name).exists(), f"{name} was not built"
        assert name in {a.get("href") for a in anchors(site / "index.html")}, f"the course map does not link {name}"
        links = anchors(site / name)
        assert [a.get("href") for a in links if a.get("aria-current") == "page"] == [name], f"{name} has no course map"
        for other in expected_pages():
            assert other in {a.get("href") for a in links}, f"{name}'s course map does not link {other}"


def test_the_course_map_says_what_each_notebook_teaches(site: Path) -> None:
    index = (site / "index.html").read_text(encoding="utf-8")
    for path in book.course_notebooks():
        page = book.describe(path, nbformat.read(path, as_version=4))
        card = re.search(rf'<li class="book-card" id="map-{re.escape(path.stem)}">(.*?)</li>\s*(?=<li class="book-card"|</ol>)',
                         index, re.S)
        assert card, f"no course-map entry for {path.name}"
        assert page.why and page.why.split()[1] in card.group(1), f"{path.name}: its opening paragraph is missing"
        assert "cells" in card.group(1)
        if path.name[:2].isdigit():
            assert page.objectives, f"{path.name}: no 'What you will be able to do' items found"
            assert f"What you will be able to do ({len(page.objectives)})" in card.group(1)


def test_pages_have_a_table_of_contents_and_previous_next_links(site: Path) -> None:
    names = expected_pages()
    for position, name in enumerate(names):
        page = (site / name).read_text(encoding="utf-8")
        rel = {(a.get("rel"), a.get("href")) for a in anchors(site / name)}
        if position > 0:
            assert ("prev", names[position - 1]) in rel, f"{name}: no link to the previous page"
        if position + 1 < len(names):
            assert ("next", names[position + 1]) in rel, f"{name}: no link to the next page"
        if name != "simulator.html":
            toc = re.search(r'<ul class="book-toc">(.*?)</ul>', page, re.S)
            assert toc and toc.group(1).count("<li") >= 3, f"{name}: no table of contents"
            for anchor in re.findall(r'href="#([^"]+)"', toc.group(1)):
                assert f'id="{anchor}"' in page, f"{name}: the contents link #{anchor} points nowhere"


def test_nothing_a_page_loads_comes_from_another_host(site: Path) -> None:
    for page in sorted(site.glob("*.html")):
        parsed = loads(page)
        for tag, url in parsed.urls:
            assert not re.match(r"^(https?:)?//", url, re.I), f"{page.name}: <{tag}> loads {url}"
        for kind, text in parsed.scripts:
            if kind == "application/json":
                continue
            # nbconvert's own templates load require.js, MathJax and the widget manager from script code
            assert not re.search(r"(https?:)?//|cdnjs|unpkg|jsdelivr|require\.min\.js|mathjax", text, re.I), \
                f"{page.name}: an inline script reaches out: {text[:200]!r}"
    for sheet in sorted((site / "static").glob("*.css")):
        text = sheet.read_text(encoding="utf-8")
        assert "@import" not in text, f"{sheet.name} imports another style sheet"
        external = re.findall(r"""url\(\s*["']?((?:https?:)?//[^)"']+)""", text)
        assert not external, f"{sheet.name} loads {external[:3]}"
    for script in sorted((site / "static").glob("*.js")):
        imports = re.findall(r"""(?:import|from)\s*\(?\s*["']([^"']+)["']""", script.read_text(encoding="utf-8"))
        assert all(i.startswith("./") for i in imports), f"{script.name} imports {imports}"


def test_every_local_file_a_page_loads_is_there(site: Path) -> None:
    for page in sorted(site.glob("*.html")):
        for tag, url in loads(page).urls:
            if url.startswith("data:"):
                continue
            assert (site / url.split("#")[0].split("?")[0]).exists(), f"{page.name}: <{tag}> {url} is missing"
        for module in loads(page).modules:
            for target in re.findall(r"""from\s*["']([^"']+)["']""", module):
                assert (site / target).exists(), f"{page.name} imports {target}, which is not in the site"


def test_solutions_are_folded_under_their_exercise(site: Path) -> None:
    folded = 0
    for path in book.course_notebooks():
        notebook = book.read_notebook(path)
        solutions = sum("solution" in cell.metadata.get("tags", []) for cell in notebook.cells)
        page = (site / f"{path.stem}.html").read_text(encoding="utf-8")
        details = re.findall(r'<details[^>]*class="solution"[^>]*><summary>Solution</summary>\s*'
                             r'<div [^>]*class="jp-Cell jp-CodeCell[^"]*celltag_solution', page)
        assert len(details) == solutions, f"{path.name}: {solutions} solutions, {len(details)} folded"
        assert page.count("celltag_solution") == solutions, f"{path.name}: a solution cell outside <details>"
        assert not re.search(r"<details[^>]*\bopen\b", page), f"{path.name}: a solution starts open"
        folded += solutions
    assert folded >= 10, "the course's exercises have their solutions on the site"


def test_the_simulator_is_embedded_with_its_stored_state_and_no_kernel(site: Path) -> None:
    package = ROOT / "tlhelpers" / "simulator" / "static"
    for name in ("freeze_view.js", "freeze_view.css"):
        assert (site / "static" / name).read_bytes() == (package / name).read_bytes(), f"{name} is not the package's"
    for name in ("simulator.html", "02_inspecting_and_freezing.html"):
        page = site / name
        parsed = loads(page)
        assert len(parsed.modules) == 1, f"{name}: one simulator, one module"
        module = parsed.modules[0]
        assert './static/freeze_view.js"' in module and './static/offline_model.js"' in module
        text = page.read_text(encoding="utf-8")
        assert "static/freeze_view.css" in text
        state = json.loads(re.search(r'<script[^>]*id="book-widget-1-state"[^>]*>(.*?)</script>', text, re.S).group(1))
        assert state["offline_note"] == book.OFFLINE_NOTE and "make lab" in state["offline_note"]
        assert {"blocks", "table", "frozen", "switches", "palette", "vocabulary"} <= state.keys()
        assert "_esm" not in state, "the module is loaded from static/, not pasted into every page"
    shim = (site / "static" / "offline_model.js").read_text(encoding="utf-8")
    for method in ("get(", "set(", "on(", "off(", "save_changes(", "send("):
        assert method in shim, f"the offline model lacks {method}"


def test_a_widget_saved_without_its_state_falls_back_to_its_picture(tmp_path: Path) -> None:
    notebook = nbformat.read(ROOT / "notebooks" / "simulator.ipynb", as_version=4)
    notebook.metadata.pop("widgets", None)
    pictures = sum("image/png" in o.get("data", {}) for c in notebook.cells for o in c.get("outputs", []))
    assert pictures, "the simulator notebook stores a picture next to its widget"
    source = tmp_path / "notebooks" / "simulator.ipynb"
    source.parent.mkdir()
    nbformat.write(notebook, source)
    page = book.build(tmp_path / "site", notebooks=[source]).parent / "simulator.html"
    parsed = loads(page)
    assert not parsed.modules, "no live widget without its state"
    assert sum(url.startswith("data:image/png") for tag, url in parsed.urls if tag == "img") == pictures


def test_a_rebuild_only_ever_replaces_its_own_folder(tmp_path: Path) -> None:
    (tmp_path / "mine.txt").write_text("not the book's")
    with pytest.raises(FileExistsError):
        book.build(tmp_path, notebooks=[ROOT / "notebooks" / "simulator.ipynb"])
    assert (tmp_path / "mine.txt").exists()


def test_run_time_comes_from_the_notebook_metadata_or_is_said_to_be_missing() -> None:
    notebook = nbformat.v4.new_notebook(cells=[nbformat.v4.new_markdown_cell("# 99 · A title\n\nWhy."),
                                               nbformat.v4.new_code_cell("1"), nbformat.v4.new_code_cell("2")])
    page = book.describe(Path("99_a_title.ipynb"), notebook)
    assert page.run_seconds is None and "run time not recorded" in book.size_line(page)
    notebook.metadata["course"] = {"run_seconds": 100.0, "cpu_cores": 2}      # what make notebooks stores
    page = book.describe(Path("99_a_title.ipynb"), notebook)
    assert page.run_seconds == 100.0
    assert book.size_line(page).startswith("ran in 1 min 40 s (make notebooks, 2 CPU cores)")
    assert (page.number, page.short_title, page.why) == ("99", "A title", "Why.")


# ----------------------------------------------------------------------------- accessibility

class Images(HTMLParser):
    """Every <img> of a page: its alt text (None when it has none) and whether it is a cell output."""

    def __init__(self) -> None:
        super().__init__()
        self.images: list[tuple[str | None, bool]] = []
        self._output_depth: list[bool] = []

    def handle_starttag(self, tag, attrs):
        attributes = dict(attrs)
        if tag == "div":
            self._output_depth.append("jp-RenderedImage" in (attributes.get("class") or ""))
        if tag == "img":
            self.images.append((attributes.get("alt"), any(self._output_depth)))

    def handle_endtag(self, tag):
        if tag == "div" and self._output_depth:
            self._output_depth.pop()


#: What nbconvert writes when an output carries no description: a screen reader learns nothing.
GENERIC_ALT = "No description has been provided for this image"


def test_every_figure_says_what_it_shows(site: Path) -> None:
    """Each figure a notebook drew carries alternative text made from the figure itself
    (tlhelpers.figure_text, stored by make notebooks); each figure a markdown cell shows has its own."""
    missing, outputs = [], 0
    for page in sorted(site.glob("*.html")):
        parser = Images()
        parser.feed(page.read_text(encoding="utf-8"))
        for alt, is_output in parser.images:
            outputs += is_output
            if not alt or alt.strip() == GENERIC_ALT or (is_output and not alt.startswith("Figure")):
                missing.append(f"{page.name}: {alt!r}")
    assert outputs >= 10, f"the course draws figures; found {outputs}"
    assert not missing, ("figures without a description (run `make notebooks` so each figure stores its "
                         f"alt text): {missing[:8]}")


def _luminance(colour: str) -> float:
    colour = colour.lstrip("#")
    if len(colour) == 3:
        colour = "".join(c * 2 for c in colour)
    channels = [int(colour[i:i + 2], 16) / 255 for i in (0, 2, 4)]
    linear = [c / 12.92 if c <= 0.03928 else ((c + 0.055) / 1.055) ** 2.4 for c in channels]
    return 0.2126 * linear[0] + 0.7152 * linear[1] + 0.0722 * linear[2]


def contrast(a: str, b: str) -> float:
    """WCAG 2.1 contrast ratio of two #rrggbb colours."""
    high, low = sorted((_luminance(a), _luminance(b)), reverse=True)
    return (high + 0.05) / (low + 0.05)


def test_code_prompt_and_link_colours_pass_aa_on_every_background() -> None:
    """The website's text colours (syntax highlighting, prompts, links, muted text) are at least
    4.5:1 on the page, the code cells and the header bar (WCAG 1.4.3 AA)."""
    css = (ROOT / "scripts" / "book_static" / "book.css").read_text()
    colours = dict(re.findall(r"(--[\w-]+):\s*(#[0-9a-fA-F]{3,6})\s*;", css))
    text = {name: value for name, value in colours.items()
            if "mirror-editor" in name or "prompt" in name or "link" in name or name in ("--book-ink", "--book-muted",
                                                                                          "--book-accent")}
    assert len(text) >= 12, sorted(text)
    backgrounds = {"page": "#ffffff", "code cell": "#f5f5f5", "header": "#eeeeee"}
    poor = [f"{name} {value} on the {where}: {contrast(value, bg):.2f}:1" for name, value in text.items()
            for where, bg in backgrounds.items() if contrast(value, bg) < 4.5]
    assert not poor, poor
    assert contrast("#ffffff", colours["--book-accent"]) >= 4.5, "the current page in the map: white on the accent"
    assert contrast("#212121", "#ffffff") > 15 and round(contrast("#b0b0b0", "#ffffff"), 1) == 2.2   # the check itself


def test_a_failed_build_leaves_the_old_site_whole(tmp_path, monkeypatch) -> None:
    simulator = [ROOT / "notebooks" / "simulator.ipynb"]
    out = tmp_path / "site"
    book.build(out, notebooks=simulator)
    before = {p.relative_to(out): p.read_bytes() for p in out.rglob("*") if p.is_file()}
    monkeypatch.setattr(book, "landing", lambda pages: (_ for _ in ()).throw(RuntimeError("template broke")))
    with pytest.raises(RuntimeError, match="template broke"):
        book.build(out, notebooks=simulator)
    assert {p.relative_to(out): p.read_bytes() for p in out.rglob("*") if p.is_file()} == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["site"]     # no half-built folder beside it


def test_a_folder_the_builder_did_not_write_is_never_replaced(tmp_path) -> None:
    (tmp_path / "notes.txt").write_text("mine")
    with pytest.raises(FileExistsError, match="did not write"):
        book.build(tmp_path, notebooks=[ROOT / "notebooks" / "simulator.ipynb"])
    assert (tmp_path / "notes.txt").read_text() == "mine"
