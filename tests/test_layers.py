"""The floors of ARCHITECTURE.md: a module imports only from its own floor or
below, no two modules import each other (directly or round a circle), and the
pure cores never touch rings, tables, zmq or the worker base.

Every import counts, the ones inside functions included: a lazy import is
still a dependency. Imports are read with `ast`, nothing is imported.
"""
from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("shm", "pipeline", "models", "workers")

# the plan in pipeline/ (floor 2); the rest of pipeline/ is the commands (floor 5)
PLAN = {"config", "topology", "symbols", "bus", "metrics", "errors", "storage", "clock", "logs", "collector",
        "journal"}

# pure cores: numpy in, numpy out, a clock passed in; no rings, tables, zmq or worker loop
CORES = ("workers.bars", "workers.execution.portfolio", "workers.execution.desk",
         "workers.execution.broker",
         "workers.strategy.signals", "workers.strategy.arbitrage", "workers.execution.impact",
         "workers.execution.venue_rules",
         "workers.execution.orders", "workers.execution.risk", "workers.execution.fx",
         "workers.execution.hedges", "workers.execution.route_health", "workers.strategy.routes",
         "workers.strategy.arb_strategy")
NOT_IN_CORES = ("zmq", "shm.ring", "shm.table", "shm.segment", "shm.doorbell", "pipeline.bus",
                "workers.base")


def floor_of(module: str) -> int:
    parts = module.split(".")
    top = parts[0]
    if top == "shm":
        return 1
    if top == "pipeline":
        return 2 if len(parts) == 1 or parts[1] in PLAN else 5
    if top == "models":
        return 3
    if top == "workers":
        return 4
    raise ValueError(f"{module} is on no floor")


def modules(root: Path, packages=PACKAGES) -> dict[str, Path]:
    """Dotted module name -> file, for every .py file of the packages."""
    out = {}
    for pkg in packages:
        for path in sorted((root / pkg).rglob("*.py")):
            rel = path.relative_to(root).with_suffix("")
            parts = list(rel.parts)
            if parts[-1] == "__init__":
                parts.pop()
            out[".".join(parts)] = path
    return out


def imports(module: str, path: Path, known: dict[str, Path]) -> list[tuple[str, int]]:
    """(imported module of ours, line) for every import statement in the file, at any
    depth; ``from a import b`` names the module a.b when b is one, else a."""
    is_pkg = path.name == "__init__.py"
    package = module if is_pkg else module.rpartition(".")[0]
    found = []

    def ours(name: str) -> str | None:
        while name and name not in known:
            name = name.rpartition(".")[0]
        return name or None

    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name.split(".")[0] in {m.split(".")[0] for m in known} or alias.name == "zmq" \
                        or alias.name.startswith("zmq."):
                    found.append((ours(alias.name) or alias.name, node.lineno))
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[:len(base) - (node.level - 1)] if node.level > 1 else base
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            if target.split(".")[0] == "zmq":
                found.append((target, node.lineno))
                continue
            if ours(target) is None:
                continue
            for alias in node.names:
                sub = f"{target}.{alias.name}"
                found.append((sub if sub in known else ours(target), node.lineno))
    return sorted({(m, line) for m, line in found if m != module}, key=lambda x: (x[1], x[0]))


def _rel(path: Path) -> str:
    return str(path.relative_to(ROOT)) if path.is_relative_to(ROOT) else str(path)


def upward_imports(known: dict[str, Path]) -> list[str]:
    """'file:line (floor a) imports module (file, floor b)' for every b > a."""
    bad = []
    for mod, path in known.items():
        for target, line in imports(mod, path, known):
            if target in known and floor_of(target) > floor_of(mod):
                bad.append(f"{_rel(path)}:{line} (floor {floor_of(mod)}) imports {target} "
                           f"({_rel(known[target])}, floor {floor_of(target)})")
    return bad


def circles(known: dict[str, Path]) -> list[list[str]]:
    """Strongly connected groups of more than one module (Tarjan)."""
    graph = {m: sorted({t for t, _ in imports(m, p, known) if t in known}) for m, p in known.items()}
    index, low, stack, on, groups = {}, {}, [], set(), []
    counter = [0]

    def visit(v):
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on.add(v)
        for w in graph[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            group = []
            while True:
                w = stack.pop()
                on.discard(w)
                group.append(w)
                if w == v:
                    break
            if len(group) > 1:
                groups.append(sorted(group))

    for v in graph:
        if v not in index:
            visit(v)
    return groups


def _describe(group: list[str], known: dict[str, Path]) -> str:
    return " <-> ".join(_rel(known[m]) for m in group)


# -- the checker, on a tree made to break the rules -------------------------------------------
def test_checker_finds_an_upward_import_a_circle_and_a_lazy_import(tmp_path):
    for pkg in PACKAGES:
        (tmp_path / pkg).mkdir()
        (tmp_path / pkg / "__init__.py").write_text("")
    (tmp_path / "shm" / "rec.py").write_text("def f():\n    from workers import feed\n")   # lazy, upward
    (tmp_path / "workers" / "feed.py").write_text("from . import model\n")
    (tmp_path / "workers" / "model.py").write_text("import workers.feed\n")              # a circle
    (tmp_path / "pipeline" / "config.py").write_text("from .storage import x\n")          # same floor
    (tmp_path / "pipeline" / "storage.py").write_text("x = 1\n")
    known = modules(tmp_path)
    bad = upward_imports(known)
    assert len(bad) == 1 and "rec.py:2 (floor 1) imports workers.feed" in bad[0] and "floor 4" in bad[0]
    assert circles(known) == [["workers.feed", "workers.model"]]


def test_floors():
    assert floor_of("shm.ring") == 1
    assert floor_of("pipeline.config") == floor_of("pipeline.clock") == 2
    assert floor_of("models.ta") == 3
    assert floor_of("workers.execution.worker") == 4
    assert floor_of("pipeline.cli") == floor_of("pipeline.supervisor") == 5


# -- the project --------------------------------------------------------------------------------
def test_no_import_goes_up_a_floor():
    known = modules(ROOT)
    assert len(known) > 40                    # the walk found the project
    bad = upward_imports(known)
    assert not bad, "imports that go up a floor:\n" + "\n".join(bad)


def test_no_import_circles():
    known = modules(ROOT)
    groups = circles(known)
    assert not groups, "import circles:\n" + "\n".join(_describe(g, known) for g in groups)


def test_cores_stay_pure():
    known = modules(ROOT)
    bad = []
    for core in CORES:
        assert core in known, f"core {core} is gone: update CORES"
        for target, line in imports(core, known[core], known):
            if any(target == n or target.startswith(n + ".") for n in NOT_IN_CORES):
                bad.append(f"{_rel(known[core])}:{line} imports {target}")
    assert not bad, "a pure core touches rings, zmq or the worker loop:\n" + "\n".join(bad)
