"""Propulsion layers: a frozen base layer whose output is scaled per output unit by z**k."""

from __future__ import annotations

import warnings
from typing import Any, Optional

import torch
import torch.nn.functional as F
from peft.tuners.tuners_utils import BaseTunerLayer, check_adapters_to_merge
from torch import nn
from transformers.pytorch_utils import Conv1D

SUPPORTED_BASE_LAYERS = (nn.Linear, nn.Embedding, Conv1D)
# Keep a layer's output (shared with downstream ops) instead of its input for the backward pass of z. Set to False
# for a model that modifies a wrapped layer's output in place (autograd then raises "modified by an inplace
# operation"); the plain multiply keeps one more activation per wrapped layer.
SAVE_OUTPUT_FOR_BACKWARD = True
# Training through a frozen nn.Linear scales the weight (out x in) rather than the output (tokens x out):
# see _ScaledLinear. False keeps the plain "base layer, then multiply" path everywhere (same values).
FUSE_LINEAR = True


def output_axis_of_weight(base_layer: nn.Module) -> int:
    """The axis of ``base_layer.weight`` that indexes output units (what z scales)."""
    if isinstance(base_layer, nn.Linear):
        return 0  # (out_features, in_features)
    if isinstance(base_layer, (nn.Embedding, Conv1D)):
        return 1  # (num_embeddings, embedding_dim) / (in_features, out_features)
    raise TypeError(
        f"Propulsion supports {', '.join(c.__name__ for c in SUPPORTED_BASE_LAYERS)}, not {type(base_layer).__name__}"
    )


