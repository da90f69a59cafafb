"""The fused SGD update + |W| row/column sums (agents/abs_sums.py) against PyTorch's separate ops."""
import shutil

import pytest
import torch

from plasticity_lab.agents import abs_sums, kernels


@pytest.mark.skipif(shutil.which("c++") is None and shutil.which("g++") is None, reason="no C++ compiler here")
def test_the_kernel_builds_where_a_compiler_is():
    assert kernels.kernel() is not None, kernels.failure


@pytest.mark.parametrize("dtype, tol", [(torch.float32, 1e-5), (torch.float64, 1e-12)])
@pytest.mark.parametrize("shape", [(7, 13), (300, 37), (10, 2000)])
@pytest.mark.parametrize("factor", [1.0, 0.999])
def test_update_and_sums_equal_the_separate_ops(dtype, tol, shape, factor):
    g = torch.Generator().manual_seed(0)
    w = torch.randn(*shape, generator=g, dtype=dtype)
    d, h = torch.randn(shape[0], generator=g, dtype=dtype), torch.rand(shape[1], generator=g, dtype=dtype)
    expected = w.clone().addr_(d, h, beta=factor, alpha=-0.1)
    expected_back = d @ w
    rows, cols = torch.empty(shape[0], dtype=dtype), torch.empty(shape[1], dtype=dtype)
    back = torch.empty(shape[1], dtype=dtype)
    abs_sums.update_with_abs_sums(w, d, h, 0.1, factor, rows, cols, back)
    assert torch.allclose(w, expected, rtol=tol, atol=tol)
    assert torch.allclose(back, expected_back, rtol=tol, atol=tol * 10)  # with the weights before the update
    assert torch.allclose(rows, expected.abs().sum(1), rtol=tol)
    assert torch.allclose(cols, expected.abs().sum(0), rtol=tol)


def test_a_strided_view_takes_the_pytorch_ops_and_agrees():
    """A non-contiguous weight (e.g. a transposed view) is updated by ``addr_``: same result."""
    w = torch.randn(20, 30).t()
    d, h = torch.randn(30), torch.rand(20)
    expected = w.clone().addr_(d, h, alpha=-0.1)
    expected_back = d @ w
    rows, cols, back = torch.empty(30), torch.empty(20), torch.empty(20)
    abs_sums.update_with_abs_sums(w, d, h, 0.1, 1.0, rows, cols, back)
    assert torch.allclose(w, expected) and torch.allclose(rows, expected.abs().sum(1))
    assert torch.allclose(back, expected_back)
    assert torch.allclose(cols, expected.abs().sum(0))


@pytest.mark.parametrize("stacked", ["contiguous", "strided"])
def test_stacked_seeds_in_one_call_equal_each_seed_alone(stacked):
    """(N, out, in) weights: one call updates every seed as N calls on its slices would.
    Contiguous: the kernel, each seed's pass the same loop as alone, so equal exactly;
    strided (a transposed view): the PyTorch ops, whose batched product may sum in
    another order than one seed's, so equal to float32 rounding (1e-6)."""
    g = torch.Generator().manual_seed(1)
    w = torch.randn(3, 40, 25, generator=g)
    if stacked == "strided":
        w = w.transpose(1, 2).contiguous().transpose(1, 2)
    d, h = torch.randn(3, 40, generator=g), torch.rand(3, 25, generator=g)
    alone = w.clone()
    rows, cols, back = torch.empty(3, 40), torch.empty(3, 25), torch.empty(3, 25)
    a_rows, a_cols, a_back = torch.empty(3, 40), torch.empty(3, 25), torch.empty(3, 25)
    for i in range(3):
        abs_sums.update_with_abs_sums(alone[i], d[i], h[i], 0.1, 0.999, a_rows[i], a_cols[i], a_back[i])
    abs_sums.update_with_abs_sums(w, d, h, 0.1, 0.999, rows, cols, back)
    tol = 0.0 if stacked == "contiguous" and kernels.kernel() is not None else 1e-6
    for got, want in ((w, alone), (rows, a_rows), (cols, a_cols), (back, a_back)):
        assert torch.allclose(got, want, rtol=tol, atol=tol)
