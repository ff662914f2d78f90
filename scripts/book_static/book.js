// The course website (scripts/build_book.py): keyboard access to what scrolls.
// A code cell, an output or a text cell (a wide table, a long code span) wider than the page scrolls sideways; a keyboard user can only scroll
// what can take focus (WCAG 2.1.1, axe's scrollable-region-focusable). Each region that
// actually overflows gets tabindex="0", role="region" and a label saying what it is; a region
// that fits loses them again (after a resize), so the Tab order holds no needless stops.

const REGIONS = [
  [".jp-InputArea-editor > .cm-editor", "Code cell"],
  [".jp-OutputArea-output", "Cell output"],
  [".jp-RenderedMarkdown", "Text cell"],
  [".book-widget", "Simulator"],
];

function scrolls(element) {
  const style = getComputedStyle(element);
  const can = (overflow) => overflow === "auto" || overflow === "scroll";
  return (can(style.overflowX) && element.scrollWidth > element.clientWidth + 1) ||
    (can(style.overflowY) && element.scrollHeight > element.clientHeight + 1);
}

export function markScrollableRegions(root = document) {
  let count = 0;
  for (const [selector, what] of REGIONS) {
    for (const element of root.querySelectorAll(selector)) {
      if (scrolls(element)) {
        count += 1;
        if (!element.hasAttribute("tabindex")) element.setAttribute("tabindex", "0");
        element.setAttribute("role", "region");
        element.setAttribute("aria-label", `${what} (scrolls: use the arrow keys)`);
        element.dataset.bookScrolls = "true";
      } else if (element.dataset.bookScrolls) {
        element.removeAttribute("tabindex");
        element.removeAttribute("role");
        element.removeAttribute("aria-label");
        delete element.dataset.bookScrolls;
      }
    }
  }
  document.documentElement.dataset.bookScrollables = String(count);
  return count;
}

markScrollableRegions();
let pending = 0;
window.addEventListener("resize", () => {
  cancelAnimationFrame(pending);
  pending = requestAnimationFrame(() => markScrollableRegions());
});
