"""The LoRA-Dash layer: peft's ``lora.Linear`` plus a dash term, plugged in as a peft LoRA variant.

Per adapter the layer holds (all in the state dict, so ``save_pretrained`` writes them):

- ``lora_dash_d``      ParameterDict, (s,)  trainable scales, 0 until trained
- ``lora_dash_U``      BufferDict, (d_out, s)  chosen left singular vectors (zeros before the switch)
- ``lora_dash_Vh``     BufferDict, (s, d_in)   chosen right singular vectors, transposed
- ``lora_dash_index``  BufferDict, (s,) int64  which singular directions were chosen (-1 before)
- ``lora_dash_step``   BufferDict, () int64    optimizer step of the switch (-1 before)

Before the switch the forward pass is peft's vanilla LoRA and never touches d, so d.grad stays
None: torch optimizers skip such a parameter entirely (no weight decay, no moment update, no step
count), which makes a d held by the optimizer from the start equivalent to one added at the switch.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from peft.tuners._buffer_dict import BufferDict
from peft.tuners.lora.layer import Linear as LoraLinear
from peft.tuners.lora.layer import LoraLayer, LoraVariant
from peft.utils.other import transpose
from torch import nn

from methods.base import MethodConfigError

DASH_PARAM = "lora_dash_d"
DASH_VECTORS = ("lora_dash_U", "lora_dash_Vh")
DASH_INT_BUFFERS = ("lora_dash_index", "lora_dash_step")
DASH_BUFFERS = DASH_VECTORS + DASH_INT_BUFFERS


class DashLinearVariant(LoraVariant):
    """Forward / merge / unmerge of LoRA + dash for one adapter of a :class:`DashLinear`."""

    def supports_lora_conversion(self) -> bool:
        return False

    @staticmethod
    def init(module: "DashLinear", adapter_name: str, config=None, **kwargs: Any) -> None:
        s = int(config.dash_s)
        d_out, d_in = module.out_features, module.in_features
        if s > min(d_out, d_in):
            name = kwargs.get("target_name") or type(module.get_base_layer()).__name__
            raise MethodConfigError(
                f"LoRA-Dash s={s} exceeds min(d_out, d_in)={min(d_out, d_in)} of the adapted matrix {name} "
                f"({d_out} x {d_in}); set method.s <= {min(d_out, d_in)} or leave this module out of the targets"
            )
        weight = module.lora_A[adapter_name].weight
        device, dtype = weight.device, weight.dtype
        # singular vectors stay at least fp32 even when the adapter starts in the base model's bf16 / fp16
        # (peft upcasts the adapter's parameters afterwards, but not its buffers)
        vec_dtype = torch.promote_types(dtype, torch.float32)
        # peft's low_cpu_mem_usage puts new adapter tensors on meta and later moves every "lora_*"
        # submodule without parameters to the base weight's device, which meta buffers cannot do
        base_device = module.get_base_layer().weight.device
        buf_device = base_device if device.type == "meta" else device
        if not hasattr(module, DASH_PARAM):
            # Python-side mirror of lora_dash_step >= 0, so the forward pass never syncs on a buffer
            module._dash_switched = {}
            module.lora_dash_d = nn.ParameterDict()
            for name in DASH_BUFFERS:
                setattr(module, name, BufferDict(persistent=True))
        module.lora_dash_d[adapter_name] = nn.Parameter(torch.zeros(s, device=device, dtype=dtype))
        module.lora_dash_U[adapter_name] = torch.zeros(d_out, s, device=buf_device, dtype=vec_dtype)
        module.lora_dash_Vh[adapter_name] = torch.zeros(s, d_in, device=buf_device, dtype=vec_dtype)
        module.lora_dash_index[adapter_name] = torch.full((s,), -1, device=buf_device, dtype=torch.long)
        module.lora_dash_step[adapter_name] = torch.full((), -1, device=buf_device, dtype=torch.long)
        module._dash_switched[adapter_name] = False

    @staticmethod
    def dash_delta_weight(module: "DashLinear", adapter: str) -> torch.Tensor:
        """U_s diag(d) V_s^T in the base weight's layout (transposed for fan_in_fan_out)."""
        U, Vh, d = module.lora_dash_U[adapter], module.lora_dash_Vh[adapter], module.lora_dash_d[adapter]
        work = torch.float32 if U.device.type == "cpu" and U.dtype in (torch.float16, torch.bfloat16) else U.dtype
        delta = (U.to(work) * d.to(work)) @ Vh.to(work)
        return transpose(delta, module.fan_in_fan_out)

    @staticmethod
    def full_delta_weight(module: "DashLinear", adapter: str) -> torch.Tensor:
        lora = module.get_delta_weight(adapter)
        return lora + DashLinearVariant.dash_delta_weight(module, adapter).to(lora.dtype)

    @staticmethod
    def merge_safe(module: "DashLinear", active_adapter: str, orig_weight: torch.Tensor) -> torch.Tensor:
        delta = DashLinearVariant.full_delta_weight(module, active_adapter)
        return orig_weight + delta.to(orig_weight.dtype)

    @staticmethod
    def merge_unsafe(module: "DashLinear", active_adapter: str, orig_weight: torch.Tensor) -> None:
        delta = DashLinearVariant.full_delta_weight(module, active_adapter)
        orig_weight.data += delta.to(orig_weight.dtype)

    @staticmethod
    def unmerge(module: "DashLinear", active_adapter: str, orig_weight: torch.Tensor) -> torch.Tensor:
        delta = DashLinearVariant.full_delta_weight(module, active_adapter)
        return orig_weight.data - delta.to(orig_weight.dtype)

    @staticmethod
    def forward(module: "DashLinear", active_adapter: str, x: torch.Tensor, result: torch.Tensor, **kwargs) -> torch.Tensor:
        lora_A = module.lora_A[active_adapter]
        lora_B = module.lora_B[active_adapter]
        dropout = module.lora_dropout[active_adapter]
        scaling = module.scaling[active_adapter]
        x = dropout(x)
        if not module._dash_switched.get(active_adapter, False):
            # pre-launch phase: exactly peft's vanilla LoRA; d is not part of the graph
            return result + lora_B(lora_A(x)) * scaling
        # dash phase: one thin matmul pair for [A; V_s^T] and [scaling B, U_s diag(d)]; the dash term
        # sees the same (dropped-out) input as the LoRA term
        d = module.lora_dash_d[active_adapter]
        U = module.lora_dash_U[active_adapter].to(d.dtype)
        Vh = module.lora_dash_Vh[active_adapter].to(d.dtype)
        down = torch.cat([lora_A.weight, Vh], dim=0)
        up = torch.cat([lora_B.weight * scaling, U * d], dim=1)
        return result + F.linear(F.linear(x, down), up)


