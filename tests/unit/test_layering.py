"""The floors of the project (docs/architecture.md): each package imports only the floors below it,
no two service packages import each other, and neither packages nor modules import in a cycle.

Every ``import`` of every .py file counts, at module level or inside a function (a lazy import is
an arrow all the same), and so do the subcommand modules that ``paperec.cli.COMMANDS`` names
(the CLI imports them by name). The checker is plain functions over an import graph, so the last
test can show it catches an upward arrow on a graph made up for the purpose.

Floors (a module's floor is that of the longest prefix below that names it):
1. base; 2. schemas (base only) and model (base, schemas); 3. the services: learner, streams,
actor_service, simulator, rollout; 4. the application: paperec (with ``paperec.evaluation``, which trains
learner's Trainer on the simulator: it puts two services together), benchmarks, tests.
"""

from __future__ import annotations

import ast
import itertools
from collections import defaultdict
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
PACKAGES: tuple[str, ...] = ("base", "schemas", "model", "learner", "streams", "actor_service")
PACKAGES += ("simulator", "rollout", "paperec", "benchmarks", "tests")

FLOORS: dict[str, int] = {
    "base": 1,
    "schemas": 2,
    "model": 2,
    "learner": 3,
    "streams": 3,
    "actor_service": 3,
    "simulator": 3,
    "rollout": 3,
    "paperec": 4,
    "benchmarks": 4,
    "tests": 4,
}
SERVICE_FLOOR = 3
APPLICATION_FLOOR = 4
# Floor 2 is two packages, one on the other: model imports schemas (the snapshot header), never back.
SAME_FLOOR_ALLOWED = {("model", "schemas")}


@dataclass(frozen=True)
class Arrow:
    """``source`` imports ``target`` (both dotted module names of the project) at ``line``."""

    source: str
    target: str
    line: int


