"""The lab's compiled CPU code, built once per machine by torch's own
``cpp_extension`` (a C++ compiler and ninja are needed; the build is cached
under ~/.cache/torch_extensions, one per CPU model). Two entry points:

- ``update_abs_sums``: the batch-1 SGD update of weight matrices fused with the
  row and column sums of the new |W| and the backward product
  (agents/abs_sums.py has its arithmetic and why it is compiled);
- ``online_step``: the whole fused batch-1 SGD step of N stacked MLPs --
  forward, loss, backward and update -- as one call (agents/compiled_step.py
  has its arithmetic and why it is compiled).

Both take N stacked seeds' (N, out, in) weights and do each seed's pass with
the same loop as for one seed alone, so a seed's numbers do not depend on how
many others are stacked with it. Where the code cannot be built, callers use
PyTorch ops, with a warning.
"""
from __future__ import annotations

import hashlib
import importlib.util
import logging
import os
import platform
import sys
import warnings
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch

_SOURCE = r"""
#include <torch/extension.h>
#include <omp.h>
#include <cmath>
#include <vector>

// Matrices smaller than this are done by one thread: waking others costs more than their share
// (and a thread of a busy machine may not wake soon). Thread 0's partial sums then hold everything;
// the others' stay zero, which adds nothing.
constexpr int64_t PARALLEL_MIN = 262144;

// One pass over W (n x m, row-major): optionally g_j = sum_k d_k W_kj with the old W (BACK), then
// W_kj <- f W_kj - lr d_k h_j and, with SUMS, rows_k = sum_j |W_kj|, cols_j = sum_k |W_kj| (new W).
template <typename T, bool BACK, bool SUMS>
void run(T* w, const T* d, const T* h, T lr, T f, T* rows, T* cols, T* g, int64_t n, int64_t m) {
  constexpr int per = (SUMS ? 1 : 0) + (BACK ? 1 : 0);
  const int nt = omp_get_max_threads();
  std::vector<T> part(static_cast<size_t>(nt) * m * per, T(0));
  #pragma omp parallel if (n * m >= PARALLEL_MIN)
  {
    T* acc = part.data() + static_cast<size_t>(omp_get_thread_num()) * m * per;
    T* gacc = SUMS ? acc + m : acc;
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
        if (SUMS) {
          const T av = std::abs(v);
          s += av;
          acc[j] += av;
        }
      }
      if (SUMS) rows[k] = s;
    }
  }
  if (per == 0) return;
  const size_t stride = static_cast<size_t>(m) * per;
  for (int64_t j = 0; j < m; ++j) {
    T s = 0, t = 0;
    for (int p = 0; p < nt; ++p) {
      if (SUMS) s += part[p * stride + j];
      if (BACK) t += part[p * stride + (SUMS ? m : 0) + j];
    }
    if (SUMS) cols[j] = s;
    if (BACK) g[j] = t;
  }
}

template <typename T>
void update(bool back, bool sums, T* w, const T* d, const T* h, T lr, T f, T* rows, T* cols, T* g, int64_t n, int64_t m) {
  if (back && sums) run<T, true, true>(w, d, h, lr, f, rows, cols, g, n, m);
  else if (sums) run<T, false, true>(w, d, h, lr, f, rows, cols, g, n, m);
  else if (back) run<T, true, false>(w, d, h, lr, f, rows, cols, g, n, m);
  else run<T, false, false>(w, d, h, lr, f, rows, cols, g, n, m);
}

void update_abs_sums(torch::Tensor w, torch::Tensor d, torch::Tensor h, double lr, double f,
                     torch::Tensor rows, torch::Tensor cols, torch::Tensor g) {
  // w: (n, m) or (seeds, n, m) stacked; d, h, rows, cols, g: one row per seed, all contiguous.
  TORCH_CHECK((w.dim() == 2 || w.dim() == 3) && w.is_contiguous() && d.is_contiguous() && h.is_contiguous() &&
              rows.is_contiguous() && cols.is_contiguous() && g.is_contiguous(), "contiguous 2-d or 3-d weights");
  const bool back = g.numel() > 0;
  const int64_t seeds = w.dim() == 3 ? w.size(0) : 1, n = w.size(-2), m = w.size(-1);
  TORCH_CHECK(d.numel() == seeds * n && rows.numel() == seeds * n && h.numel() == seeds * m && cols.numel() == seeds * m &&
              (!back || g.numel() == seeds * m), "one (out) and (in) vector per seed");
  AT_DISPATCH_FLOATING_TYPES(w.scalar_type(), "update_abs_sums", [&] {
    for (int64_t s = 0; s < seeds; ++s) {
      update<scalar_t>(back, true, w.data_ptr<scalar_t>() + s * n * m, d.data_ptr<scalar_t>() + s * n,
                       h.data_ptr<scalar_t>() + s * m, static_cast<scalar_t>(lr), static_cast<scalar_t>(f),
                       rows.data_ptr<scalar_t>() + s * n, cols.data_ptr<scalar_t>() + s * m,
                       back ? g.data_ptr<scalar_t>() + s * m : nullptr, n, m);
    }
  });
}

// z = W h + b for one seed's layer (one output per row: each a dot product done by one thread).
template <typename T>
void forward(const T* w, const T* b, const T* h, T* z, int64_t n, int64_t m) {
  #pragma omp parallel for schedule(static) if (n * m >= PARALLEL_MIN)
  for (int64_t k = 0; k < n; ++k) {
    const T* row = w + k * m;
    T s = 0;
    #pragma omp simd reduction(+:s)
    for (int64_t j = 0; j < m; ++j) s += row[j] * h[j];
    z[k] = b ? b[k] + s : s;
  }
}

// The activations with built-in code: 0 relu, 1 tanh, 2 sigmoid, 3 linear (phi and phi'(z) given h = phi(z)).
template <typename T>
inline T phi(int64_t a, T z) {
  switch (a) {
    case 0: return z < T(0) ? T(0) : z;  // NaN passes through, as torch's relu
    case 1: return std::tanh(z);
    case 2: return T(1) / (T(1) + std::exp(-z));
    default: return z;
  }
}

template <typename T>
inline T dphi(int64_t a, T z, T h) {
  switch (a) {
    case 0: return z > T(0) ? T(1) : T(0);
    case 1: return T(1) - h * h;
    case 2: return h * (T(1) - h);
    default: return T(1);
  }
}

std::vector<torch::Tensor> online_step(torch::Tensor x, torch::Tensor y, std::vector<torch::Tensor> weights,
                                       std::vector<torch::Tensor> biases, torch::Tensor mask, int64_t act, bool mse,
                                       double lr, double f, std::vector<torch::Tensor> rows,
                                       std::vector<torch::Tensor> cols) {
  // x (N, in) and y (N,) (int64 classes, or floating targets with mse); weights[l] (N, out_l, in_l); biases[l]
  // (N, out_l) or empty; mask (N, out) or empty; rows/cols: per layer (N, out_l) / (N, in_l), or no layers.
  // Returns loss (N,), correct (N,), logits (N, 1, out), each hidden layer's features (N, 1, h_l) and each
  // layer's delta (N, 1, out_l), bottom layer first.
  const int64_t L = weights.size(), N = x.size(0);
  const bool sums = !rows.empty();
  TORCH_CHECK(L > 0, "at least one layer");
  TORCH_CHECK(x.dim() == 2 && x.is_contiguous() && y.dim() == 1 && y.size(0) == N && y.is_contiguous(), "x (N, in), y (N,)");
  TORCH_CHECK(static_cast<int64_t>(biases.size()) == L && (!sums || (static_cast<int64_t>(rows.size()) == L &&
              static_cast<int64_t>(cols.size()) == L)), "one bias (and |W| sums) entry per layer");
  for (int64_t l = 0; l < L; ++l) {
    TORCH_CHECK(weights[l].dim() == 3 && weights[l].size(0) == N && weights[l].is_contiguous() &&
                weights[l].scalar_type() == x.scalar_type(), "contiguous (N, out, in) weights of x's dtype");
    TORCH_CHECK(weights[l].size(2) == (l ? weights[l - 1].size(1) : x.size(1)), "layer shapes chain");
    TORCH_CHECK(biases[l].numel() == 0 || (biases[l].is_contiguous() && biases[l].numel() == N * weights[l].size(1)),
                "contiguous (N, out) biases");
    TORCH_CHECK(weights[l].device() == x.device() && (biases[l].numel() == 0 || biases[l].device() == x.device()),
                "x, weights and biases on one device");
    TORCH_CHECK(!sums || (rows[l].is_contiguous() && cols[l].is_contiguous() && rows[l].numel() == N * weights[l].size(1) &&
                          cols[l].numel() == N * weights[l].size(2)), "contiguous (N, out) and (N, in) |W| sums");
  }
  const int64_t C = weights[L - 1].size(1);
  TORCH_CHECK(!mse || C == 1, "the mean squared error of one output");
  TORCH_CHECK(mask.numel() == 0 || (mask.is_contiguous() && mask.numel() == N * C), "an (N, out) mask");
  if (!mse) {  // every target checked before any seed's weights change
    TORCH_CHECK(y.scalar_type() == torch::kLong, "int64 class targets");
    const int64_t* t = y.data_ptr<int64_t>();
    for (int64_t s = 0; s < N; ++s) TORCH_CHECK(t[s] >= 0 && t[s] < C, "target ", t[s], " is out of bounds for ", C, " classes");
  }
  auto opts = x.options();
  std::vector<torch::Tensor> zs, hs, ds;
  for (int64_t l = 0; l < L; ++l) {
    const int64_t out = weights[l].size(1);
    zs.push_back(l + 1 < L ? torch::empty({N, out}, opts) : torch::empty({N, 1, out}, opts));
    if (l + 1 < L) hs.push_back(torch::empty({N, 1, out}, opts));
    ds.push_back(torch::empty({N, 1, out}, opts));
  }
  auto loss = torch::empty({N}, opts);
  auto correct = torch::zeros({N}, opts.dtype(torch::kLong));
  AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "online_step", [&] {
    using T = scalar_t;
    const T a_lr = static_cast<T>(lr), a_f = static_cast<T>(f);
    std::vector<T> e(C);
    for (int64_t s = 0; s < N; ++s) {
      const T* h = x.data_ptr<T>() + s * x.size(1);
      for (int64_t l = 0; l < L; ++l) {
        const int64_t out = weights[l].size(1), in = weights[l].size(2);
        T* z = zs[l].data_ptr<T>() + s * out;
        const T* b = biases[l].numel() ? biases[l].data_ptr<T>() + s * out : nullptr;
        forward<T>(weights[l].data_ptr<T>() + s * out * in, b, h, z, out, in);
        if (l + 1 < L) {
          T* hl = hs[l].data_ptr<T>() + s * out;
          for (int64_t k = 0; k < out; ++k) hl[k] = phi<T>(act, z[k]);
          h = hl;
        }
      }
      T* z = zs[L - 1].data_ptr<T>() + s * C;
      if (mask.numel()) {
        const T* mk = mask.data_ptr<T>() + s * C;
        for (int64_t c = 0; c < C; ++c) z[c] += mk[c];
      }
      T* d = ds[L - 1].data_ptr<T>() + s * C;
      if (mse) {
        const T diff = z[0] - y.data_ptr<T>()[s];
        loss.data_ptr<T>()[s] = diff * diff;
        d[0] = T(2) * diff;
      } else {  // cross-entropy: loss = logsumexp(z) - z_y, dL/dz = softmax(z) - onehot(y)
        const int64_t target = y.data_ptr<int64_t>()[s];
        T mx = z[0];
        int64_t arg = 0;
        for (int64_t c = 1; c < C; ++c) if (z[c] > mx) { mx = z[c]; arg = c; }
        T total = 0;
        for (int64_t c = 0; c < C; ++c) { e[c] = std::exp(z[c] - mx); total += e[c]; }
        loss.data_ptr<T>()[s] = std::log(total) + mx - z[target];
        for (int64_t c = 0; c < C; ++c) d[c] = e[c] / total;
        d[target] -= T(1);
        correct.data_ptr<int64_t>()[s] = arg == target;
      }
      for (int64_t l = L - 1; l >= 0; --l) {  // from the top down: each delta below from the old W, then W's update
        const int64_t out = weights[l].size(1), in = weights[l].size(2);
        T* dl = ds[l].data_ptr<T>() + s * out;
        if (biases[l].numel()) {
          T* b = biases[l].data_ptr<T>() + s * out;
          for (int64_t k = 0; k < out; ++k) b[k] = (a_f != T(1) ? b[k] * a_f : b[k]) + (-a_lr) * dl[k];
        }
        const T* hin = l ? hs[l - 1].data_ptr<T>() + s * in : x.data_ptr<T>() + s * in;
        T* below = l ? ds[l - 1].data_ptr<T>() + s * in : nullptr;
        update<T>(l > 0, sums, weights[l].data_ptr<T>() + s * out * in, dl, hin, a_lr, a_f,
                  sums ? rows[l].data_ptr<T>() + s * out : nullptr, sums ? cols[l].data_ptr<T>() + s * in : nullptr,
                  below, out, in);
        if (l) {
          const T* zl = zs[l - 1].data_ptr<T>() + s * in;
          for (int64_t j = 0; j < in; ++j) below[j] *= dphi<T>(act, zl[j], hin[j]);
        }
      }
    }
  });
  std::vector<torch::Tensor> result{loss, correct, zs[L - 1]};
  result.insert(result.end(), hs.begin(), hs.end());
  result.insert(result.end(), ds.begin(), ds.end());
  return result;
}
"""

