"""README command 1 installs everything `snakemake --report` imports.

The test extras pull pygments in through pytest, so an environment installed for the tests never saw
`snakemake --report` fail with "Python package pygments must be installed to create reports". Here the
packages README command 1 installs (its `pip install` line: requirement files and the project without
extras) are closed over their declared dependencies (importlib.metadata, extras skipped), and every
third-party module that snakemake's report code imports must come from a distribution in that closure.
"""

from __future__ import annotations

import ast
import re
import shlex
import sys
from importlib import metadata
from pathlib import Path

import pytest
from packaging.requirements import Requirement

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10
    tomllib = pytest.importorskip("tomli")

REPO = Path(__file__).resolve().parents[1]


def _canon(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def readme_command_1() -> list[str]:
    """The words of the first `pip install` line of README.md (the install of command 1)."""
    for line in (REPO / "README.md").read_text().splitlines():
        if line.strip().startswith("pip install"):
            return shlex.split(line.split("&&")[0])
    raise AssertionError("README.md: no `pip install` line (command 1)")


def _requirement_file(path: Path) -> list[str]:
    out = []
    for line in path.read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if line and not line.startswith("-"):
            out.append(line)
    return out


def installed_requirements(words: list[str]) -> list[Requirement]:
    """Top-level requirements of `pip install WORDS` run in the repository root: -r files and the project."""
    reqs: list[str] = []
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    it = iter(words[2:])
    for word in it:
        if word in ("-r", "--requirement"):
            reqs += _requirement_file(REPO / next(it))
        elif word in ("-e", "--editable"):
            word = next(it)
        if word.startswith("."):  # the project itself, maybe with extras: .[test]
            reqs += project["dependencies"]
            extras = re.findall(r"\[(.*)\]", word)
            for extra in extras[0].split(",") if extras else []:
                reqs += project["optional-dependencies"][extra.strip()]
    return [Requirement(r) for r in reqs]


def closure(reqs: list[Requirement]) -> set[str]:
    """Canonical names of the distributions those requirements install, through declared dependencies.

    A dependency is followed when its marker holds here without any extra (extras are not installed)."""
    seen: set[str] = set()
    todo = list(reqs)
    while todo:
        req = todo.pop()
        if req.marker is not None and not req.marker.evaluate({"extra": ""}):
            continue
        name = _canon(req.name)
        if name in seen:
            continue
        seen.add(name)
        try:
            requires = metadata.distribution(req.name).requires or []
        except metadata.PackageNotFoundError:
            continue  # not installed here: it cannot bring a module in either
        todo += [Requirement(r) for r in requires]
    return seen


def report_modules() -> set[str]:
    """Top-level third-party modules imported anywhere in snakemake's report package."""
    import snakemake.report

    mods = set()
    for path in Path(snakemake.report.__file__).parent.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                mods |= {a.name.split(".")[0] for a in node.names}
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                mods.add(node.module.split(".")[0])
    return {m for m in mods if m not in sys.stdlib_module_names and m != "snakemake"}


def test_report_modules_found():
    """The scan sees the imports that failed before (a scan that finds nothing would pass vacuously)."""
    mods = report_modules()
    assert {"pygments", "jinja2"} <= mods


def test_readme_command_1_installs_what_snakemake_report_imports():
    words = readme_command_1()
    assert "-r" in words or "--requirement" in words, f"README command 1 changed shape: {words}"
    installed = closure(installed_requirements(words))
    assert "snakemake" in installed
    dists = metadata.packages_distributions()
    missing = []
    for mod in sorted(report_modules()):
        providers = dists.get(mod)
        if not providers:
            pytest.fail(f"{mod}: imported by snakemake's report code but not installed here")
        if not any(_canon(d) in installed for d in providers):
            missing.append(f"{mod} (from {providers[0]})")
    assert not missing, (
        "README command 1 (`" + " ".join(words) + "`) does not install what `snakemake --report` "
        f"imports: {', '.join(missing)}; add them to envs/requirements.txt and pyproject dependencies"
    )


def test_readme_command_1_installs_what_the_native_kernels_build_with():
    """kge/nn/fused_distance builds kge/nn/csrc with torch.utils.cpp_extension, which imports setuptools
    and runs ninja: both must come with command 1 (else every L1 model silently runs the slow eager path)."""
    installed = closure(installed_requirements(readme_command_1()))
    assert {"ninja", "setuptools"} <= installed
    from importlib.resources import files

    assert files("kge").joinpath("nn/csrc/distance.cpp").is_file()  # shipped with the package
