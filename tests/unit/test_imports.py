"""The import graph runs one way (DESIGN.md's data flow): each part of the package imports only parts below it,
recipes never import evaluation, and tests and benchmarks reach the recipes through their entry points only
(step components live in ``rewardsft.steps``)."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
PACKAGE = ROOT / "src" / "rewardsft"

RANKS = {
    "errors": 0,
    "_version": 0,
    "data": 1,
    "offline": 1,
    "sharding": 1,
    "config": 2,
    "layout": 3,
    "tiny": 3,
    "models": 4,
    "logprobs": 5,
    "reward": 5,
    "losses": 6,
    "reference": 6,
    "generation": 6,
    "model_card": 6,
    "training": 7,
    "scoring": 7,
    "steps": 8,
    "eval": 8,
    "recipes": 9,
    "studies": 10,
    "audits": 11,
    "demo": 11,
    "api": 12,
    "cli": 13,
    "": 13,  # the package root (rewardsft/__init__.py): the public API's re-exports
    "__main__": 14,
}
"""Lower imports nothing higher; two parts of one rank do not import each other."""

RECIPE_ENTRY_POINTS = {"run_recipe", "train_sft", "train_irft", "train_rft"}
RECIPE_MODULES = {"sft", "irft", "rft", "common"}
"""Recipe modules a test may import whole, to patch a name where the recipe looks it up."""


def part(module: str) -> str:
    """``rewardsft.recipes.irft`` -> ``recipes``; ``rewardsft`` -> ``""``."""
    pieces = module.split(".")
    return pieces[1] if len(pieces) > 1 else ""


def imports(path: Path) -> list[tuple[str, list[str]]]:
    """(module, imported names) of every ``rewardsft`` import in the file, function bodies included; a relative
    import is refused (the ranks are read from absolute names)."""
    found = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.ImportFrom) and node.level > 0:
            raise AssertionError(f"{path}:{node.lineno}: a relative import; write it as `from rewardsft.... import`")
        if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("rewardsft"):
            found.append((node.module or "", [alias.name for alias in node.names]))
        elif isinstance(node, ast.Import):
            found += [(alias.name, []) for alias in node.names if alias.name.startswith("rewardsft")]
    return found


def is_part(name: str) -> bool:
    return (PACKAGE / name).is_dir() or (PACKAGE / f"{name}.py").is_file()


def module_of(path: Path) -> str:
    name = ".".join(("rewardsft", *path.relative_to(PACKAGE).with_suffix("").parts))
    return name.removesuffix(".__init__")


def test_every_part_of_the_package_has_a_rank() -> None:
    parts = {part(module_of(path)) for path in PACKAGE.rglob("*.py")}
    assert parts <= set(RANKS), f"give these a rank in RANKS: {sorted(parts - set(RANKS))}"


def test_no_import_runs_up() -> None:
    upward = []
    for path in sorted(PACKAGE.rglob("*.py")):
        here = part(module_of(path))
        for module, names in imports(path):
            targets = [module]
            if module == "rewardsft":  # each name is a submodule, else a re-export of the package root
                targets = [f"rewardsft.{n}" if is_part(n) else "rewardsft" for n in names]
            for target in targets:
                there = part(target)
                if there != here and RANKS[there] >= RANKS[here]:
                    upward.append(
                        f"{module_of(path)} imports {target} ({here} {RANKS[here]} -> {there} {RANKS[there]})"
                    )
    assert not upward, "\n".join(upward)


def test_recipes_never_import_evaluation() -> None:
    reached = [
        f"{module_of(path)} imports {module}"
        for path in (PACKAGE / "recipes").rglob("*.py")
        for module, _ in imports(path)
        if part(module) in ("eval", "studies", "audits", "demo")
    ]
    assert not reached


def test_tests_and_benchmarks_reach_recipes_through_their_entry_points() -> None:
    reached = []
    for path in [*(ROOT / "tests").rglob("*.py"), *(ROOT / "benchmarks").rglob("*.py")]:
        for module, names in imports(path):
            if module == "rewardsft.recipes":
                allowed = RECIPE_ENTRY_POINTS | RECIPE_MODULES
            elif module.startswith("rewardsft.recipes."):
                allowed = RECIPE_ENTRY_POINTS
                names = names or [module]  # `import rewardsft.recipes.irft`: the module itself, not an entry point
            else:
                continue
            reached += [f"{path.relative_to(ROOT)}: {module}.{name}" for name in names if name not in allowed]
    assert not reached, "import step components from rewardsft.steps:\n" + "\n".join(reached)


def test_the_check_sees_an_upward_import(tmp_path: Path) -> None:
    """The walk finds imports inside functions, where the lazy ones live."""
    source = tmp_path / "m.py"
    source.write_text("def f():\n    from rewardsft.eval.paired import compare_runs\n    import rewardsft.recipes\n")
    assert imports(source) == [("rewardsft.eval.paired", ["compare_runs"]), ("rewardsft.recipes", [])]
    source.write_text("from .schema import RunConfig\n")
    with pytest.raises(AssertionError, match="relative import"):
        imports(source)


def test_every_package_folder_is_a_regular_package() -> None:
    """setuptools' find_packages ships only folders with an __init__.py: a namespace folder works in an editable
    install and is missing from a wheel."""
    folders = {path.parent for path in PACKAGE.rglob("*.py") if "__pycache__" not in path.parts}
    assert sorted(str(f.relative_to(PACKAGE)) for f in folders if not (f / "__init__.py").is_file()) == []