KERNEL_CODES = {"relu": 0, "tanh": 1, "sigmoid": 2, "linear": 3}
"""The activations with built-in code in ``online_step`` (``phi`` above), by
the name an activation's registration gives as ``kernel``."""

_kernel: Any = None
failure: str | None = None
"""Why the code could not be built (None: built, or not tried yet)."""


def _tag() -> str:
    """A short hash of this CPU's model and instruction-set flags, the source, torch's and Python's versions:
    the build uses ``-march=native`` (the |W|-sums loop then costs ~0.4 ms instead of ~1.2 ms per step on
    the paper's net), so a home directory shared by different CPUs or environments keeps one build for
    each, and a changed source gets a new build, never a stale one."""
    try:
        info = Path("/proc/cpuinfo").read_text()
        ident = next((line for line in info.splitlines() if line.startswith(("flags", "Features"))), info[:2000])
    except OSError:
        ident = platform.processor() or platform.machine()
    return hashlib.sha1("\n".join([ident, _SOURCE, torch.__version__, sys.version]).encode()).hexdigest()[:16]


@contextmanager
def _cpp_extension():
    """torch.utils.cpp_extension, imported without the CUDA notes it logs on import (this code is CPU-only)."""
    log = logging.getLogger("torch.utils.cpp_extension")
    level = log.level
    log.setLevel(logging.ERROR)
    try:
        from torch.utils import cpp_extension

        yield cpp_extension
    finally:
        log.setLevel(level)


