"""The README stays a short user document whose links all resolve inside the repository, and
CI runs the README's test command."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
LINK = re.compile(r"!?\[[^\]]*\]\(([^)\s]+)\)")


def broken_links(markdown: Path, root: Path = ROOT) -> list[str]:
    """Relative links of a Markdown file that do not name a file or folder inside `root`
    (web links are not checked; a `#fragment` is dropped)."""
    bad = []
    for target in LINK.findall(markdown.read_text(encoding="utf-8")):
        if re.match(r"[a-z]+:", target) or target.startswith("#"):
            continue
        path = (markdown.parent / target.split("#")[0]).resolve()
        if not path.exists() or not path.is_relative_to(root.resolve()):
            bad.append(target)
    return bad


def test_readme_is_short():
    lines = (ROOT / "README.md").read_text(encoding="utf-8").splitlines()
    assert len(lines) <= 150, f"README.md has {len(lines)} lines; move detail into docs/"


def test_readme_and_docs_links_resolve_inside_the_repository():
    files = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
    bad = {str(f.relative_to(ROOT)): broken_links(f) for f in files}
    assert not {k: v for k, v in bad.items() if v}, bad


def test_the_link_check_catches_missing_and_outside_targets(tmp_path):
    repo = tmp_path / "repo"
    (repo / "docs").mkdir(parents=True)
    (repo / "docs" / "a.md").write_text("x")
    (tmp_path / "shared").mkdir()
    (tmp_path / "shared" / "DESIGN.md").write_text("exists, but outside the repository")
    page = repo / "README.md"
    page.write_text(
        "[ok](docs/a.md#part) [web](https://example.org) [gone](docs/b.md) "
        "![img](docs/missing.png) [out](../shared/DESIGN.md) [anchor](#top)"
    )
    assert broken_links(page, repo) == ["docs/b.md", "docs/missing.png", "../shared/DESIGN.md"]


def test_ci_runs_the_readmes_test_command():
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    command = re.search(r"# the tests\n.*&& (python -m pytest[^\n]*)", readme).group(1)
    ci = (ROOT / ".ci" / "run").read_text(encoding="utf-8")
    assert command in ci.splitlines(), f"{command!r} is not a line of .ci/run"
