"""The device side never needs torch or transformers: every module outside ``edgemoe/exporters``
imports and a package runs with both blocked; and no such module imports them, even lazily."""
from __future__ import annotations

import ast
import json
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

import edgemoe

ROOT = Path(edgemoe.__file__).parent
BLOCKED = ("torch", "transformers")
# DESIGN.md: these never import torch, transformers or the exporters
NO_EXPORTERS = ("runtime", "schedulers", "backends", "profiler", "package", "quant", "serve")
HTTP_STACK = ("starlette", "uvicorn", "h11", "anyio", "fastapi", "aiohttp")


def _module_name(path: Path) -> str:
    parts = path.relative_to(ROOT.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _imports(path: Path, module: str | None = None) -> set[str]:
    """Every module an ``import`` or ``from ... import`` names, anywhere in the file (lazy ones too)."""
    tree = ast.parse(path.read_text(), str(path))
    module = module or _module_name(path)
    pkg = module.rsplit(".", 1)[0] if path.name != "__init__.py" else module
    out = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            out.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = pkg.split(".")
                base = base[: len(base) - node.level + 1]
                out.add(".".join(base + ([node.module] if node.module else [])))
            else:
                out.add(node.module)
        elif isinstance(node, ast.Call) and getattr(node.func, "attr", getattr(node.func, "id", "")) in (
                "import_module", "__import__") and node.args and isinstance(node.args[0], ast.Constant):
            out.add(str(node.args[0].value))
    return out


def _device_side_files():
    files = [p for p in ROOT.rglob("*.py") if "exporters" not in p.relative_to(ROOT).parts]
    assert len(files) > 20
    return files


def test_no_torch_outside_exporters():
    bad = {}
    for p in _device_side_files():
        hits = sorted(m for m in _imports(p) if m.split(".")[0] in BLOCKED)
        if hits:
            bad[str(p.relative_to(ROOT))] = hits
    assert not bad, f"torch/transformers imported outside edgemoe/exporters: {bad}"


def test_device_packages_never_import_exporters():
    bad = {}
    for p in _device_side_files():
        if p.relative_to(ROOT).parts[0] in NO_EXPORTERS:
            hits = sorted(m for m in _imports(p) if m.startswith("edgemoe.exporters"))
            if hits:
                bad[str(p.relative_to(ROOT))] = hits
    assert not bad, f"device-side modules import the exporters: {bad}"


def test_only_serve_imports_the_http_stack():
    bad = {}
    for p in _device_side_files():
        if p.relative_to(ROOT).parts[0] != "serve":
            hits = sorted(m for m in _imports(p) if m.split(".")[0] in HTTP_STACK)
            if hits:
                bad[str(p.relative_to(ROOT))] = hits
    assert not bad, f"the HTTP stack is imported outside edgemoe/serve: {bad}"


def test_the_checker_sees_lazy_and_relative_imports(tmp_path):
    """The static check can fail: a lazy import inside a function and a relative one are found."""
    f = tmp_path / "probe.py"
    f.write_text("def f():\n    import torch.nn as nn\n    from ..exporters import export\n")
    found = _imports(f, "edgemoe.runtime.probe")
    assert "torch.nn" in found and "edgemoe.exporters" in found


SCRIPT = textwrap.dedent("""
    import importlib, importlib.abc, json, pkgutil, sys

    class Block(importlib.abc.MetaPathFinder):
        def find_spec(self, name, path=None, target=None):
            if name.split(".")[0] in ("torch", "transformers"):
                raise ImportError(f"{name} is blocked: the device runtime must not need it")
            return None

    sys.meta_path.insert(0, Block())
    try:
        import torch  # noqa: F401
        raise SystemExit("the torch blocker does not work")
    except ImportError:
        pass

    import edgemoe, edgemoe.runtime.engine, edgemoe.quant, edgemoe.package.reader, edgemoe.backends
    import edgemoe.cli
    imported = []
    for m in pkgutil.walk_packages(edgemoe.__path__, "edgemoe."):
        if not m.name.startswith("edgemoe.exporters"):
            importlib.import_module(m.name)
            imported.append(m.name)

    from click.testing import CliRunner
    from edgemoe import Runtime
    rt = Runtime(sys.argv[1], level=4)
    ids = rt.generate([1, 2, 3], 4, stop_at_eos=False).ids
    ref = Runtime(sys.argv[1], level=4, backend="reference").generate([1, 2, 3], 4, stop_at_eos=False).ids
    inspect = CliRunner().invoke(edgemoe.cli.main, ["inspect", sys.argv[1], "--json"])
    assert inspect.exit_code == 0, inspect.output
    loaded = any(k.split(".")[0] in ("torch", "transformers") for k in sys.modules)
    print(json.dumps({"ids": ids, "ref": ref, "imported": imported, "torch_loaded": loaded,
                      "family": json.loads(inspect.output)["arch"]["family"]}))
""")


@pytest.fixture(scope="module")
def package(tmp_path_factory):
    pytest.importorskip("torch")
    pytest.importorskip("transformers")
    import tiny_models
    from edgemoe.exporters.export import export
    from edgemoe.quant.spec import QuantSpec

    d = tmp_path_factory.mktemp("torchfree")
    tiny_models.build("mixtral", d / "hf")
    return export(d / "hf", d / "q.edgemoe", QuantSpec())


def test_runtime_runs_with_torch_and_transformers_blocked(package, tmp_path):
    script = tmp_path / "device.py"
    script.write_text(SCRIPT)
    p = subprocess.run([sys.executable, str(script), str(package)], capture_output=True, text=True,
                       timeout=120, cwd=tmp_path)
    assert p.returncode == 0, p.stderr[-3000:]
    out = json.loads(p.stdout.strip().splitlines()[-1])
    assert len(out["ids"]) == 4 and all(0 <= i < 128 for i in out["ids"])
    assert len(out["ref"]) == 4
    assert out["family"] == "mixtral"
    assert not out["torch_loaded"]
    for m in ("edgemoe.runtime.engine", "edgemoe.package.record_store", "edgemoe.backends.ort.backend",
              "edgemoe.backends.reference.backend", "edgemoe.package.writer", "edgemoe.cli"):
        assert m in out["imported"]