def _load_built(name: str) -> Any:
    """Extension ``name`` as an earlier process built it (None where none was): loaded
    directly, as cpp_extension itself loads it, but without its rebuild check, which runs
    ninja and writes files (in every process, and failing where files cannot grow)."""
    with _cpp_extension() as cpp:
        root = Path(os.environ.get("TORCH_EXTENSIONS_DIR") or cpp.get_default_build_root())
    for so in sorted(root.glob(f"*/{name}/{name}*.so"), key=lambda p: p.stat().st_mtime, reverse=True):
        spec = importlib.util.spec_from_file_location(so.stem, so)  # its module name is its file's (name or name_vN)
        try:
            module = importlib.util.module_from_spec(spec)
            spec.loader.exec_module(module)
            return module
        except ImportError:  # half-written by a build in progress: build (cpp_extension waits for it)
            continue
    return None


def kernel() -> Any:
    """The compiled extension (built once per machine), or None where it cannot be built."""
    global _kernel, failure
    if _kernel is None and failure is None:
        name = f"plasticity_lab_kernels_{_tag()}"
        builds = ((name, ["-O3", "-march=native", "-fopenmp"]), (name + "_portable", ["-O3", "-fopenmp"]))
        _kernel = next((k for k in (_load_built(n) for n, _ in builds) if k is not None), None)
        if _kernel is None:
            print("plasticity-lab: building its compiled CPU step (once per machine, ~1 min)", file=sys.stderr, flush=True)
        for build, flags in builds if _kernel is None else ():
            try:
                with _cpp_extension() as cpp:
                    _kernel = cpp.load_inline(build, cpp_sources=_SOURCE, functions=["update_abs_sums", "online_step"],
                                              extra_cflags=flags, extra_ldflags=["-fopenmp"])
                break
            except Exception as err:  # no compiler or ninja: PyTorch ops compute the same, slower
                failure = f"{type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''}"
        if _kernel is None:
            warnings.warn(f"the lab's compiled CPU code could not be built ({failure}); the fused batch-1 step and "
                          "continual backprop's |W| sums use PyTorch ops (several times slower per step)")
        else:
            failure = None
    return _kernel
