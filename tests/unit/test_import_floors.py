"""The house's import rules, checked against the code (docs/design.md, "Floors"):

- no circle: no modules of `cni/` and `ipam/` import each other in a loop;
- one direction: a module imports only modules of its own floor or a lower one (the floors are
  the table in docs/design.md, so the picture cannot drift from the imports);
- a deliberate lazy import says so (`# lazy: <why>`).

Every import counts: at the top, inside functions, under `TYPE_CHECKING`. A `from pkg import name`
counts as an import of `pkg.name` when that is a module of ours, else of `pkg`.
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
PACKAGES = ("cni", "ipam")


def modules(root: Path = ROOT) -> dict[str, tuple[Path, bool]]:
    """module name -> (file, is a package)"""
    out = {}
    for pkg in PACKAGES:
        for path in sorted((root / pkg).rglob("*.py")):
            parts = list(path.relative_to(root).with_suffix("").parts)
            is_pkg = parts[-1] == "__init__"
            if is_pkg:
                parts.pop()
            out[".".join(parts)] = (path, is_pkg)
    return out


def _ours(name: str, known) -> str | None:
    while name and name not in known:
        name = name.rpartition(".")[0]
    return name or None


def imports(mods: dict[str, tuple[Path, bool]]) -> dict[str, dict[str, int]]:
    """module -> {module of ours it imports: the first line that does}"""
    graph: dict[str, dict[str, int]] = {}
    for name, (path, is_pkg) in mods.items():
        out = graph.setdefault(name, {})
        here = name if is_pkg else name.rpartition(".")[0]
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    anchor = here
                    for _ in range(node.level - 1):
                        anchor = anchor.rpartition(".")[0]
                    base = f"{anchor}.{base}" if base else anchor
                targets = [f"{base}.{a.name}" for a in node.names] + [base]
            else:
                continue
            for target in targets:
                ours = _ours(target, mods)
                if ours and ours != name:
                    out.setdefault(ours, node.lineno)
    return graph


def circles(graph: dict[str, dict[str, int]]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan, iterative)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []
    counter = 0
    for start in sorted(graph):
        if start in index:
            continue
        work = [(start, iter(sorted(graph[start])))]
        index[start] = low[start] = counter
        counter += 1
        stack.append(start)
        on_stack.add(start)
        while work:
            v, successors = work[-1]
            for w in successors:
                if w not in index:
                    index[w] = low[w] = counter
                    counter += 1
                    stack.append(w)
                    on_stack.add(w)
                    work.append((w, iter(sorted(graph.get(w, ())))))
                    break
                if w in on_stack:
                    low[v] = min(low[v], index[w])
            else:
                work.pop()
                if work:
                    low[work[-1][0]] = min(low[work[-1][0]], low[v])
                if low[v] == index[v]:
                    component = []
                    while True:
                        w = stack.pop()
                        on_stack.discard(w)
                        component.append(w)
                        if w == v:
                            break
                    if len(component) > 1:
                        found.append(sorted(component))
    return found


def floors(design: Path = ROOT / "docs" / "design.md") -> dict[str, int]:
    """The floors table of docs/design.md: path prefix (a folder ending in / or a file) -> floor."""
    text = design.read_text()
    block = re.search(r"```floors\n(.*?)```", text, re.S)
    assert block, "docs/design.md has no ```floors table"
    out: dict[str, int] = {}
    for line in block.group(1).splitlines():
        m = re.match(r"\s*(\d+)\s+(.*)", line)
        if not m:
            continue
        for token in m.group(2).split():
            if not token.endswith(("/", ".py")):
                break               # the description starts
            out[token] = int(m.group(1))
    return out


def floor_of(path: Path, table: dict[str, int], root: Path = ROOT) -> int | None:
    rel = path.relative_to(root).as_posix()
    best = None
    for prefix, floor in table.items():
        if rel == prefix or (prefix.endswith("/") and rel.startswith(prefix)):
            if best is None or len(prefix) > len(best[0]):
                best = (prefix, floor)
    return None if best is None else best[1]


def upward(mods, graph, table, root: Path = ROOT) -> list[str]:
    """Imports that run from a lower floor to a higher one, and modules no floor holds."""
    problems = []
    for name, (path, _) in sorted(mods.items()):
        mine = floor_of(path, table, root)
        if mine is None:
            problems.append(f"{path.relative_to(root)}: on no floor of docs/design.md")
            continue
        for target, line in sorted(graph[name].items()):
            theirs = floor_of(mods[target][0], table, root)
            if theirs is not None and theirs > mine:
                problems.append(f"{path.relative_to(root)}:{line} ({name}, floor {mine}) imports {target} "
                                f"(floor {theirs})")
    return problems


def unmarked_lazy_imports(mods, root: Path = ROOT) -> list[str]:
    """Imports inside a function without `# lazy:` on their line or in the comment block right
    above the function's run of imports."""
    problems = []
    for name, (path, _) in sorted(mods.items()):
        source = path.read_text()
        lines = source.splitlines()
        for func in ast.walk(ast.parse(source)):
            if not isinstance(func, (ast.FunctionDef, ast.AsyncFunctionDef)):
                continue
            for node in ast.walk(func):
                if not isinstance(node, (ast.Import, ast.ImportFrom)):
                    continue
                if not _marked(lines, node.lineno - 1):
                    problems.append(f"{path.relative_to(root)}:{node.lineno}: {lines[node.lineno - 1].strip()}")
    return problems


