"""Pure metric functions over tensors and numbers, one module per concept."""
from metrics.accuracy import avg_accuracy, bwt, forgetting, fwt

__all__ = ["avg_accuracy", "bwt", "forgetting", "fwt"]
