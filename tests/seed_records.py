"""A run's metrics.jsonl read back for comparing a vectorised seed with the same seed run alone."""
import json

import pytest


def records(path):
    """Every record of ``path`` without its throughput (a timing, not a result)."""
    out = []
    for line in path.read_text().splitlines():
        r = json.loads(line)
        r.pop("perf/examples_per_s", None)
        out.append(r)
    return out


def assert_close_records(a, b):
    """The same records at the same steps, values equal to float tolerance: counts of predictions and
    units to one in a hundred (one may flip), everything else to 1e-3 relative or 1e-4 absolute."""
    assert [(r["step"], r["task"], sorted(r)) for r in a] == [(r["step"], r["task"], sorted(r)) for r in b]
    for x, y in zip(a, b):
        for key, value in x.items():
            if key.endswith("_acc") or "/acc/" in key or key.startswith(("units/", "sparsity/", "eval/")):
                assert value == pytest.approx(y[key], abs=0.01), key
            else:
                assert value == pytest.approx(y[key], rel=1e-3, abs=1e-4), key
