"""Static checks that run with the tests (so CI runs them): ruff (pyflakes + no print), the import-layer
contracts (import-linter, configured in pyproject.toml), and the size limits of modules and functions."""

from __future__ import annotations

import ast
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
MAX_MODULE_LINES = 400
MAX_FUNCTION_LINES = 60

#: known excesses, each with the size it may not grow past (shrink or remove entries; never add)
MODULE_ALLOW: dict[str, int] = {}
FUNCTION_ALLOW: dict[str, int] = {}


def _tool(name: str) -> str:
    exe = Path(sys.executable).with_name(name)
    found = str(exe) if exe.exists() else shutil.which(name)
    if found is None:
        pytest.fail(f"{name} is not installed (pip install -e '.[dev]')")
    return found


def test_ruff_finds_nothing():
    res = subprocess.run([_tool("ruff"), "check", "lens_memory", "tests", "analyses"], cwd=ROOT,
                         capture_output=True, text=True)
    assert res.returncode == 0, res.stdout[-4000:] + res.stderr[-2000:]


def test_import_layers_hold():
    res = subprocess.run([_tool("lint-imports"), "--no-cache"], cwd=ROOT, capture_output=True, text=True)
    assert res.returncode == 0, res.stdout[-4000:] + res.stderr[-2000:]


def _sizes() -> tuple[dict[str, int], dict[str, int]]:
    modules, functions = {}, {}
    for p in sorted((ROOT / "lens_memory").rglob("*.py")):
        rel = p.relative_to(ROOT).as_posix()
        src = p.read_text()
        modules[rel] = len(src.splitlines())
        for node in ast.walk(ast.parse(src)):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                functions[f"{rel}:{node.name}"] = node.end_lineno - node.lineno + 1
    return modules, functions


def test_modules_and_functions_stay_short():
    modules, functions = _sizes()
    too_long = {m: n for m, n in modules.items() if n > max(MAX_MODULE_LINES, MODULE_ALLOW.get(m, 0))}
    assert not too_long, f"modules over {MAX_MODULE_LINES} lines: {too_long}"
    too_long = {f: n for f, n in functions.items() if n > max(MAX_FUNCTION_LINES, FUNCTION_ALLOW.get(f, 0))}
    assert not too_long, f"functions over {MAX_FUNCTION_LINES} lines: {too_long}"
    stale = [k for k in MODULE_ALLOW if modules.get(k, 0) <= MAX_MODULE_LINES] + \
            [k for k in FUNCTION_ALLOW if functions.get(k, 0) <= MAX_FUNCTION_LINES]
    assert not stale, f"allowances no longer needed (remove them): {stale}"
