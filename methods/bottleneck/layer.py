"""Bottleneck adapter layers: a frozen output projection plus W_up f(W_down u) added to its output."""

from __future__ import annotations

from typing import Any, Optional

import torch
import torch.nn.functional as F
from peft.tuners.tuners_utils import BaseTunerLayer
from torch import nn

ACTIVATIONS = {"relu": F.relu, "gelu": F.gelu, "tanh": torch.tanh, "silu": F.silu}
CANNOT_MERGE = (
    "bottleneck adapters cannot merge: W_up f(W_down u) has a nonlinearity f between its two matrices, so it is no "
    "weight delta of the frozen layer; keep the PeftModel (or save the adapter) instead"
)


class BottleneckLayer(BaseTunerLayer):
    """Mixin holding ``bottleneck_down[adapter]`` (d -> r) and ``bottleneck_up[adapter]`` (r -> d) of one layer.

    series: ``y = h + s * up(f(down(h)))`` with h = base(x). parallel: ``y = h + s * up(f(down(u)))`` with u the
    sub-layer's input, handed over by a forward pre-hook of the sub-layer (``set_sublayer_input``) just before
    this projection runs.
    """

    adapter_layer_names = ("bottleneck_down", "bottleneck_up")
    other_param_names = ("bottleneck_mode", "bottleneck_act", "bottleneck_scaling")

    def __init__(self, base_layer: nn.Module, **kwargs) -> None:
        self.base_layer = base_layer
        self.bottleneck_down = nn.ModuleDict({})
        self.bottleneck_up = nn.ModuleDict({})
        self.bottleneck_mode: dict[str, str] = {}
        self.bottleneck_act: dict[str, str] = {}
        self.bottleneck_scaling: dict[str, float] = {}
        self._disable_adapters = False
        self.merged_adapters = []
        self._sublayer_input: Optional[torch.Tensor] = None
        base = self.get_base_layer()
        if not isinstance(base, nn.Linear):
            raise TypeError(f"bottleneck adapters wrap nn.Linear output projections, not {type(base).__name__}")
        self.in_features = base.in_features
        self.out_features = base.out_features

    def update_layer(self, adapter_name: str, mode: str, r: int, non_linearity: str, scaling: float = 1.0,
                     init_weights: bool = True, inference_mode: bool = False) -> None:
        d = self.out_features  # the residual stream's width: what the adapter reads (series / parallel) and writes
        down = nn.Linear(d, r, bias=True)
        up = nn.Linear(r, d, bias=True)
        nn.init.zeros_(down.bias)
        nn.init.zeros_(up.bias)
        if init_weights:
            nn.init.zeros_(up.weight)  # the adapted model starts equal to the base model
        else:
            nn.init.normal_(up.weight, std=0.02)
        self.bottleneck_down[adapter_name] = down
        self.bottleneck_up[adapter_name] = up
        self.bottleneck_mode[adapter_name] = mode
        self.bottleneck_act[adapter_name] = non_linearity
        self.bottleneck_scaling[adapter_name] = float(scaling)
        self._move_adapter_to_device_of_base_layer(adapter_name)
        self.set_adapter(self.active_adapters, inference_mode=inference_mode)

    def set_sublayer_input(self, x: torch.Tensor) -> None:
        self._sublayer_input = x

    def merge(self, safe_merge: bool = False, adapter_names: Optional[list[str]] = None) -> None:
        raise ValueError(CANNOT_MERGE)

    def unmerge(self) -> None:  # nothing is ever merged
        return None

    def _adapter(self, name: str, u: torch.Tensor) -> torch.Tensor:
        down, up = self.bottleneck_down[name], self.bottleneck_up[name]
        u = u.to(down.weight.dtype)
        return up(ACTIVATIONS[self.bottleneck_act[name]](down(u))) * self.bottleneck_scaling[name]

    def forward(self, x: torch.Tensor, *args: Any, **kwargs: Any) -> torch.Tensor:
        sublayer_input, self._sublayer_input = self._sublayer_input, None
        result = self.base_layer(x, *args, **kwargs)
        if self.disable_adapters:
            return result
        out = result
        for name in self.active_adapters:
            if name not in self.bottleneck_down:
                continue
            if self.bottleneck_mode[name] == "series":
                u = result
            else:
                if sublayer_input is None:
                    raise RuntimeError(
                        "parallel bottleneck adapter: no sub-layer input was recorded before this projection ran "
                        "(its sub-layer's forward pre-hook is missing; was the model rebuilt without peft?)"
                    )
                u = sublayer_input
            out = out + self._adapter(name, u).to(result.dtype)
        return out


class Linear(nn.Module, BottleneckLayer):
    """A bottleneck adapter around an ``nn.Linear`` output projection."""

    def __init__(self, base_layer: nn.Module, adapter_name: str, mode: str, r: int, non_linearity: str,
                 scaling: float = 1.0, init_weights: bool = True, **kwargs):
        super().__init__()
        BottleneckLayer.__init__(self, base_layer, **kwargs)
        self._active_adapter = adapter_name
        self.update_layer(adapter_name, mode, r, non_linearity, scaling=scaling, init_weights=init_weights)

    forward = BottleneckLayer.forward

    def __repr__(self) -> str:
        return "bottleneck." + super().__repr__()
