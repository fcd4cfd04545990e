"""The library's packages depend only downward, read from the code's own import statements
(at module top or inside functions alike), so a drawing of the modules tells the truth.

The ground floor is the run itself: errors, config schemas, storage, the run config and the
Ray runtime, console, tracking, checkpoints, metrics. ``rayrec.config`` composes every
package's own schema module (``<package>/config.py``), and those import nothing but other
schemas and ``rayrec.configbase``: that is why any floor may read any ``*.config`` module.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "platform" / "rayrec"

GROUND = {"__init__", "errors", "configbase", "storage", "ratelimit", "figures", "metrics", "console",
          "tracking", "checkpoints", "config", "runtime", "stages"}
FLOORS = [  # bottom to top; a package may import its own floor's packages only where listed below
    {"data"},
    {"models"},
    {"raytrain"},
    {"retrieval"},
    {"seqrec"},
    {"itemtower", "generative"},
    {"train", "evaluation", "tuning"},
    {"explore", "report"},
    {"serving"},
    {"recipes"},
    {"cli"},
]
FLOOR = {name: i + 1 for i, names in enumerate(FLOORS) for name in names} | {g: 0 for g in GROUND}


def _imports(path: Path) -> list[tuple[int, str]]:
    """(line, imported rayrec module) for every import in the file, top level or not."""
    rel = path.relative_to(PACKAGE.parent).with_suffix("").parts
    out = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom):
            if node.level:  # relative: resolve against the file's package
                base = list(rel[: len(rel) - node.level])
                mod = ".".join(base + ([node.module] if node.module else []))
            else:
                mod = node.module or ""
            names = [mod] if node.module else [f"{mod}.{a.name}" for a in node.names]
            out += [(node.lineno, n) for n in names if n.startswith("rayrec.")]
        elif isinstance(node, ast.Import):
            out += [(node.lineno, a.name) for a in node.names if a.name.startswith("rayrec.")]
    return out


def _room(parts: tuple[str, ...] | list[str]) -> str:
    return parts[1].removesuffix(".py") if len(parts) > 1 else "__init__"


def upward_imports() -> list[str]:
    bad = []
    for path in sorted(PACKAGE.rglob("*.py")):
        rel = path.relative_to(PACKAGE.parent).parts
        me = _room(rel)
        schema = len(rel) == 3 and rel[-1] == "config.py"  # a package's schema module
        for line, mod in _imports(path):
            parts = mod.split(".")
            them = _room(parts)
            if them == me or (len(parts) > 2 and parts[2] == "config"):
                continue  # inside one package; any package's schema module
            if schema and them != "configbase":
                bad.append(f"{'/'.join(rel)}:{line} schema module imports {mod}")
            elif them not in FLOOR or me not in FLOOR:
                bad.append(f"{'/'.join(rel)}:{line} {me} -> {them}: a package the floors do not list")
            elif FLOOR[them] > FLOOR[me] or (FLOOR[them] == FLOOR[me] and FLOOR[me] > 0):
                bad.append(f"{'/'.join(rel)}:{line} {me} (floor {FLOOR[me]}) imports {mod} (floor {FLOOR[them]})")
    return bad


def test_packages_import_only_downward():
    bad = upward_imports()
    assert not bad, "imports that run back up:\n" + "\n".join(bad)


@pytest.mark.parametrize("package, forbidden", [
    ("serving", "train"), ("evaluation", "train"), ("seqrec", "train"), ("explore", "serving"),
])
def test_named_boundaries(package, forbidden):
    """The issue's boundaries, spelled out: what a reader greps for."""
    hits = [f"{p.name}:{line} {m}" for p in (PACKAGE / package).rglob("*.py") for line, m in _imports(p)
            if m == f"rayrec.{forbidden}" or m.startswith(f"rayrec.{forbidden}.")]
    assert not hits, hits


def test_every_package_has_a_floor():
    rooms = {p.name.removesuffix(".py") for p in PACKAGE.iterdir()
             if (p.suffix == ".py" or (p.is_dir() and (p / "__init__.py").exists()))}
    assert rooms <= set(FLOOR), f"place these on a floor: {sorted(rooms - set(FLOOR))}"
