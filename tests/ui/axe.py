"""axe-core in a Playwright page: the WCAG 2.0/2.1 A and AA audit the accessibility tests run.

axe-core comes from npm (``package.json``; ``make test`` runs ``npm ci``) and is injected from
``node_modules`` as a script tag: nothing is fetched from the network at test time.
"""

from __future__ import annotations

import os
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
AXE = ROOT / "node_modules" / "axe-core" / "axe.min.js"
#: The rule tags of WCAG 2.0 and 2.1, levels A and AA (axe's own tag names).
WCAG_AA = ["wcag2a", "wcag2aa", "wcag21a", "wcag21aa"]


def axe_path() -> Path:
    """The installed axe.min.js, or a clear failure/skip saying how to install it."""
    if not AXE.exists():
        import pytest

        message = (f"{AXE.relative_to(ROOT)} is missing: run `npm ci` in the repository (make test does; "
                   "npm comes with Debian's nodejs)")
        if os.environ.get("CI"):
            pytest.fail(message + " and CI is set, so this is a failure, not a skip")
        pytest.skip(message)
    return AXE


def audit(page, context: str | None = None) -> list[dict]:
    """Run axe's WCAG 2.0/2.1 A and AA rules on ``page`` (or on the elements matching ``context``);
    return the violations as axe reports them (rule id, impact, help, nodes with their targets)."""
    if not page.evaluate("typeof window.axe !== 'undefined'"):
        page.add_script_tag(path=str(axe_path()))
    return page.evaluate(
        """async ([context, tags]) => {
             const result = await axe.run(context ? document.querySelectorAll(context) : document,
                                          {runOnly: {type: 'tag', values: tags}, resultTypes: ['violations']});
             return result.violations.map(v => ({id: v.id, impact: v.impact, help: v.help,
               nodes: v.nodes.map(n => ({target: n.target.join(' '), summary: n.failureSummary}))}));
           }""", [context, WCAG_AA])


def summary(violations: list[dict], limit: int = 5) -> str:
    """One line per violated rule, with a few of the elements that break it."""
    lines = []
    for violation in violations:
        nodes = violation["nodes"]
        where = "; ".join(f"{n['target']}: {n['summary'].splitlines()[-1].strip()}" for n in nodes[:limit])
        lines.append(f"{violation['id']} ({len(nodes)} elements, {violation['impact']}): {violation['help']}. {where}")
    return "\n".join(lines)
