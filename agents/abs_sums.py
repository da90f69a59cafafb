"""The batch-1 SGD update of a weight matrix fused with the row and column
sums of its new absolute values (what continual backprop's utility reads
every step: a unit's mean incoming |W| is its row's, its mean outgoing |W|
is its column's in the next layer).

    W <- f W - lr d h^T;   rows_k = sum_j |W_kj|;   cols_j = sum_k |W_kj|

and, in the same pass, the backward product g = d^T W with the old W (the
next layer down's delta before its activation derivative), so the step reads
each matrix once for backward, update and magnitudes together.

In PyTorch ops this is an ``addr_`` (read and write W), ``abs`` (read W,
write a buffer), a row sum and a column sum (two more reads): on the paper's
784-2000-2000-2000-10 net about 9 ms per step on top of a 9 ms backprop step.
One pass that updates each entry and adds its new magnitude to both sums
while the row is in cache costs about 1 ms. No library fuses an SGD update
with reductions of its result (torch.compile's CPU code for it was about as
slow as the separate ops here), so the kernel is written here in C++ and
compiled by torch's own ``cpp_extension`` on first use (a C++ compiler and
ninja are needed; the build is cached under ~/.cache/torch_extensions).
Where it cannot be built, or off the CPU, the same sums come from the
PyTorch ops above, with a warning. Both agree to float rounding (tested).
"""
from __future__ import annotations

import hashlib
import os
import platform
import sys
import warnings
from pathlib import Path
from typing import Any

import torch

_SOURCE = r"""
#include <torch/extension.h>
#include <omp.h>
#include <cmath>
#include <vector>

// One pass over W (n x m, row-major): optionally g_j = sum_k d_k W_kj with the old W (the backward
// product), then W_kj <- f W_kj - lr d_k h_j, rows_k = sum_j |W_kj|, cols_j = sum_k |W_kj| (new W).
template <typename T, bool BACK>
void run(T* w, const T* d, const T* h, T lr, T f, T* rows, T* cols, T* g, int64_t n, int64_t m) {
  const int nt = omp_get_max_threads();
  std::vector<T> part(static_cast<size_t>(nt) * m * (BACK ? 2 : 1), T(0));
  #pragma omp parallel
  {
    T* acc = part.data() + static_cast<size_t>(omp_get_thread_num()) * m * (BACK ? 2 : 1);
    T* gacc = acc + m;
    #pragma omp for schedule(static)
    for (int64_t k = 0; k < n; ++k) {
      T* row = w + k * m;
      const T dk = d[k];
      const T a = -lr * dk;
      T s = 0;
      #pragma omp simd reduction(+:s)
      for (int64_t j = 0; j < m; ++j) {
        const T old = row[j];
        if (BACK) gacc[j] += dk * old;
        const T v = f * old + a * h[j];
        row[j] = v;
        const T av = std::abs(v);
        s += av;
        acc[j] += av;
      }
      rows[k] = s;
    }
  }
  const size_t stride = static_cast<size_t>(m) * (BACK ? 2 : 1);
  for (int64_t j = 0; j < m; ++j) {
    T s = 0, t = 0;
    for (int p = 0; p < nt; ++p) {
      s += part[p * stride + j];
      if (BACK) t += part[p * stride + m + j];
    }
    cols[j] = s;
    if (BACK) g[j] = t;
  }
}

void update_abs_sums(torch::Tensor w, torch::Tensor d, torch::Tensor h, double lr, double f,
                     torch::Tensor rows, torch::Tensor cols, torch::Tensor g) {
  // w: (n, m) or (seeds, n, m) stacked; d, h, rows, cols, g: one row per seed, all contiguous.
  TORCH_CHECK((w.dim() == 2 || w.dim() == 3) && w.is_contiguous() && d.is_contiguous() && h.is_contiguous() &&
              rows.is_contiguous() && cols.is_contiguous() && g.is_contiguous(), "contiguous 2-d or 3-d weights");
  const bool back = g.numel() > 0;
  const int64_t seeds = w.dim() == 3 ? w.size(0) : 1, n = w.size(-2), m = w.size(-1);
  AT_DISPATCH_FLOATING_TYPES(w.scalar_type(), "update_abs_sums", [&] {
    auto go = back ? run<scalar_t, true> : run<scalar_t, false>;
    for (int64_t s = 0; s < seeds; ++s) {
      go(w.data_ptr<scalar_t>() + s * n * m, d.data_ptr<scalar_t>() + s * n, h.data_ptr<scalar_t>() + s * m,
         static_cast<scalar_t>(lr), static_cast<scalar_t>(f), rows.data_ptr<scalar_t>() + s * n,
         cols.data_ptr<scalar_t>() + s * m, back ? g.data_ptr<scalar_t>() + s * m : nullptr, n, m);
    }
  });
}
"""

