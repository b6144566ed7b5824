"""transformers' own model test mixins (``tests/test_modeling_common.py``), fetched from the PyPI source
distribution of the installed transformers release and imported without being copied into this repository.

The release's source distribution ships its top-level test modules but not ``tests/generation`` nor
``tests/exporters``, which ``test_modeling_common`` imports for two mixins Mova's tests do not use here; small
stand-ins take their place, and ``parameterized`` (a test-only library transformers' suite uses) gets a
stand-in that runs every parameter set in one test when it is not installed. The extracted files are cached
per version (``MOVA_HF_TESTS_CACHE``, default ``~/.cache/mova/transformers-tests``), so only the first run
downloads (about 11 MB, ~20 s).
"""

from __future__ import annotations

import functools
import importlib
import os
import subprocess
import sys
import tarfile
import tempfile
import types
from pathlib import Path

import transformers

PACKAGE = "hf_common_tests"
FILES = ("test_modeling_common.py",)


def cache_dir() -> Path:
    root = Path(os.environ.get("MOVA_HF_TESTS_CACHE", Path.home() / ".cache" / "mova" / "transformers-tests"))
    return root / transformers.__version__


def fetch() -> Path:
    """The folder holding the installed release's common test modules (downloaded once)."""
    target = cache_dir()
    if all((target / f).is_file() for f in FILES):
        return target
    version = transformers.__version__
    with tempfile.TemporaryDirectory() as tmp:
        cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--no-binary", ":all:", "--quiet",
               f"transformers=={version}", "-d", tmp]
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
        if proc.returncode != 0:
            raise RuntimeError(f"could not download the transformers {version} source distribution from PyPI "
                               f"(needed for its model test mixins):\n{proc.stderr[-2000:]}")
        archive = next(Path(tmp).glob("transformers-*.tar.gz"))
        target.mkdir(parents=True, exist_ok=True)
        with tarfile.open(archive) as tar:
            for f in FILES:
                member = tar.getmember(f"transformers-{version}/tests/{f}")
                (target / f).write_bytes(tar.extractfile(member).read())
    return target


def _stand_in(name: str, **attrs: object) -> None:
    module = types.ModuleType(name)
    module.__dict__.update(attrs)
    sys.modules[name] = module


def _parameterized_stand_in() -> None:
    """``parameterized.expand(cases)``: one test that runs every case (the real one makes a test per case)."""

    def expand(cases, *args, **kwargs):
        def decorate(fn):
            @functools.wraps(fn)
            def run_all(self):
                for case in cases:
                    fn(self, *(case if isinstance(case, (tuple, list)) else (case,)))
            return run_all
        return decorate

    _stand_in("parameterized", parameterized=types.SimpleNamespace(expand=expand))


def load_modeling_common() -> types.ModuleType:
    """``tests/test_modeling_common.py`` of the installed transformers, as module ``hf_common_tests.…``."""
    folder = fetch()
    if importlib.util.find_spec("parameterized") is None and "parameterized" not in sys.modules:
        _parameterized_stand_in()
    if PACKAGE not in sys.modules:
        package = types.ModuleType(PACKAGE)
        package.__path__ = [str(folder)]
        sys.modules[PACKAGE] = package
        _stand_in(f"{PACKAGE}.exporters")
        _stand_in(f"{PACKAGE}.exporters.test_export", ExportTesterMixin=type("ExportTesterMixin", (), {}))
        _stand_in(f"{PACKAGE}.generation")
        _stand_in(f"{PACKAGE}.generation.test_utils",
                  GenerationTesterMixin=type("GenerationTesterMixin", (), {}))
    return importlib.import_module(f"{PACKAGE}.test_modeling_common")