def _grad_of_scale(grad: torch.Tensor, output: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """d loss / d scale for ``output = result * scale``: sum(grad * result) = sum(grad * output) / scale, summed in
    float32 over every axis but the last. Where scale == 0 the output carries no trace of the input; d(z**k)/dz
    is 0 there anyway for k > 1, so the gradient is set to 0 (in place: no zeros tensor, no ``where``)."""
    summed = (grad * output).reshape(-1, output.shape[-1]).sum(0, dtype=torch.float32)
    s = scale.float()
    return summed.div_(s).masked_fill_(s == 0, 0.0).to(scale.dtype)


def _grad_of_z(grad_scale: torch.Tensor, z: torch.Tensor, degree: int) -> torch.Tensor:
    """d loss / d z from d loss / d (z**k): autograd's own formula for ``pow`` (grad * (k * z**(k-1)), the exponent
    as a double), so a layer that computes z**k inside its autograd function trains z exactly as before."""
    k = float(degree)
    return grad_scale * (k * z.pow(k - 1.0))


def _weight_times(weight: torch.Tensor, scale: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """``(weight * scale[:, None]).to(dtype)`` in one kernel: the product is computed in weight's dtype and rounded
    once on the write, exactly as the separate cast would round it."""
    out = torch.empty(weight.shape, dtype=dtype, device=weight.device)
    return torch.mul(weight, scale.to(weight.dtype).unsqueeze(1), out=out)


def _autocast_dtype(x: torch.Tensor, dtype: torch.dtype) -> torch.dtype:
    """The dtype F.linear would cast its weight to: autocast's for x's device when it is on, else ``dtype``."""
    device = x.device.type
    if torch.is_autocast_enabled(device):
        return torch.get_autocast_dtype(device)
    return dtype


class _ScaleOutput(torch.autograd.Function):
    """``result * scale`` that keeps its *output* (not its input) for the backward pass.

    The gradient of the scale is sum(grad * result) = sum(grad * output) / scale. Downstream ops usually keep the
    output alive anyway (GELU, attention), so the layer adds no saved activation of its own; a plain multiply would
    keep ``result`` as an extra copy per wrapped layer.
    """

    @staticmethod
    def forward(ctx, result: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
        output = result * scale
        ctx.save_for_backward(output, scale)
        return output

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad: torch.Tensor):
        output, scale = ctx.saved_tensors
        grad_result = grad * scale if ctx.needs_input_grad[0] else None
        grad_scale = _grad_of_scale(grad, output, scale) if ctx.needs_input_grad[1] else None
        return grad_result, grad_scale


class _ScaledLinear(torch.autograd.Function):
    """``F.linear(x, diag(s) W, s * b)`` for a frozen ``nn.Linear``: the scale goes into the weight, not the output.

    Scaling the (out x in) weight costs less than scaling the (tokens x out) output whenever a batch holds more tokens
    than the layer has inputs, and the backward pass needs no extra output-sized pass for the input gradient
    (``grad @ (diag(s) W)`` is the matmul a frozen layer does anyway). The gradient of s is, as in
    :class:`_ScaleOutput`, sum(grad * output) / s from the kept output. Only for frozen weight and bias (the
    weight gradient would need the input, which this function does not keep).

    Given ``z`` and the degree k, it computes ``s = z**k`` itself and returns the gradient of z (autograd's formula
    for ``pow``, see :func:`_grad_of_z`): one autograd node per layer instead of two. Under autocast the scaled
    weight (and bias) are written straight in the autocast dtype (one kernel each instead of a multiply and a cast,
    the same rounding), and so is the weight the backward pass rebuilds.
    """

    @staticmethod
    def forward(ctx, x: torch.Tensor, weight: torch.Tensor, bias: Optional[torch.Tensor], z: torch.Tensor,
                degree: int):
        scale = z.pow(degree)
        dtype = _autocast_dtype(x, weight.dtype)
        w = _weight_times(weight, scale, dtype)
        if bias is not None:
            b = torch.mul(bias, scale.to(bias.dtype), out=torch.empty(bias.shape, dtype=dtype, device=bias.device))
        else:
            b = None
        output = F.linear(x, w, b)  # autocast (if on) casts x as it would for the base layer; w and b are cast already
        ctx.save_for_backward(output, scale, weight, z)
        ctx.x_dtype = x.dtype
        ctx.degree = degree
        return output

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad: torch.Tensor):
        output, scale, weight, z = ctx.saved_tensors
        grad_x = grad_z = None
        if ctx.needs_input_grad[0]:
            grad_x = (grad @ _weight_times(weight, scale, grad.dtype)).to(ctx.x_dtype)
        if ctx.needs_input_grad[3]:
            grad_z = _grad_of_z(_grad_of_scale(grad, output, scale), z, ctx.degree)
        return grad_x, None, None, grad_z, None


def _fusable_linear(base: nn.Module) -> bool:
    """A plain frozen nn.Linear without hooks: its forward can be replaced by :class:`_ScaledLinear`."""
    return (
        type(base) is nn.Linear
        and not base.weight.requires_grad
        and (base.bias is None or not base.bias.requires_grad)
        and not base._forward_hooks
        and not base._forward_pre_hooks
    )


class PropulsionLayer(BaseTunerLayer):
    """Mixin holding the per-adapter vectors ``propulsion_z[adapter]`` and degrees of one wrapped layer."""

    adapter_layer_names = ("propulsion_z",)
    other_param_names = ("propulsion_degree",)

    def __init__(self, base_layer: nn.Module, **kwargs) -> None:
        self.base_layer = base_layer
        self.propulsion_z = nn.ParameterDict({})
        self.propulsion_degree: dict[str, int] = {}
        self._disable_adapters = False
        self.merged_adapters = []
        base = self.get_base_layer()
        self._out_axis = output_axis_of_weight(base)
        self.out_features = base.weight.shape[self._out_axis]

    def update_layer(self, adapter_name: str, degree: int, init_weights: bool = True, inference_mode: bool = False):
        if isinstance(degree, bool) or not isinstance(degree, int) or degree < 1:
            raise ValueError(f"degree must be a positive integer, got {degree!r}")
        z = torch.ones(self.out_features)
        if not init_weights:
            z = z + 0.02 * torch.randn(self.out_features)
        self.propulsion_z[adapter_name] = nn.Parameter(z)
        self.propulsion_degree[adapter_name] = int(degree)
        self._move_adapter_to_device_of_base_layer(adapter_name)
        self.set_adapter(self.active_adapters, inference_mode=inference_mode)

    def get_scale(self, adapter_name: str) -> torch.Tensor:
        """z**k of one adapter (length out_features); differentiable."""
        return self.propulsion_z[adapter_name].pow(self.propulsion_degree[adapter_name])

    def _scale_of(self, adapter_names) -> Optional[torch.Tensor]:
        scale = None
        for name in adapter_names:
            if name not in self.propulsion_z:
                continue
            s = self.get_scale(name)
            scale = s if scale is None else scale * s
        return scale

    # -- merging -----------------------------------------------------------------------------------------------
    def _rescale_base(self, scale: torch.Tensor, divide: bool) -> None:
        """weight (along the output axis) and bias times (or divided by) ``scale``, computed in float32."""
        base = self.get_base_layer()
        shape = [1] * base.weight.dim()
        shape[self._out_axis] = -1
        tensors = [(base.weight, scale.reshape(shape))]
        if getattr(base, "bias", None) is not None and not isinstance(base, nn.Embedding):
            tensors.append((base.bias, scale))
        for param, s in tensors:
            s = s.to(device=param.device, dtype=torch.float32)
            value = param.data.float() / s if divide else param.data.float() * s
            param.data.copy_(value.to(param.dtype))

    def merge(self, safe_merge: bool = False, adapter_names: Optional[list[str]] = None) -> None:
        """Fold z**k into the base layer: W' = diag(z**k) W, b' = z**k * b (embedding columns: E' = E * z**k)."""
        adapter_names = check_adapters_to_merge(self, adapter_names)
        for name in adapter_names:
            if name not in self.propulsion_z:
                continue
            scale = self.get_scale(name).detach().float()
            if safe_merge and not (torch.isfinite(scale).all() and (scale != 0).all()):
                raise ValueError(
                    f"z**k of adapter {name!r} has zeros or non-finite entries; merging would lose the base weights."
                )
            self._rescale_base(scale, divide=False)
            self.merged_adapters.append(name)

    def unmerge(self) -> None:
        """Divide the merged scales back out (exact up to float32 rounding of the weights)."""
        if not self.merged:
            warnings.warn("Already unmerged. Nothing to do.", stacklevel=2)
            return
        while self.merged_adapters:
            name = self.merged_adapters[-1]
            if name in self.propulsion_z:
                scale = self.get_scale(name).detach().float()
                if not (scale != 0).all():
                    raise ValueError(
                        f"Cannot unmerge adapter {name!r}: z**k is 0 for some units, so those weights were zeroed by "
                        "the merge. Reload the base model instead."
                    )
                self._rescale_base(scale, divide=True)
            self.merged_adapters.pop()

    # -- forward -----------------------------------------------------------------------------------------------
    def forward(self, x: torch.Tensor, *args: Any, **kwargs: Any) -> torch.Tensor:
        if self.disable_adapters:
            if self.merged:
                self.unmerge()
            return self.base_layer(x, *args, **kwargs)
        active = [a for a in self.active_adapters if a not in self.merged_adapters and a in self.propulsion_z]
        if (
            len(active) == 1
            and FUSE_LINEAR
            and SAVE_OUTPUT_FOR_BACKWARD
            and not args
            and not kwargs
            and torch.is_grad_enabled()
            and self.propulsion_z[active[0]].requires_grad
            and _fusable_linear(self.base_layer)
        ):  # training one adapter: z**k, the scaled weight and the matmul in one autograd node
            base = self.base_layer
            return _ScaledLinear.apply(x, base.weight, base.bias, self.propulsion_z[active[0]],
                                       self.propulsion_degree[active[0]])
        scale = self._scale_of(active)
        result = self.base_layer(x, *args, **kwargs)
        if scale is None:
            return result
        scale = scale.to(result.dtype)
        if SAVE_OUTPUT_FOR_BACKWARD and torch.is_grad_enabled() and scale.requires_grad:
            return _ScaleOutput.apply(result, scale)
        return result * scale  # the one elementwise multiply; broadcasts over the last axis


class Linear(nn.Module, PropulsionLayer):
    """Propulsion around ``nn.Linear`` (or transformers ``Conv1D``): y = (x W^T + b) * z**k."""

    def __init__(self, base_layer: nn.Module, adapter_name: str, degree: int, init_weights: bool = True, **kwargs):
        super().__init__()
        PropulsionLayer.__init__(self, base_layer, **kwargs)
        self._active_adapter = adapter_name
        self.update_layer(adapter_name, degree, init_weights=init_weights)

    forward = PropulsionLayer.forward

    def __repr__(self) -> str:
        return "propulsion." + super().__repr__()


class Embedding(nn.Module, PropulsionLayer):
    """Propulsion around ``nn.Embedding``: y = E[ids] * z**k, one z per embedding dimension (column of E)."""

    def __init__(self, base_layer: nn.Module, adapter_name: str, degree: int, init_weights: bool = True, **kwargs):
        super().__init__()
        PropulsionLayer.__init__(self, base_layer, **kwargs)
        self._active_adapter = adapter_name
        self.update_layer(adapter_name, degree, init_weights=init_weights)

    forward = PropulsionLayer.forward

    def __repr__(self) -> str:
        return "propulsion." + super().__repr__()
