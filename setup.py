"""Packaging hook: a wheel carries the project's data (guest image recipes, the guest agent and
its protocol, kernel and QEMU patch series, topologies, scenarios, the CRIU plugin) under
testbed/_data, so an installed `testbed` works outside the source tree. A checkout or an
editable install reads the same directories from the tree itself (testbed/paths.py)."""

from __future__ import annotations

import shutil
from pathlib import Path

from setuptools import setup
from setuptools.command.build_py import build_py

# Top-level folders of the checkout that the tool reads at run time.
DATA_DIRS = ("images", "guest-agent", "protocol", "kernel-patches", "qemu-patches", "testbeds", "scenarios", "criu-mmt")
SKIP = shutil.ignore_patterns("__pycache__", "*.pyc", "*.egg-info", "build", ".venv", ".mypy_cache", ".ruff_cache")


class BuildWithData(build_py):
    def run(self) -> None:
        super().run()
        if getattr(self, "editable_mode", False):
            return  # an editable install reads the tree itself
        root = Path(__file__).resolve().parent
        out = Path(self.build_lib) / "testbed" / "_data"
        shutil.rmtree(out, ignore_errors=True)  # a reused build/ must not keep files removed from the tree
        for name in DATA_DIRS:
            src = root / name
            if src.is_dir():
                shutil.copytree(src, out / name, ignore=SKIP, dirs_exist_ok=True, symlinks=True)


setup(cmdclass={"build_py": BuildWithData})
