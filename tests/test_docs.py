"""The documentation lives in the repository and the code points into it: every ``docs/...``
reference in the code, the README and the docs themselves resolves to a file and heading, no
reference to documents outside the repository remains, and the README's layout section lists the
package as it is."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DOCS = ROOT / "docs"
CODE_REF = re.compile(r"docs/([\w./-]+?\.md)(?:#([\w-]+))?")
MD_LINK = re.compile(r"\]\(([^)\s#]*)(?:#([^)\s]+))?\)")
OUTSIDE_SPECS = ("STORAGE_AND_" + "QUERY", "PROTOCOL" + ".md")


def tracked(*patterns: str) -> list[Path]:
    out = subprocess.run(["git", "ls-files", "--cached", "--others", "--exclude-standard", *patterns],
                         cwd=ROOT, capture_output=True, text=True, check=True).stdout
    return [ROOT / p for p in out.split() if (ROOT / p).is_file()]


def slug(heading: str) -> str:
    """GitHub's anchor for a heading."""
    text = re.sub(r"[^\w\- ]", "", heading.strip().lower())
    return text.replace(" ", "-")


def anchors(path: Path) -> set[str]:
    text = re.sub(r"```.*?```", "", path.read_text(), flags=re.S)
    return {slug(m.group(1)) for m in re.finditer(r"^#{1,6}\s+(.*)$", text, re.M)}


def check(target: Path, anchor: str | None, where: str) -> list[str]:
    if not target.is_file():
        return [f"{where}: {target.relative_to(ROOT)} does not exist"]
    if anchor and anchor not in anchors(target):
        return [f"{where}: no heading #{anchor} in {target.relative_to(ROOT)}"]
    return []


def test_slug_matches_github():
    assert slug("`$match` patterns") == "match-patterns"
    assert slug("Who owns each table") == "who-owns-each-table"
    assert slug("Stores written by upstream mosaicod") == "stores-written-by-upstream-mosaicod"


def test_docs_references_in_code_and_readme_resolve():
    problems, seen = [], 0
    for path in tracked("*.py", "README.md", "*.toml", "Dockerfile"):
        for n, line in enumerate(path.read_text(errors="replace").splitlines(), 1):
            for m in CODE_REF.finditer(line):
                seen += 1
                problems += check(DOCS / m.group(1), m.group(2), f"{path.relative_to(ROOT)}:{n}")
    assert seen >= 20  # the code does point into docs/
    assert problems == []


def test_links_between_docs_resolve():
    problems = []
    for page in sorted(DOCS.glob("*.md")):
        for n, line in enumerate(page.read_text().splitlines(), 1):
            for m in MD_LINK.finditer(line):
                target, anchor = m.group(1), m.group(2)
                if target.startswith(("http://", "https://")):
                    continue
                path = (page.parent / target).resolve() if target else page
                problems += check(path, anchor, f"docs/{page.name}:{n}")
    assert problems == []


def test_no_reference_to_documents_outside_the_repository():
    hits = [f"{p.relative_to(ROOT)}:{n}" for p in tracked() if p.suffix in (".py", ".md", ".toml", ".mako", "")
            for n, line in enumerate(p.read_text(errors="replace").splitlines(), 1)
            if any(name in line for name in OUTSIDE_SPECS)]
    assert hits == []


def test_readme_layout_matches_the_package():
    readme = (ROOT / "README.md").read_text()
    section = readme[readme.index("## Layout of the code"):]
    block = section[section.index("```") + 3:]
    block = block[:block.index("```")]
    listed = set(re.findall(r"[\w.]+\.py|[\w]+/", block))
    package = ROOT / "mosaicod"
    actual = {p.name for p in package.glob("*.py") if p.name not in ("__init__.py", "__main__.py")}
    actual |= {p.name + "/" for p in package.iterdir() if (p / "__init__.py").exists()}
    top = {"migrations/", "docs/", "tests/", "bench/"}
    assert actual - listed == set(), "modules missing from the README layout"
    stale = {n for n in listed - actual - top - {"mosaicod/"}
             if not any(package.rglob(n.rstrip("/"))) and not (ROOT / n.rstrip("/")).exists()}
    assert stale == set(), "README layout names what does not exist"
    assert all((ROOT / d).is_dir() for d in top)


def test_files_named_in_docs_exist():
    """`catalog/repo.py`, `mosaicod/store/chunks.py`, `tests/test_x.py`: every file a page names."""
    missing = []
    for page in sorted(DOCS.glob("*.md")):
        for n, line in enumerate(page.read_text().splitlines(), 1):
            for name in re.findall(r"`([\w/]+\.py)`", line):
                candidates = [ROOT / name, ROOT / "mosaicod" / name]
                if "/" not in name:
                    candidates += list((ROOT / "mosaicod").rglob(name))
                if not any(c.is_file() for c in candidates):
                    missing.append(f"docs/{page.name}:{n}: {name}")
    assert missing == []
