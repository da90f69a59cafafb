"""plasticity-lab: continual-learning and loss-of-plasticity experiments.

The repository keeps one folder per part (``registry/``, ``streams/``,
``agents/``, ``metrics/``, ``lab/``, ``configs/``); installed, they are the
subpackages of this one import name, ``plasticity_lab.streams`` and so on
(setup.py maps each folder to its subpackage). One name of ours means no
clash with other distributions' top-level packages (``agents``, ``lab``).
"""
from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("plasticity-lab")
except PackageNotFoundError:  # imported from a source tree that was never installed
    __version__ = "0+unknown"
