"""Every third-party module the gateway imports is a declared runtime dependency.

The README's install (`./setup.sh`, no `--test`) installs `roost[demo]` and nothing else, while the
test extra brings pandas, duckdb and their numpy: an import that only the test extra satisfies
passes the whole suite and fails on a user's machine (issue 13: `gateway/rollup/parquet.py` imports
numpy, which pyarrow no longer requires, so every rollup worker died on import). A dependency that
arrives only through another package's requirements is not declared either: it goes away when that
package changes its mind, as pyarrow did about numpy.

The walk reads the source, not sys.modules: function-level imports (the rollup worker's, the
CLI's) count as much as top-level ones.
"""

from __future__ import annotations

import ast
import importlib.metadata
import sys
import tomllib
from pathlib import Path

from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

REPO = Path(__file__).resolve().parent.parent
GATEWAY = REPO / "gateway"

# Imports that an optional extra satisfies instead of the runtime dependencies: import name ->
# (extra, the document of the feature that imports it, which must name the extra so that a user
# of that feature learns to install it). Empty today: the gateway imports nothing optional.
# Add a row only with a guarded import (a clear message when the extra is missing).
OPTIONAL: dict[str, tuple[str, str]] = {}


def imported_modules(root: Path) -> dict[str, set[str]]:
    """Top-level names of the absolute imports in every .py under ``root`` (at any depth of the
    file: module, function, class or ``if`` body), each with the files that import it."""
    found: dict[str, set[str]] = {}
    for path in sorted(root.rglob("*.py")):
        tree = ast.parse(path.read_bytes(), filename=str(path))
        for node in ast.walk(tree):
            names: list[str] = []
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                names = [node.module]
            for name in names:
                found.setdefault(name.partition(".")[0], set()).add(
                    str(path.relative_to(root.parent)))
    return found


def third_party(found: dict[str, set[str]]) -> dict[str, set[str]]:
    return {name: files for name, files in found.items()
            if name not in sys.stdlib_module_names and name != "gateway"}


def declared(project: dict[str, object], key: str) -> set[str]:
    return {canonicalize_name(Requirement(spec).name) for spec in project.get(key, [])}  # type: ignore[attr-defined]


def pyproject() -> dict[str, object]:
    return tomllib.loads((REPO / "pyproject.toml").read_text())["project"]  # type: ignore[no-any-return]


def distributions(module: str) -> set[str]:
    return {canonicalize_name(d)
            for d in importlib.metadata.packages_distributions().get(module, [])}


def test_the_walk_sees_imports_at_every_depth(tmp_path: Path) -> None:
    # The collector itself: a function-level, a class-level and a guarded import are all found,
    # relative and stdlib ones are not reported as third party.
    pkg = tmp_path / "pkg"
    (pkg / "sub").mkdir(parents=True)
    (pkg / "sub" / "mod.py").write_text(
        "import os\nfrom . import sibling\n"
        "def f():\n    import numpy.linalg as la\n    from yaml import safe_load\n"
        "class C:\n    if True:\n        import uvicorn\n"
        "try:\n    import orjson\nexcept ImportError:\n    pass\n"
    )
    got = third_party(imported_modules(pkg))
    assert set(got) == {"numpy", "yaml", "uvicorn", "orjson"}
    assert got["numpy"] == {"pkg/sub/mod.py"}


def test_every_third_party_import_is_a_declared_dependency() -> None:
    project = pyproject()
    runtime = declared(project, "dependencies")
    extras: dict[str, list[str]] = project["optional-dependencies"]  # type: ignore[assignment]
    problems = []
    for module, files in sorted(third_party(imported_modules(GATEWAY)).items()):
        dists = distributions(module)
        where = ", ".join(sorted(files))
        if not dists:
            problems.append(f"{module} (imported by {where}) is not installed here: declare the "
                            "distribution that provides it in [project] dependencies")
            continue
        if dists & runtime:
            continue
        if module in OPTIONAL:
            extra = OPTIONAL[module][0]
            if dists & {canonicalize_name(Requirement(s).name) for s in extras.get(extra, [])}:
                continue
            problems.append(f"{module} is listed as optional under [{extra}], which does not "
                            f"declare {sorted(dists)}")
            continue
        problems.append(f"{module} (imported by {where}) comes from {sorted(dists)}, which "
                        "[project] dependencies in pyproject.toml do not declare: a user's "
                        "`./setup.sh` install may not have it")
    assert not problems, "\n".join(problems)


def test_optional_imports_are_documented_by_their_feature() -> None:
    extras: dict[str, list[str]] = pyproject()["optional-dependencies"]  # type: ignore[assignment]
    for module, (extra, doc) in OPTIONAL.items():
        assert extra in extras, f"{module}: no extra [{extra}] in pyproject.toml"
        assert f"[{extra}]" in (REPO / doc).read_text(), f"{doc} does not tell users of " \
            f"{module} to install roost[{extra}]"
