"""The runtime files an exported folder carries: torch-free listing, allowed imports, one closure."""

from __future__ import annotations

import hashlib
import subprocess
import sys
from pathlib import Path

import pytest

from nanofmt.loaders import export

LOADERS = Path(export.__file__).parent
ALLOWED = {"torch", "transformers", "safetensors", "numpy"}  # what the card promises the folder needs


def test_loaders_export_does_not_import_torch() -> None:
    code = "import sys, nanofmt.loaders, nanofmt.loaders.export as e; e.runtime_files(); assert 'torch' not in sys.modules, 'torch imported'"
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stderr


def test_loaders_export_ships_the_package_modules_verbatim() -> None:
    files = export.runtime_files()
    assert tuple(files) == export.RUNTIME_FILES and export.ENTRY_FILE in files
    for name, data in files.items():
        assert data == (LOADERS / name).read_bytes()
        assert export.runtime_sha256()[name] == hashlib.sha256(data).hexdigest()
    assert export.AUTO_MAP["AutoModelForCausalLM"] == "modeling_nano.NanoForCausalLM"


def test_loaders_runtime_imports_only_allowed_packages() -> None:
    dynamic = pytest.importorskip("transformers.dynamic_module_utils")
    for name in export.RUNTIME_FILES:
        outside = set(dynamic.get_imports(LOADERS / name)) - ALLOWED - set(sys.stdlib_module_names)
        assert not outside, f"{name} imports {outside}: the exported folder would need them"


def test_loaders_runtime_files_are_exactly_the_entry_closure() -> None:
    """transformers copies the entry file and what it imports, recursively: that must be RUNTIME_FILES."""
    dynamic = pytest.importorskip("transformers.dynamic_module_utils")
    closure = {Path(f).name for f in dynamic.get_relative_import_files(LOADERS / export.ENTRY_FILE)}
    assert closure | {export.ENTRY_FILE} == set(export.RUNTIME_FILES)


def test_loaders_package_names_resolve_lazily() -> None:
    pytest.importorskip("torch")
    import nanofmt.loaders as loaders

    assert loaders.NanoLinear.__module__.endswith("nano_modules")
    assert callable(loaders.load_model)
    with pytest.raises(AttributeError):
        loaders.no_such_name  # noqa: B018
