"""LoraDashModel: peft's LoraModel creating :class:`DashLinear` layers, registered as a peft method.

Registration makes the standard peft API work end to end: ``get_peft_model(model, LoraDashConfig(...))``,
``save_pretrained``, ``PeftModel.from_pretrained`` (needs ``import methods.lora_dash`` first, like any
method registered outside peft), ``merge_and_unload`` / ``merge_adapter`` / ``unmerge_adapter``.
"""

from __future__ import annotations

import time
from typing import Iterator, Optional

import torch
from peft.tuners.lora import LoraModel
from peft.tuners.lora.layer import LoraLayer
from peft.tuners.tuners_utils import BaseTunerLayer
from torch import nn

from methods.lora_dash.config import LoraDashConfig
from methods.lora_dash.layer import DashLinear
from methods.lora_dash.svd import SvdCache, direction_change, select_directions
from methods.peft_compat import register_tuner


class LoraDashModel(LoraModel):
    """LoRA with LoRA-Dash layers; everything else (targeting, saving, merging) is peft's LoraModel."""

    prefix: str = "lora_"

    def _create_and_replace(self, lora_config, adapter_name, target, target_name, parent, current_key, **kwargs):
        if isinstance(target, LoraLayer) and not isinstance(target, DashLinear):
            raise ValueError(
                f"{current_key} already carries a plain LoRA adapter; LoRA-Dash adapters cannot share a layer with it"
            )
        return super()._create_and_replace(lora_config, adapter_name, target, target_name, parent, current_key, **kwargs)

    @staticmethod
    def _create_new_module(lora_config, adapter_name, target, **kwargs):
        from transformers.pytorch_utils import Conv1D

        base = target.get_base_layer() if isinstance(target, BaseTunerLayer) else target
        if kwargs.get("loaded_in_8bit") or kwargs.get("loaded_in_4bit") or hasattr(base, "qweight"):
            raise ValueError("LoRA-Dash needs the SVD of an unquantized weight; quantized base layers are not supported")
        if kwargs.get("parameter_name") is not None:
            raise ValueError("LoRA-Dash adapts nn.Linear modules, not nn.Parameters (leave target_parameters unset)")
        kwargs.pop("parameter_name", None)
        if isinstance(base, nn.Linear):
            lora_config.fan_in_fan_out = False
            return DashLinear(target, adapter_name, config=lora_config, **kwargs)
        if isinstance(base, Conv1D):
            lora_config.fan_in_fan_out = True
            return DashLinear(target, adapter_name, config=lora_config, is_target_conv_1d_layer=True, **kwargs)
        raise ValueError(
            f"LoRA-Dash supports torch.nn.Linear and transformers Conv1D targets; got {type(base).__name__}. "
            "Narrow target_modules / target_roles to linear layers."
        )


register_tuner("lora_dash", LoraDashConfig, LoraDashModel, prefix="lora_")


# -- model-level helpers --------------------------------------------------------------------------


def dash_layers(model: nn.Module) -> Iterator[tuple[str, DashLinear]]:
    for name, module in model.named_modules():
        if isinstance(module, DashLinear):
            yield name, module


def _adapters(model: nn.Module, adapter: Optional[str]) -> list[str]:
    if adapter is not None:
        return [adapter]
    active = getattr(model, "active_adapters", None)
    if active is None:
        raise ValueError("pass adapter= for a model that is not a PeftModel")
    return list(active) if not isinstance(active, str) else [active]


def is_switched(model: nn.Module, adapter: Optional[str] = None) -> bool:
    """True once every LoRA-Dash layer of the adapter(s) has its directions (False if there are none)."""
    names = _adapters(model, adapter)
    layers = [m for _, m in dash_layers(model)]
    return bool(layers) and all(m.is_switched(a) for m in layers for a in names if a in m.lora_dash_d)


def switch_step(model: nn.Module, adapter: Optional[str] = None) -> Optional[int]:
    for _, m in dash_layers(model):
        for a in _adapters(model, adapter):
            if a in m.lora_dash_step and m.is_switched(a):
                return m.switch_step(a)
    return None


@torch.no_grad()
def switch_to_dash(
    model: nn.Module, step: int, cache_dir: Optional[str] = None, adapter: Optional[str] = None
) -> dict:
    """End the pre-launch phase: choose and install the task-specific directions of every adapted matrix.

    Per matrix: W = U S V^T (fp32, cached on disk under ``cache_dir`` when given), delta_i =
    |u_i^T dW v_i| / s_i with dW = scaling * B A, keep the top s. Layers already switched are left
    alone, so calling this twice (or after a resume) changes nothing. Returns the cost record.
    """
    t0 = time.perf_counter()
    cache = SvdCache(cache_dir)
    matrices = 0
    for _, layer in dash_layers(model):
        for a in _adapters(model, adapter):
            if a not in layer.lora_dash_d or layer.is_switched(a):
                continue
            if layer.merged:
                raise RuntimeError("LoRA-Dash cannot choose directions while adapters are merged into W; unmerge first")
            W = layer.base_weight_matrix()
            U, S, Vh = cache.get(W)
            A = layer.lora_A[a].weight
            B = layer.lora_B[a].weight
            delta = direction_change(U, S, Vh, A.to(U.device), B.to(U.device), layer.scaling[a])
            idx = select_directions(delta, layer.lora_dash_d[a].numel())
            layer.set_directions(a, U[:, idx], Vh[idx, :], idx, step)
            matrices += 1
    info = {
        "switch_step": int(step),
        "switch_matrices": matrices,
        "switch_seconds": round(time.perf_counter() - t0, 4),
        **cache.stats.as_dict(),
    }
    base = getattr(model, "base_model", model)
    history = base.__dict__.setdefault("_lora_dash_switch_info", [])
    history.append(info)
    return info
