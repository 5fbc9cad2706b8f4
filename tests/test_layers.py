"""The code reads from the top: no module imports a module of a stage above it (the README's layout, read bottom-up:
data, config, models, artifacts, evaluation, training and merging, study, cli; imports inside functions count),
and no function is longer than a screen."""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
# higher numbers sit above; a module may import its own stage and the stages below it (training and merging are
# side by side and import neither each other)
STAGES = {"fusekit": 0, "fusekit.errors": 0, "fusekit.progress": 0, "fusekit.data": 1, "fusekit.config": 2,
          "fusekit.models": 3, "fusekit.artifacts": 4, "fusekit.evaluation": 5, "fusekit.training": 6,
          "fusekit.merging": 6, "fusekit.study": 7, "cli": 8}


def stage(module: str) -> str:
    return max((s for s in STAGES if module == s or module.startswith(s + ".")), key=len)


def imports(path: Path) -> list[str]:
    found = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module:
            found.append(node.module)
        elif isinstance(node, ast.Import):
            found += [alias.name for alias in node.names]
    return [m for m in found if m.split(".")[0] in ("fusekit", "cli")]


def test_no_module_imports_a_stage_above_it():
    wrong = []
    for path in sorted([*ROOT.glob("fusekit/**/*.py"), *ROOT.glob("cli/*.py")]):
        module = ".".join(path.relative_to(ROOT).with_suffix("").parts).removesuffix(".__init__")
        mine = stage(module)
        for other in map(stage, imports(path)):
            if STAGES[other] > STAGES[mine] or (STAGES[other] == STAGES[mine] and other != mine):
                wrong.append(f"{module} imports {other}")
    assert not wrong, wrong


def test_no_function_is_longer_than_a_screen():
    """Functions of at most 60 lines: a long one is split into named steps (as JointTraining is)."""
    long = []
    for path in sorted(ROOT.glob("fusekit/**/*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) and node.end_lineno - node.lineno >= 60:
                long.append(f"{path.relative_to(ROOT)}:{node.lineno} {node.name}")
    assert not long, long
