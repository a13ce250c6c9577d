"""The house rules, checked: rooms import downward only (the import-linter contract in
pyproject.toml), no module uses another's ``_private`` name, ``import sigprop`` stays light, every
module opens with a docstring and stays under 600 lines."""

from __future__ import annotations

import ast
import pathlib
import shutil
import subprocess
import sys

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "sigprop"
LINT = shutil.which("lint-imports") or str(pathlib.Path(sys.executable).with_name("lint-imports"))


def _modules():
    for path in sorted(PACKAGE.rglob("*.py")):
        rel = path.relative_to(ROOT).with_suffix("")
        parts = rel.parts[:-1] if rel.name == "__init__" else rel.parts
        yield ".".join(parts), path


def _lint(root: pathlib.Path) -> subprocess.CompletedProcess:
    return subprocess.run([LINT, "--config", str(root / "pyproject.toml"), "--no-cache"],
                          cwd=root, capture_output=True, text=True, timeout=300,
                          env={"PYTHONPATH": str(root), "PATH": "/usr/bin:/bin"})


def test_the_import_contract_holds_and_lists_every_room():
    import tomllib

    config = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["importlinter"]
    (layers,) = [c for c in config["contracts"] if c["type"] == "layers"]
    rooms = {p.name for p in PACKAGE.iterdir() if (p / "__init__.py").exists()}
    assert {name.split(".")[1] for name in layers["layers"]} == rooms
    run = _lint(ROOT)
    assert run.returncode == 0, run.stdout + run.stderr
    assert "broken" not in run.stdout.lower().replace("0 broken", "")


def test_an_upward_import_breaks_the_contract(tmp_path):
    """The contract is not vacuous: a copy of the package where the metrics room imports the
    engine (an upward import) fails it."""
    shutil.copytree(PACKAGE, tmp_path / "sigprop", ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(ROOT / "pyproject.toml", tmp_path / "pyproject.toml")
    target = tmp_path / "sigprop" / "metrics" / "spectral.py"
    target.write_text(target.read_text() + "\nfrom sigprop.core import engine  # noqa\n")
    run = _lint(tmp_path)
    assert run.returncode != 0
    assert "sigprop.metrics.spectral -> sigprop.core.engine" in run.stdout


def _imported_modules(tree) -> dict:
    """``{local name: module}`` of the sigprop modules a file binds."""
    names = {}
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("sigprop"):
            for a in node.names:
                names[a.asname or a.name] = f"{node.module}.{a.name}"
        elif isinstance(node, ast.Import):
            for a in node.names:
                if a.name.startswith("sigprop") and a.asname:
                    names[a.asname] = a.name
    return names


def _private(name: str) -> bool:
    return name.startswith("_") and not (name.startswith("__") and name.endswith("__"))


def test_no_module_uses_another_modules_private_names():
    modules = {name for name, _ in _modules()}
    found = []
    for name, path in _modules():
        tree = ast.parse(path.read_text())
        bound = {k: v for k, v in _imported_modules(tree).items() if v in modules}
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("sigprop"):
                found += [f"{name}: from {node.module} import {a.name}" for a in node.names
                          if _private(a.name)]
            elif (isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name)
                  and node.value.id in bound and _private(node.attr)):
                found.append(f"{name}: {node.value.id}.{node.attr}")
    assert not found, "\n".join(found)


def test_every_module_opens_with_its_docstring_and_stays_small():
    bad = []
    for name, path in _modules():
        text = path.read_text()
        if ast.get_docstring(ast.parse(text)) is None:
            bad.append(f"{name}: no module docstring")
        if text.count("\n") >= 600:
            bad.append(f"{name}: {text.count(chr(10))} lines")
    assert not bad, "\n".join(bad)


def test_import_sigprop_leaves_the_papers_the_executors_and_the_cli_unloaded():
    code = ("import sys, sigprop; print(' '.join(sorted(m for m in sys.modules "
            "if m.startswith('sigprop'))))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                         cwd=ROOT).stdout.split()
    assert "sigprop.core.engine" in out
    heavy = [m for m in out if m.startswith(("sigprop.paper", "sigprop.cli"))
             or m == "sigprop.sweeps.executors"]
    assert not heavy, heavy


@pytest.mark.parametrize("name, module", [("experiments", "sigprop.paper.experiments"),
                                          ("figures", "sigprop.paper.figures"),
                                          ("cluster", "sigprop.sweeps.executors")])
def test_the_lazy_names_load_their_rooms(name, module):
    import importlib

    import sigprop

    assert getattr(sigprop, name) is importlib.import_module(module)
    paper_validate = importlib.import_module("sigprop.paper.validate")
    assert sigprop.validate.validate is paper_validate.validate
    assert callable(sigprop.validate) and sigprop.validate.CLAIMS == paper_validate.CLAIMS
