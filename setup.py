"""Build hook: ship the top-level `rules/` folder inside the package.

The YARA rules live in the repository's `rules/` (one place, next to the code that reads
them from a checkout), which is outside the `pooltagscan` package, so package-data cannot
name them. This build_py copies `rules/**/*.yar` to `pooltagscan/_rules/` in the build
tree, which puts them in every wheel (`pip install .`, `pip wheel .`, `python -m build`;
MANIFEST.in carries them into the sdist). `pooltagscan.drivers.yarascan.builtin_rules_dir`
finds them there. Everything else about the build is in pyproject.toml.
"""

from __future__ import annotations

import shutil
from pathlib import Path

from setuptools import setup
from setuptools.command.build_py import build_py

RULES = Path(__file__).resolve().parent / "rules"


class BuildPyWithRules(build_py):
    """build_py, plus the rule files copied into the built package."""

    def run(self) -> None:
        super().run()
        if self.editable_mode:
            return  # an editable install reads rules/ from the checkout itself
        target = Path(self.build_lib) / "pooltagscan" / "_rules"
        for source in sorted(RULES.rglob("*.yar")):
            destination = target / source.relative_to(RULES)
            destination.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(source, destination)


setup(cmdclass={"build_py": BuildPyWithRules})
