"""Package list for setuptools; everything else is in pyproject.toml.

``pyproject.toml`` can either find packages or list them, not both: lsched's
packages are found, and ``lsched_models`` (the repository's ``models/`` folder,
mapped by ``[tool.setuptools] package-dir``) is added by name, so that a wheel
ships the deployment profiles while ``models/`` stays their only copy.
"""

from setuptools import find_packages, setup

setup(packages=[*find_packages(include=["lsched", "lsched.*"]), "lsched_models"])
