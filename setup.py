"""Packaging that pyproject.toml cannot say: the repository's top-level ``app/`` and ``analysis/``
install as ``karl_studio.app`` and ``karl_studio.analysis``, never as generic top-level names.

In the checkout they stay top-level packages (``python app.py``, ``python -m analysis.report``,
``from analysis.kc_curve import ...``). A wheel moves them under ``karl_studio`` and rewrites their
absolute imports of each other (``from analysis.x import y`` -> ``from karl_studio.analysis.x
import y``) at build time, so the same source works in both places. Only import statements
change (found with ``ast``), nothing in strings or comments. An editable install (``pip install
-e .``) keeps the top-level names as well, because its files are the checkout's, not rewritten.
"""

from __future__ import annotations

import ast
import re
import sys
from pathlib import Path

from setuptools import find_packages, setup
from setuptools.command.build_py import build_py

HOME = "karl_studio"
MOVED = ("app", "analysis")          # repository folder -> HOME.<folder> in a wheel
EDITABLE = "editable_wheel" in sys.argv   # pip install -e (PEP 660)


def rewrite_imports(source: str) -> str:
    """``source`` with every import of a MOVED package pointed at its home under HOME."""
    lines = source.splitlines(keepends=True)
    names = "|".join(MOVED)
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import) and any(a.name.split(".")[0] in MOVED for a in node.names):
            raise ValueError(f"line {node.lineno}: `import {node.names[0].name}` of a moved package; "
                             "write `from ... import ...` (only those are rewritten)")
        if isinstance(node, ast.ImportFrom) and node.level == 0 and node.module \
                and node.module.split(".")[0] in MOVED:
            i = node.lineno - 1
            lines[i] = re.sub(rf"\bfrom(\s+)({names})\b", rf"from\1{HOME}.\2", lines[i], count=1)
    return "".join(lines)


class BuildPy(build_py):
    """Copies modules as setuptools does, then rewrites the imports of the moved packages."""

    def build_module(self, module, module_file, package):
        outfile, copied = super().build_module(module, module_file, package)
        if copied and isinstance(package, str) and package.split(".")[0] == HOME:
            path = Path(outfile)
            path.write_text(rewrite_imports(path.read_text(encoding="utf-8")), encoding="utf-8")
        return outfile, copied


packages = find_packages(include=["karl", "karl.*"])
package_dir = {}
for folder in MOVED:
    found = find_packages(include=[folder, f"{folder}.*"])
    packages += [f"{HOME}.{p}" for p in found]
    package_dir[f"{HOME}.{folder}"] = folder
    if EDITABLE:
        packages += found

setup(packages=packages, package_dir=package_dir, cmdclass={"build_py": BuildPy})