class DashLinear(LoraLinear):
    """peft ``lora.Linear`` whose every adapter is a LoRA-Dash adapter."""

    adapter_layer_names = LoraLayer.adapter_layer_names + (DASH_PARAM,)
    # the integer buffers go through peft's generic device handling; the singular vectors are kept out
    # of it because peft casts floating adapter tensors to the base layer's dtype (bf16 would truncate
    # them) - see _move_adapter_to_device_of_base_layer and delete_adapter below
    other_param_names = LoraLayer.other_param_names + DASH_INT_BUFFERS

    def __init__(self, base_layer, adapter_name: str, config, **kwargs) -> None:
        super().__init__(base_layer, adapter_name, config=config, **kwargs)
        self.register_load_state_dict_post_hook(DashLinear._refresh_switch_flags)

    def _move_adapter_to_device_of_base_layer(self, adapter_name: str, device=None) -> None:
        super()._move_adapter_to_device_of_base_layer(adapter_name, device=device)
        if adapter_name not in self.lora_A:
            return
        target = self.lora_A[adapter_name].weight.device if device is None else torch.device(device)
        for name in DASH_VECTORS:
            vectors = getattr(self, name, None)
            if vectors is None or adapter_name not in vectors:
                continue
            t = vectors[adapter_name]
            if t.device.type != "meta" and t.device != target:
                vectors[adapter_name] = t.to(target)  # device only, dtype untouched

    def delete_adapter(self, adapter_name: str) -> None:
        for name in DASH_VECTORS:
            vectors = getattr(self, name, None)
            if vectors is not None and adapter_name in vectors:
                del vectors[adapter_name]
        self._dash_switched.pop(adapter_name, None)
        super().delete_adapter(adapter_name)

    def resolve_lora_variant(self, *, config, **kwargs) -> LoraVariant:
        if not hasattr(config, "dash_s"):
            raise TypeError(f"DashLinear needs a LoraDashConfig, got {type(config).__name__}")
        return DashLinearVariant()

    # -- switch state ---------------------------------------------------------------------------
    def is_switched(self, adapter: str) -> bool:
        return bool(self._dash_switched.get(adapter, False))

    def switch_step(self, adapter: str) -> int:
        return int(self.lora_dash_step[adapter].item())

    @staticmethod
    def _refresh_switch_flags(module: "DashLinear", incompatible_keys) -> None:
        """After load_state_dict (adapter reload, Trainer resume) mirror the step buffers into Python flags."""
        for adapter in list(module.lora_dash_step.keys()):
            buf = module.lora_dash_step[adapter]
            if buf.device.type == "meta":
                continue
            module._dash_switched[adapter] = bool(int(buf.item()) >= 0)

    @torch.no_grad()
    def set_directions(self, adapter: str, U_s: torch.Tensor, Vh_s: torch.Tensor, index: torch.Tensor, step: int) -> None:
        """Install the chosen directions; d is left untouched (0 for a fresh switch)."""
        for name, value in (("lora_dash_U", U_s), ("lora_dash_Vh", Vh_s)):
            buf = getattr(self, name)[adapter]
            if buf.shape != value.shape:
                raise ValueError(f"{name}: expected shape {tuple(buf.shape)}, got {tuple(value.shape)}")
            buf.copy_(value.to(device=buf.device, dtype=buf.dtype))
        self.lora_dash_index[adapter].copy_(index.to(self.lora_dash_index[adapter].device))
        self.lora_dash_step[adapter].fill_(int(step))
        self._dash_switched[adapter] = True

    def base_weight_matrix(self) -> torch.Tensor:
        """The frozen W as a (d_out, d_in) matrix, whatever the storage layout."""
        return transpose(self.get_base_layer().weight, self.fan_in_fan_out)

    def __repr__(self) -> str:
        return "lora_dash." + super().__repr__()
