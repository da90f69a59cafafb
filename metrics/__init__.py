"""Pure metric functions over tensors and numbers, one module per concept."""
from plasticity_lab.metrics.accuracy import avg_accuracy, bwt, forgetting, fwt, online_accuracy

__all__ = ["avg_accuracy", "bwt", "forgetting", "fwt", "online_accuracy"]
