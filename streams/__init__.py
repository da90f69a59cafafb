"""Task streams and the data they read. Imports nothing of lab/agents/metrics."""
from plasticity_lab.streams.stream import Stream, StreamBuilder, stream_builders, task_rng
from plasticity_lab.streams.task import Task
from plasticity_lab.streams import bit_flipping, cifar100, continual_imagenet, permuted, split  # noqa: F401  (register the built-in streams)

__all__ = ["Stream", "StreamBuilder", "Task", "stream_builders", "task_rng"]
