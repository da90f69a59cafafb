"""Metrics: pure functions over tensors and numbers, one module per concept,
each registered in the metric catalog (metrics/catalog.py) with its unit and
schedule; the tracker (metrics/tracker.py) runs them on that schedule."""
from plasticity_lab.metrics import curvature, gradients, probes, rank, records, sparsity, units, weights  # noqa: F401 (register)
from plasticity_lab.metrics.accuracy import avg_accuracy, bwt, forgetting, fwt, online_accuracy
from plasticity_lab.metrics.catalog import MetricFacts, declare, metrics

__all__ = ["avg_accuracy", "bwt", "forgetting", "fwt", "online_accuracy", "metrics", "MetricFacts", "declare"]