def _marked(lines: list[str], i: int) -> bool:
    if "# lazy:" in lines[i]:
        return True
    j = i - 1                       # up through the run of imports (blank lines included)
    while j >= 0 and (not lines[j].strip() or re.match(r"\s*(from \S+ )?import ", lines[j])
                      or lines[j].rstrip().endswith((",", "(")) or lines[j].strip().startswith(")")):
        if "# lazy:" in lines[j]:
            return True
        j -= 1
    while j >= 0 and lines[j].strip().startswith("#"):   # the comment block right above
        if "# lazy:" in lines[j]:
            return True
        j -= 1
    return False


# the tree ---------------------------------------------------------------------------------------

def test_no_import_circles():
    found = circles(imports(modules()))
    assert found == [], "import circles: " + "; ".join(" <-> ".join(c) for c in found)


def test_every_import_runs_down_the_floors_of_the_design():
    mods = modules()
    assert upward(mods, imports(mods), floors()) == []


def test_the_contract_imports_nothing_above_it():
    mods = modules()
    graph = imports(mods)
    for name in mods:
        if name.startswith("cni.spec"):
            assert all(t.startswith("cni.spec") or t in ("cni", "cni.record") for t in graph[name]), name


def test_every_lazy_import_says_why():
    assert unmarked_lazy_imports(modules()) == []


# the checks themselves, on a small tree with planted faults ------------------------------------

def _tree(tmp_path: Path, files: dict[str, str], table: str) -> Path:
    for rel, text in files.items():
        p = tmp_path / rel
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_text(text)
    (tmp_path / "docs").mkdir(exist_ok=True)
    (tmp_path / "docs" / "design.md").write_text(f"# x\n\n```floors\n{table}```\n")
    return tmp_path


TABLE = "2  cni/top/    above\n1  cni/low/ ipam/   below\n0  cni/__init__.py   nothing\n"


def test_a_circle_through_an_import_inside_a_function_is_found(tmp_path):
    root = _tree(tmp_path, {
        "cni/__init__.py": "",
        "cni/low/__init__.py": "",
        "cni/low/a.py": "from cni.low import b\n",
        "cni/low/b.py": "def f():\n    from cni.low.a import x  # lazy: test\n",
        "ipam/__init__.py": "",
    }, TABLE)
    assert circles(imports(modules(root))) == [["cni.low.a", "cni.low.b"]]


def test_a_circle_under_type_checking_and_relative_imports_are_found(tmp_path):
    root = _tree(tmp_path, {
        "cni/__init__.py": "",
        "cni/low/__init__.py": "",
        "cni/low/a.py": "TYPE_CHECKING = False\nif TYPE_CHECKING:\n    from .b import y\n",
        "cni/low/b.py": "from . import a\n",
        "ipam/__init__.py": "",
    }, TABLE)
    assert circles(imports(modules(root))) == [["cni.low.a", "cni.low.b"]]


def test_an_import_up_a_floor_and_a_module_on_no_floor_are_reported(tmp_path):
    root = _tree(tmp_path, {
        "cni/__init__.py": "",
        "cni/top/__init__.py": "",
        "cni/top/t.py": "from cni.low import l\n",
        "cni/low/__init__.py": "",
        "cni/low/l.py": "def f():\n    import cni.top.t  # lazy: test\n",
        "cni/stray.py": "",
        "ipam/__init__.py": "",
    }, TABLE)
    mods = modules(root)
    problems = upward(mods, imports(mods), floors(root / "docs" / "design.md"), root)
    assert problems == ["cni/low/l.py:2 (cni.low.l, floor 1) imports cni.top.t (floor 2)",
                        "cni/stray.py: on no floor of docs/design.md"]


def test_an_unmarked_import_inside_a_function_is_reported(tmp_path):
    root = _tree(tmp_path, {
        "cni/__init__.py": "",
        "cni/low/__init__.py": "",
        "cni/low/m.py": ("def marked():\n    # lazy: only this command needs it\n    import json\n"
                         "    import os\n\n"
                         "def inline():\n    import json  # lazy: same\n\n"
                         "def unmarked():\n    x = 1\n    import json\n"),
        "ipam/__init__.py": "",
    }, TABLE)
    assert unmarked_lazy_imports(modules(root), root) == ["cni/low/m.py:11: import json"]