def module_name(path: Path, root: Path) -> str:
    parts = list(path.relative_to(root).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def project_modules(root: Path, packages: Iterable[str] = PACKAGES) -> dict[str, Path]:
    """Every module of the project's packages, by dotted name."""
    return {
        module_name(path, root): path
        for package in packages
        for path in sorted((root / package).rglob("*.py"))
    }


def resolve(name: str, modules: Mapping[str, object]) -> str | None:
    """The project module ``name`` refers to: itself, or the longest prefix that is a module."""
    parts = name.split(".")
    for n in range(len(parts), 0, -1):
        candidate = ".".join(parts[:n])
        if candidate in modules:
            return candidate
    return None


def arrows_of(name: str, source: str, modules: Mapping[str, object], is_package: bool) -> list[Arrow]:
    """Every import in ``source`` (the module ``name``) of another project module."""
    out: list[Arrow] = []
    package = name if is_package else name.rpartition(".")[0]
    for node in ast.walk(ast.parse(source)):
        targets: list[str] = []
        if not isinstance(node, ast.Import | ast.ImportFrom):
            continue
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        else:
            base = node.module or ""
            if node.level:  # relative: from . import x, from ..a import b
                anchor = package.split(".")[: len(package.split(".")) - (node.level - 1)]
                base = ".".join([*anchor, base] if base else anchor)
            # ``from pkg import mod`` imports the module pkg.mod when there is one
            targets = [
                f"{base}.{alias.name}" if f"{base}.{alias.name}" in modules else base for alias in node.names
            ]
        for target in targets:
            resolved = resolve(target, modules)
            if resolved is not None and resolved != name:
                out.append(Arrow(name, resolved, node.lineno))
    return out


def cli_arrows(modules: Mapping[str, object]) -> list[Arrow]:
    """``paperec.cli`` -> the module of each subcommand in its ``COMMANDS`` table (read with ast,
    so the test does not import the CLI)."""
    tree = ast.parse((ROOT / "paperec" / "cli.py").read_text())
    for node in tree.body:
        if isinstance(node, ast.AnnAssign | ast.Assign):
            target = node.target if isinstance(node, ast.AnnAssign) else node.targets[0]
            if isinstance(target, ast.Name) and target.id == "COMMANDS" and node.value is not None:
                table = ast.literal_eval(node.value)
                return [
                    Arrow("paperec.cli", resolve(m, modules) or m, node.lineno) for m, _ in table.values()
                ]
    raise AssertionError("paperec/cli.py has no COMMANDS table")


def import_graph(root: Path = ROOT) -> list[Arrow]:
    modules = project_modules(root)
    arrows: list[Arrow] = []
    for name, path in modules.items():
        arrows += arrows_of(name, path.read_text(), modules, path.name == "__init__.py")
    return arrows + cli_arrows(modules)


def unit_of(module: str) -> str:
    """The floor entry a module belongs to: the longest prefix in FLOORS."""
    unit = resolve(module, FLOORS)
    assert unit is not None, f"{module} is on no floor: add its package to FLOORS"
    return unit


def floor_violations(arrows: Iterable[Arrow]) -> list[str]:
    """Arrows that point up a floor, or sideways (between two services; schemas -> model)."""
    out = set()
    for a in arrows:
        src, dst = unit_of(a.source), unit_of(a.target)
        if src == dst or FLOORS[src] == APPLICATION_FLOOR or FLOORS[dst] < FLOORS[src]:
            continue
        if FLOORS[dst] == FLOORS[src] and (src, dst) in SAME_FLOOR_ALLOWED:
            continue
        if FLOORS[dst] > FLOORS[src]:
            why = "up a floor"
        else:
            why = "between two services" if FLOORS[src] == SERVICE_FLOOR else "sideways"
        out.add(f"{a.source}:{a.line} imports {a.target} ({why}: {src} {FLOORS[src]} -> {dst} {FLOORS[dst]})")
    return sorted(out)


def cycles(edges: Mapping[str, set[str]]) -> list[list[str]]:
    """The strongly connected components of more than one node (Tarjan), each sorted."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    out: list[list[str]] = []
    counter = itertools.count()

    def visit(v: str) -> None:
        index[v] = low[v] = next(counter)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(edges.get(v, ())):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                out.append(sorted(component))

    for v in sorted(edges):
        if v not in index:
            visit(v)
    return sorted(out)


def module_cycles(arrows: Iterable[Arrow]) -> list[list[str]]:
    edges: dict[str, set[str]] = defaultdict(set)
    for a in arrows:
        edges[a.source].add(a.target)
    return cycles(edges)


def package_cycles(arrows: Iterable[Arrow]) -> list[list[str]]:
    edges: dict[str, set[str]] = defaultdict(set)
    for a in arrows:
        src, dst = unit_of(a.source), unit_of(a.target)
        if src != dst:
            edges[src].add(dst)
    return cycles(edges)


# ---------------------------------------------------------------- the project


def test_every_package_is_on_a_floor() -> None:
    assert set(PACKAGES) <= set(FLOORS)
    found = {p.parent.name for p in ROOT.glob("*/__init__.py")} | {"tests"}
    assert found <= set(FLOORS), f"packages on no floor: {sorted(found - set(FLOORS))}"


def test_no_import_points_up_or_sideways() -> None:
    violations = floor_violations(import_graph())
    assert not violations, "imports against the floors:\n" + "\n".join(violations)


def test_no_package_cycles() -> None:
    found = package_cycles(import_graph())
    assert not found, f"package cycles: {found}"


def test_no_module_cycles() -> None:
    found = module_cycles(import_graph())
    assert not found, "module cycles:\n" + "\n".join(" <-> ".join(c) for c in found)


def test_the_cli_table_names_real_modules() -> None:
    modules = project_modules(ROOT)
    assert all(a.target in modules for a in cli_arrows(modules))


# ---------------------------------------------------------------- the checker itself


def test_the_checker_reports_an_upward_import_and_a_cycle(tmp_path: Path) -> None:
    """A synthetic tree: base imports paperec (up), learner imports streams (sideways), and two
    streams modules import each other; each is reported, and nothing else is."""
    files = {
        "base/__init__.py": "",
        "base/settings.py": "def f():\n    from paperec.cli import main\n",
        "learner/__init__.py": "",
        "learner/service.py": "from base import settings\nimport streams.join\n",
        "streams/__init__.py": "",
        "streams/join.py": "from . import link\n",
        "streams/link.py": "from streams.join import x\n",
        "paperec/__init__.py": "",
        "paperec/cli.py": "import learner.service\nfrom base.settings import Settings\n",
    }
    for rel, text in files.items():
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / rel).write_text(text)
    modules = project_modules(tmp_path, ("base", "learner", "streams", "paperec"))
    arrows = [
        a
        for name, path in modules.items()
        for a in arrows_of(name, path.read_text(), modules, path.name == "__init__.py")
    ]
    assert Arrow("streams.join", "streams.link", 1) in arrows  # relative import resolved
    assert Arrow("learner.service", "base.settings", 1) in arrows  # ``from base import settings``
    assert floor_violations(arrows) == [
        "base.settings:2 imports paperec.cli (up a floor: base 1 -> paperec 4)",
        "learner.service:2 imports streams.join (between two services: learner 3 -> streams 3)",
    ]
    assert module_cycles(arrows) == [
        ["base.settings", "learner.service", "paperec.cli"],  # only through the upward import
        ["streams.join", "streams.link"],
    ]
    # base -> paperec -> learner -> base: a package cycle, made only by the upward import
    assert package_cycles(arrows) == [["base", "learner", "paperec"]]
    assert package_cycles([a for a in arrows if a.source != "base.settings"]) == []
