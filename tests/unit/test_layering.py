"""The layering README's table states is the layering of the code.

README's table is the one statement of which folder may import which; these tests
read it and hold every import in the tree (module level or inside a function) to it,
so a lower layer can never start importing a higher one unnoticed.
"""

from __future__ import annotations

import ast
import re
import tomllib
from pathlib import Path

from infra.settings import PROJECT_ROOT

EVERYTHING_BELOW = "everything below"
NOTHING = "nothing"
# The Bento's entry point, and the module Feast imports when it loads the
# on-demand view's function from the registry (the service reads that view).
BENTO_ROOTS = ("serving.service", "feature_repo.live_features")


def readme_layers() -> list[tuple[str, str]]:
    """(folder, may-import cell) per row of README's layering table, top first."""
    text = (PROJECT_ROOT / "README.md").read_text()
    table = text.split("<!-- layering table -->", 1)[1].split("\n\n", 1)[0]
    rows = []
    for line in table.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        folder = re.fullmatch(r"`(\w+)/`", cells[1]) if len(cells) == 4 else None
        if folder:
            rows.append((folder.group(1), cells[3]))
    return rows


def packages() -> list[str]:
    """Top-level packages of the tree (tests apart)."""
    return sorted(
        p.name
        for p in PROJECT_ROOT.iterdir()
        if (p / "__init__.py").exists() and p.name != "tests"
    )


def imported_modules(path: Path) -> set[str]:
    """Every absolute module name a file imports, at any depth of its code."""
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names.add(node.module)
            names.update(f"{node.module}.{alias.name}" for alias in node.names)
    return names


def package_imports(package: str) -> dict[str, set[str]]:
    """Other top-level packages each module of ``package`` imports."""
    ours = set(packages())
    found = {}
    for path in sorted((PROJECT_ROOT / package).rglob("*.py")):
        tops = {name.split(".")[0] for name in imported_modules(path)}
        found[str(path.relative_to(PROJECT_ROOT))] = (tops & ours) - {package}
    return found


def allowed_imports() -> dict[str, set[str]]:
    """What each package may import, as README's table says."""
    rows = readme_layers()
    allowed = {}
    for i, (folder, cell) in enumerate(rows):
        below = {f for f, _ in rows[i + 1 :] if f != "tests"}
        if cell == EVERYTHING_BELOW:
            allowed[folder] = below
        elif cell == NOTHING:
            allowed[folder] = set()
        else:
            named = set(re.findall(r"`(\w+)`", cell))
            assert named <= below, f"{folder} may import only folders below it"
            allowed[folder] = named
    return allowed


def test_readme_table_lists_every_package_once():
    folders = [folder for folder, _ in readme_layers()]
    assert len(folders) == len(set(folders))
    assert sorted(set(folders) - {"tests"}) == packages()


def test_every_import_goes_only_where_readme_allows():
    allowed = allowed_imports()
    climbing = [
        f"{module} imports {sorted(tops - allowed[package])}"
        for package in packages()
        for module, tops in package_imports(package).items()
        if tops - allowed[package]
    ]
    assert climbing == []


def test_the_table_is_layered_bottom_up():
    """A folder's imports are all listed below it, so no cycle can form."""
    rows = [folder for folder, _ in readme_layers() if folder != "tests"]
    for folder, may in allowed_imports().items():
        assert all(rows.index(other) > rows.index(folder) for other in may), folder


def test_test_modules_import_only_support_code():
    crossing = []
    for path in sorted((PROJECT_ROOT / "tests").rglob("*.py")):
        for name in imported_modules(path):
            if name.startswith("tests.") and not name.startswith("tests.support"):
                crossing.append(f"{path.relative_to(PROJECT_ROOT)} imports {name}")
    assert crossing == []


def module_file(name: str) -> Path | None:
    """The file of a first-party module or package, if ``name`` is one."""
    base = PROJECT_ROOT.joinpath(*name.split("."))
    for candidate in (base.with_suffix(".py"), base / "__init__.py"):
        if candidate.is_file():
            return candidate
    return None


def import_closure(roots: tuple[str, ...]) -> set[str]:
    """Files of every first-party module ``roots`` import, transitively."""
    files: set[str] = set()
    todo = list(roots)
    while todo:
        name = todo.pop()
        parts = name.split(".")
        for end in range(1, len(parts) + 1):
            path = module_file(".".join(parts[:end]))
            if path is None:
                break
            relative = str(path.relative_to(PROJECT_ROOT))
            if relative not in files:
                files.add(relative)
                todo.extend(imported_modules(path))
    return files


def test_bento_ships_exactly_what_serving_imports():
    config = tomllib.loads((PROJECT_ROOT / "pyproject.toml").read_text())
    build = config["tool"]["bentoml"]["build"]
    shipped = {p for p in build["include"] if p.endswith(".py")}
    assert shipped == import_closure(BENTO_ROOTS)
    assert "packages" not in build.get("python", {}), "dependencies: pyproject only"


def test_the_closure_follows_imports_inside_functions(tmp_path: Path):
    source = tmp_path / "m.py"
    source.write_text("def f():\n    from core.store import online_reader\n")
    assert "core.store.online_reader" in imported_modules(source)
    closure = import_closure(("core.store.online_reader",))
    assert "core/store/online_reader.py" in closure
