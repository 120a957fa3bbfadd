"""dvc.yaml and studies/dvc.yaml: every project file a stage's module imports (at the top or inside a
function) is a dep of the stage, so that a change there reruns it. pipeline/tracking.py and what only it
imports are left out: MLflow logging does not change a report. (The main pipeline's evaluate and sample
stages once listed none of the model code: a change to the sampling code left samples/ stale.)"""
from __future__ import annotations

import ast
import shlex
from pathlib import Path

import pytest
import yaml

from tests.conftest import ROOT

PACKAGES = ("studies", "lightning_modules", "pipeline")
NOT_OUTPUTS = {"pipeline.tracking"}


def _file(dotted: str) -> Path | None:
    p = ROOT / Path(*dotted.split("."))
    return p.with_suffix(".py") if p.with_suffix(".py").is_file() else (p / "__init__.py" if (p / "__init__.py").is_file() else None)


def project_imports(module: str) -> set[str]:
    """The project's .py files `module` imports, transitively, as paths relative to the root."""
    seen, todo = set(), [module]
    while todo:
        f = _file(todo.pop())
        if f is None or f in seen:
            continue
        seen.add(f)
        for node in ast.walk(ast.parse(f.read_text())):
            names = []
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                names = [node.module] + [f"{node.module}.{a.name}" for a in node.names]  # `from pkg import module`
            todo += [n for n in names if n.split(".")[0] in PACKAGES and n not in NOT_OUTPUTS]
    return {str(f.relative_to(ROOT)) for f in seen if f.name != "__init__.py"}


@pytest.mark.parametrize("pipeline", ["dvc.yaml", "studies/dvc.yaml"])
def test_every_imported_project_file_is_a_dep(pipeline):
    stages = yaml.safe_load((ROOT / pipeline).read_text())["stages"]
    missing = {}
    for name, stage in stages.items():
        stage = stage.get("do", stage)  # a foreach stage: its template
        module = shlex.split(stage["cmd"])[2]
        assert _file(module) is not None, f"{name}: its command's module {module} is not a project file"
        assert f"{module.replace('.', '/')}.py" in project_imports(module), name  # the walk starts from a real file
        deps = [d.rstrip("/") for d in stage["deps"]]
        gaps = sorted(f for f in project_imports(module) if not any(f == d or f.startswith(d + "/") for d in deps))
        if gaps:
            missing[name] = gaps
    assert not missing, f"add to the stages' deps: {missing}"
