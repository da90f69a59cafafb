"""The one unit-reset helper every reset method uses (continual backprop, ReDo, ...).

Resetting hidden unit j of a layer means (Dohare et al. 2024; Sokar et al. 2023):
incoming weights re-sampled from the layer's initialiser (U(-b, b)), its bias
set to 0, its outgoing weights set to 0 (the network's function is unchanged at
the moment of the reset), the per-unit entries of a following normalisation
layer reset (gain 1, bias 0; BatchNorm running mean 0, var 1), and the
optimizer state of exactly those entries cleared: SGD momentum buffers, Adam /
AdamW ``exp_avg`` and ``exp_avg_sq``, Adagrad ``sum`` (to its initial value).
torch's Adam keeps one ``step`` per tensor, not per entry, so the step count is
left alone (as ReDo's reference code does); the new entries then start with
zero moments and the tensor's bias correction.
"""
from __future__ import annotations

import torch
from torch import nn

from plasticity_lab.agents.networks import UnitLayer


def outgoing_columns(units: torch.Tensor, count: int) -> torch.Tensor:
    """Columns of the next layer fed by ``units`` (``count`` consecutive each,
    as after CReLU's concatenation or a conv->flatten boundary)."""
    if count == 1:
        return units
    return (units[:, None] * count + torch.arange(count, device=units.device)).flatten()


def concat_columns(units: torch.Tensor, width: int, copies: int) -> torch.Tensor:
    """Columns of ``units`` when the activation concatenates ``copies`` views of a ``width``-unit layer."""
    return torch.cat([units + c * width for c in range(copies)])


@torch.no_grad()
def reset_units(layer: UnitLayer, units: torch.Tensor, optimizer: torch.optim.Optimizer | None) -> None:
    """Re-initialise hidden ``units`` of ``layer`` and clear their optimizer state.

    For width-multiplying activations (CReLU: [relu(x), relu(-x)]) unit j
    feeds columns j and j + H; across a conv->flatten boundary channel c feeds
    P consecutive columns (``layer.consecutive``). Conv weights are indexed
    the same way on their channel axes (out-channels in, in-channels out).
    """
    if units.numel() == 0:
        return
    units = units.to(layer.incoming.weight.device).long()
    w_in = layer.incoming.weight
    rows = torch.empty((len(units), *w_in.shape[1:]), device=w_in.device, dtype=w_in.dtype)
    layer.draw(rows)
    w_in[units] = rows
    entries: list[tuple[nn.Parameter, int, torch.Tensor]] = [(w_in, 0, units)]
    if layer.incoming.bias is not None:
        layer.incoming.bias[units] = 0.0
        entries.append((layer.incoming.bias, 0, units))
    width = w_in.shape[0]
    if layer.fan_out_per_unit > 1 and not layer.consecutive:
        cols = concat_columns(units, width, layer.fan_out_per_unit)
    else:
        cols = outgoing_columns(units, layer.fan_out_per_unit)
    w_out = layer.outgoing.weight
    w_out[:, cols] = 0.0
    entries.append((w_out, 1, cols))
    if layer.norm is not None:
        _reset_norm(layer.norm, units)
        entries += [(p, 0, units) for p in (layer.norm.weight, layer.norm.bias) if p is not None]
    if optimizer is not None:
        for param, dim, idx in entries:
            clear_state(optimizer, param, dim, idx)


def _reset_norm(norm: nn.Module, units: torch.Tensor) -> None:
    if getattr(norm, "weight", None) is not None:
        norm.weight[units] = 1.0
    if getattr(norm, "bias", None) is not None:
        norm.bias[units] = 0.0
    if isinstance(norm, nn.modules.batchnorm._BatchNorm) and norm.running_mean is not None:
        norm.running_mean[units] = 0.0
        norm.running_var[units] = 1.0


@torch.no_grad()
def clear_state(optimizer: torch.optim.Optimizer, param: torch.Tensor, dim: int, idx: torch.Tensor) -> None:
    """Zero every per-entry state tensor of ``param`` at ``idx`` along ``dim``
    (Adagrad's ``sum`` goes back to its ``initial_accumulator_value``)."""
    state = optimizer.state.get(param)
    if not state:
        return
    initial = 0.0
    for group in optimizer.param_groups:
        if any(p is param for p in group["params"]):
            initial = float(group.get("initial_accumulator_value", 0.0))
    for key, value in state.items():
        if isinstance(value, torch.Tensor) and value.shape == param.shape:
            value.index_fill_(dim, idx, initial if key == "sum" else 0.0)


def per_unit(h: torch.Tensor, units: int) -> torch.Tensor:
    """(batch, units) view of a layer's output: conv maps averaged over space;
    concatenating activations (CReLU) summed over their copies of a unit."""
    if h.dim() > 2:
        h = h.flatten(2).mean(2)
    if h.shape[1] != units:
        h = h.view(h.shape[0], -1, units).abs().sum(1)
    return h
