"""The code's layout (docs/architecture.md): folders by job, imports only downward, no circles, small folders."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
# Lowest first. A module may import from its own layer or any lower one, never from a higher one. The stream and the
# refit share a layer and never import each other.
LAYERS = [
    ["fruits.errors", "fruits.config", "fruits.timing"],
    ["fruits.home"],
    ["fruits.spark"],
    ["fruits.model"],
    ["fruits.landing"],
    ["fruits.streaming", "fruits.batch"],
    ["fruits.reports"],
    ["fruits.web"],
    ["fruits.cli"],
]


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[0] in ("streaming", "batch"):
        parts.insert(0, "fruits")
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _sources() -> list[Path]:
    return sorted([*ROOT.glob("fruits/**/*.py"), *ROOT.glob("streaming/*.py"), *ROOT.glob("batch/*.py")])


def _layer(module: str) -> tuple[int, str] | None:
    for rank, prefixes in enumerate(LAYERS):
        for prefix in prefixes:
            if module == prefix or module.startswith(prefix + "."):
                return rank, prefix
    return None


def _imports(path: Path) -> set[str]:
    """Every fruits module ``path`` imports, at the top or inside a function."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("fruits"):
            found.add(node.module)
            found.update(f"{node.module}.{alias.name}" for alias in node.names if alias.name.islower())
        elif isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names if alias.name.startswith("fruits"))
    known = {_module_name(p) for p in _sources()}
    return {name for name in found if name in known}


@pytest.mark.fast
def test_every_module_belongs_to_a_layer() -> None:
    strays = [_module_name(p) for p in _sources() if _layer(_module_name(p)) is None and _module_name(p) != "fruits"]
    assert strays == []


@pytest.mark.fast
def test_imports_point_only_downward() -> None:
    upward = []
    for path in _sources():
        me = _module_name(path)
        mine = _layer(me)
        for target in _imports(path):
            theirs = _layer(target)
            if mine and theirs and (theirs[0] > mine[0] or (theirs[0] == mine[0] and theirs[1] != mine[1] and mine[0] != 0)):
                upward.append(f"{me} -> {target}")
    assert upward == []


@pytest.mark.fast
def test_no_import_circles() -> None:
    graph = {_module_name(p): _imports(p) for p in _sources()}

    def reaches(start: str, goal: str) -> bool:
        seen, todo = set(), [start]
        while todo:
            node = todo.pop()
            for nxt in graph.get(node, ()):
                if nxt == goal:
                    return True
                if nxt not in seen:
                    seen.add(nxt)
                    todo.append(nxt)
        return False

    circles = sorted({tuple(sorted((a, b))) for a, targets in graph.items() for b in targets if b != a and reaches(b, a)})
    assert circles == []


@pytest.mark.fast
def test_no_folder_holds_more_than_twelve_modules() -> None:
    folders = [ROOT / "streaming", ROOT / "batch", *(p for p in (ROOT / "fruits").iterdir() if (p / "__init__.py").is_file())]
    crowded = {f.name: n for f in folders if (n := len([m for m in f.glob("*.py") if m.name != "__init__.py"])) > 12}
    assert crowded == {}


@pytest.mark.fast
def test_commits_since_the_redesign_have_short_subjects_and_a_body() -> None:
    """A subject of at most 72 characters that ``git log --oneline`` shows whole, and a body that says why."""
    import shutil
    import subprocess

    if shutil.which("git") is None or not (ROOT / ".git").exists():
        pytest.skip("not a git checkout")
    first = "2c4fd10"  # "Move modules into folders by job": the first commit held to this rule
    log = subprocess.run(["git", "-C", str(ROOT), "log", "--format=%h%x00%s%x00%b%x1e", f"{first}~1..HEAD"],
                         capture_output=True, text=True)
    if log.returncode != 0:
        pytest.skip(f"history before {first} is not in this clone")
    commits = [entry.strip("\n").split("\0") for entry in log.stdout.split("\x1e") if entry.strip()]
    long_subjects = [f"{sha} {subject}" for sha, subject, _ in commits if len(subject) > 72]
    no_body = [f"{sha} {subject}" for sha, subject, body in commits if not body.strip() and not subject.startswith("Merge")]
    assert long_subjects == [] and no_body == []
