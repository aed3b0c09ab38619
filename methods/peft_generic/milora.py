"""MiLoRA (Wang et al., arXiv 2406.09044): LoRA initialised from the *minor* singular components of W.

Per adapted matrix W (d_out x d_in) = U diag(S) V^T and LoRA scaling s = alpha / r, take the r smallest singular
triplets (U_r, S_r, V_r):

    A = diag(sqrt(S_r / s)) V_r^T,   B = U_r diag(sqrt(S_r / s)),   W_res = W - s B A,

so s B A = U_r diag(S_r) V_r^T and the initial model W_res + s B A equals the base model. peft has PiSSA (the largest
triplets) but no MiLoRA; everything after the init is peft's LoRA.

A run that changed the base weights cannot save a plain adapter (W_res is not the base model's W): the adapter is
saved converted, through peft's ``path_initial_model_for_weight_conversion``, to a LoRA of rank 2r whose
delta A B - A_0 B_0 applies to the unchanged base model. The initial A_0 / B_0 are kept in memory from apply.
"""

from __future__ import annotations

import copy
import os
import tempfile

import torch

INIT_ATTR = "_bench_initial_adapter"
MUTATING_INITS = ("milora", "pissa", "olora", "corda", "lora_ga")


def is_mutating(init) -> bool:
    return isinstance(init, str) and any(init.lower().startswith(p) for p in MUTATING_INITS)


def lora_layers(model, adapter: str = "default"):
    for name, module in model.named_modules():
        if hasattr(module, "lora_A") and adapter in getattr(module, "lora_A", {}):
            yield name, module


@torch.no_grad()
def milora_init(model, adapter: str = "default") -> int:
    """Set A, B from the r smallest singular triplets of each adapted W and W to W_res; returns layers done."""
    done = 0
    for name, module in lora_layers(model, adapter):
        base = module.get_base_layer()
        if getattr(module, "fan_in_fan_out", False) or not hasattr(base, "weight") or base.weight.dim() != 2:
            raise ValueError(f"MiLoRA init supports Linear layers only ({name} is {type(base).__name__})")
        weight = base.weight
        r, scale = module.r[adapter], module.scaling[adapter]
        U, S, Vh = torch.linalg.svd(weight.data.float(), full_matrices=False)
        root = torch.sqrt(S[-r:] / scale)
        A = root[:, None] * Vh[-r:]
        B = U[:, -r:] * root[None, :]
        module.lora_A[adapter].weight.data = A.to(module.lora_A[adapter].weight.dtype).contiguous()
        module.lora_B[adapter].weight.data = B.to(module.lora_B[adapter].weight.dtype).contiguous()
        weight.data = (weight.data.float() - scale * (B @ A)).to(weight.dtype)
        done += 1
    return done


def snapshot_initial(model, adapter: str = "default") -> None:
    """Keep the initial adapter (A_0, B_0, head) for the converted save."""
    from peft import get_peft_model_state_dict

    state = get_peft_model_state_dict(model, adapter_name=adapter)
    model.__dict__[INIT_ATTR] = {k: v.detach().to("cpu", copy=True).contiguous() for k, v in state.items()}


def save_converted(model, path: str, adapter: str = "default") -> None:
    """save_pretrained as a plain LoRA (rank 2r) over the unchanged base model. peft's conversion keeps the LoRA
    tensors only: the trained task head (modules_to_save) is written back into the file here."""
    from peft import get_peft_model_state_dict
    from safetensors.torch import load_file, save_file

    initial = model.__dict__[INIT_ATTR]
    with tempfile.TemporaryDirectory() as tmp:
        init_dir = os.path.join(tmp, "initial")
        config = copy.deepcopy(model.peft_config[adapter])
        config.init_lora_weights = True
        config.save_pretrained(init_dir)
        save_file(initial, os.path.join(init_dir, "adapter_model.safetensors"))
        model.save_pretrained(path, path_initial_model_for_weight_conversion=init_dir)
    weights = os.path.join(path, "adapter_model.safetensors")
    saved = load_file(weights)
    rest = {k: v.detach().cpu().contiguous() for k, v in get_peft_model_state_dict(model, adapter_name=adapter).items()
            if "lora_" not in k and k not in saved}
    if rest:
        save_file({**saved, **rest}, weights, metadata={"format": "pt"})
