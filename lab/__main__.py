from plasticity_lab.lab.cli import entry

entry()
