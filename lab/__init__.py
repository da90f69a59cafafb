"""plasticity-lab: the runner, CLI, sinks, checkpoints and plots."""