_kernel: Any = None
_failed: str | None = None


def _cpu_tag() -> str:
    """A short hash of this CPU's model and instruction-set flags: the build uses
    ``-march=native`` (the loop then costs ~0.4 ms instead of ~1.2 ms per step on
    the paper's net), so a home directory shared by different CPUs keeps one build per CPU."""
    try:
        info = Path("/proc/cpuinfo").read_text()
        ident = next((line for line in info.splitlines() if line.startswith(("flags", "Features"))), info[:2000])
    except OSError:
        ident = platform.processor() or platform.machine()
    return hashlib.sha1(ident.encode()).hexdigest()[:10]


def _built(name: str) -> bool:
    from torch.utils.cpp_extension import get_default_build_root

    root = Path(os.environ.get("TORCH_EXTENSIONS_DIR") or get_default_build_root())
    return any(root.glob(f"*/{name}/{name}*.so"))


def kernel() -> Any:
    """The compiled extension (built once per machine), or None where it cannot be built."""
    global _kernel, _failed
    if _kernel is None and _failed is None:
        from torch.utils.cpp_extension import load_inline

        name = f"plasticity_lab_abs_sums_{_cpu_tag()}"
        if not _built(name):
            print("plasticity-lab: building continual backprop's fused |W| sums kernel (once per machine, ~1 min)",
                  file=sys.stderr, flush=True)
        for flags in (["-O3", "-march=native", "-fopenmp"], ["-O3", "-fopenmp"]):
            try:
                _kernel = load_inline(name, cpp_sources=_SOURCE,
                                      functions=["update_abs_sums"], extra_cflags=flags, extra_ldflags=["-fopenmp"])
                break
            except Exception as err:  # no compiler or ninja: the PyTorch ops give the same sums, slower
                _failed = f"{type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''}"
        if _kernel is None:
            warnings.warn(f"the fused |W| sums kernel could not be built ({_failed}); continual backprop's "
                          "magnitudes use PyTorch ops (about 9 ms more per step on the paper's net)")
        else:
            _failed = None
    return _kernel


def update_with_abs_sums(w: torch.Tensor, d: torch.Tensor, h: torch.Tensor, lr: float, factor: float,
                         rows: torch.Tensor, cols: torch.Tensor, back: torch.Tensor | None = None) -> None:
    """``w <- factor w - lr outer(d, h)`` in place; ``rows``/``cols`` receive the
    row and column sums of the new ``|w|``, and ``back`` (if given) the
    backward product ``d @ w`` with the old ``w``. ``w`` is one matrix (the
    vectors 1-d) or N stacked seeds' (N, out, in) (the vectors (N, len)): the
    kernel then does each seed's pass in one call, the same arithmetic as N calls."""
    k = kernel() if w.device.type == "cpu" and w.is_contiguous() else None
    if k is not None:
        k.update_abs_sums(w, d.contiguous(), h.contiguous(), float(lr), float(factor), rows, cols,
                          back if back is not None else w.new_empty(0))
        return
    if w.dim() == 3:
        if back is not None:
            torch.bmm(d.unsqueeze(1), w, out=back.unsqueeze(1))
        w.baddbmm_(d.unsqueeze(2), h.unsqueeze(1), beta=factor, alpha=-lr)
    else:
        if back is not None:
            torch.mv(w.t(), d.reshape(-1), out=back)  # d @ w; d may arrive as (1, out)
        w.addr_(d, h, beta=factor, alpha=-lr)
    sums_of(w, rows, cols)


def sums_of(w: torch.Tensor, rows: torch.Tensor, cols: torch.Tensor) -> None:
    """Row and column sums of ``|w|`` into ``rows``/``cols`` with PyTorch ops
    (``w`` (out, in), or (N, out, in) for stacked seeds)."""
    a = w.abs()
    torch.sum(a, -1, out=rows)
    torch.sum(a, -2, out=cols)
