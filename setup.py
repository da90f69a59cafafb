"""Package discovery for the one import namespace ``plasticity_lab``.

The repository keeps its parts as top-level folders; installed, each is a
subpackage of ``plasticity_lab`` (``lab/`` -> ``plasticity_lab.lab``). pyproject
tables cannot discover packages under another name, so the mapping is computed
here: every package under the part folders is found automatically (nothing
listed by hand), and the YAML presets travel as package data.
"""
from setuptools import find_packages, setup

PARTS = ("registry", "streams", "agents", "metrics", "lab", "configs")
NAMESPACE = "plasticity_lab"

found = find_packages(include=[f"{part}*" for part in PARTS])
setup(
    packages=[NAMESPACE, *(f"{NAMESPACE}.{p}" for p in found)],
    package_dir={NAMESPACE: NAMESPACE, **{f"{NAMESPACE}.{part}": part for part in PARTS}},
    package_data={f"{NAMESPACE}.configs": ["*.yaml", "**/*.yaml"]},
)
