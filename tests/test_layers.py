"""The package map of docs/design.md holds: every import inside kge points down the stack.

A module may import from its own package and from packages below it (lazy imports inside functions
count too); an upward import is how the flat layout used to tangle the stages.
"""

from __future__ import annotations

import ast
from pathlib import Path

from conftest import REPO

# Bottom to top, as docs/design.md draws it. Top-level modules count as packages of their own.
LAYERS = [
    "common",
    "data",
    "dist",
    "config",
    "table",
    "nn",
    "bess",
    "train",
    "predict",
    "ensemble",
    "report",
    "techniques",
    "cli",
]


def _package(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else ""


def _imports(path: Path) -> list[tuple[int, str]]:
    out = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0 and node.module.split(".")[0] == "kge":
            if node.module == "kge":  # from kge import x: x is a subpackage or a top-level module
                out += [(node.lineno, f"kge.{alias.name}") for alias in node.names]
            else:
                out.append((node.lineno, node.module))
        elif isinstance(node, ast.Import):
            out += [(node.lineno, alias.name) for alias in node.names if alias.name.split(".")[0] == "kge"]
    return out


def test_every_package_is_on_the_map():
    packages = {p.name for p in (REPO / "kge").iterdir() if (p / "__init__.py").exists()}
    modules = {p.stem for p in (REPO / "kge").glob("*.py")} - {"__init__", "__main__"}
    assert packages | modules == set(LAYERS)


def test_imports_point_down_the_stack():
    upward = []
    for path in sorted((REPO / "kge").rglob("*.py")):
        rel = path.relative_to(REPO / "kge")
        if len(rel.parts) == 1:
            continue  # kge/__init__.py (the lazy public load_model) and __main__.py
        own = rel.parts[0]
        for line, module in _imports(path):
            target = _package(module)
            if target and LAYERS.index(target) > LAYERS.index(own):
                upward.append(f"kge/{rel}:{line} imports {module} ({own} is below {target})")
    assert not upward, "\n".join(upward)


def test_benchmark_scripts_import_what_exists():
    """benchmarks/*.py import kge by module path; a moved module must not leave them broken."""
    import importlib

    missing = []
    for path in sorted((REPO / "benchmarks").glob("*.py")):
        for _line, module in _imports(path):
            importlib.import_module(module)
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("kge"):
                owner = importlib.import_module(node.module)
                for alias in node.names:
                    if not hasattr(owner, alias.name):
                        try:
                            importlib.import_module(f"{node.module}.{alias.name}")
                        except ImportError:
                            missing.append(f"{path.name}:{node.lineno} {node.module}.{alias.name}")
    assert not missing, missing
