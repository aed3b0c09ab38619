"""LoRA-Dash (Si et al., arXiv 2409.01035, ICLR 2025) as a peft method and a harness Method.

Phase 1 (pre-launch): plain LoRA (peft's layers, unchanged) for t optimizer steps.
Phase 2 (dash): per adapted matrix W = U S V^T, keep the s directions with the largest
delta_i = |u_i^T dW v_i| / s_i (dW = (alpha/r) B A) and train one scale per direction:
    y = W x + (alpha/r) B A x + U_s diag(d) V_s^T x,   d initialised to 0, no LoRA scaling on d.

Design choices (see the module docstrings for details):
- Own peft type ``LORA_DASH`` (LoraDashConfig / LoraDashModel / DashLinear, a LoRA variant), so
  save_pretrained, PeftModel.from_pretrained, merge_and_unload work with peft's own functions and a
  reload can never silently degrade to plain LoRA.
- d is a parameter from apply time on, so the harness's optimizer and the Trainer's LR schedule
  hold it from the start with the same lr / weight-decay group as A and B. Before the switch the
  forward pass does not use d, its grad stays None and torch optimizers skip it completely (no
  decay, no Adam state, no step count): it is exactly as if d joined the optimizer at the switch.
- The switch is a TrainerCallback on optimizer steps (state.global_step); its state lives in
  buffers of the adapter, so checkpoints and reloads carry it.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any, Mapping

from methods.base import Method, MethodConfigError, MethodContext, head_to_save
from methods.lora_dash.callback import LoraDashSwitchCallback
from methods.lora_dash.config import LORA_DASH, LoraDashConfig
from methods.lora_dash.layer import DashLinear
from methods.lora_dash.model import LoraDashModel, dash_layers, is_switched, switch_step, switch_to_dash
from methods.options import Options, check_train_head
from methods.registry import register
from methods.targets import resolve_targets

log = logging.getLogger(__name__)

__all__ = [
    "LORA_DASH",
    "DashLinear",
    "LoraDash",
    "LoraDashConfig",
    "LoraDashModel",
    "LoraDashSwitchCallback",
    "dash_layers",
    "is_switched",
    "switch_step",
    "switch_to_dash",
]

def _int(value: Any, key: str) -> int:
    if isinstance(value, int) and not isinstance(value, bool):
        return value
    if isinstance(value, float) and value.is_integer():
        return int(value)
    if isinstance(value, str) and value.strip().lstrip("-").isdigit():
        return int(value)
    raise MethodConfigError(f"method.{key} must be an integer (got {value!r}); e.g. method.{key}=8")


@dataclass(frozen=True)
class LoraDashOptions(Options):
    """Every option, in conf/method/lora_dash.yaml (LoRA's defaults there + the paper's s and t, so that method=lora
    and method=lora_dash differ by the dash term only; the paper's runs are the *_glue / *_commonsense presets)."""

    r: Any
    alpha: Any
    dropout: Any
    target_modules: Any
    target_roles: Any
    t: Any
    s: Any
    train_head: Any
    svd_cache: Any

    def check(self) -> None:
        r, s, t = _int(self.r, "r"), _int(self.s, "s"), _int(self.t, "t")
        if r <= 0:
            raise MethodConfigError(f"method.r must be a positive integer (got {r}); e.g. method.r=8")
        if s <= 0:
            raise MethodConfigError(f"method.s (directions per matrix) must be a positive integer (got {s}); e.g. method.s=8")
        if t < 0:
            raise MethodConfigError(f"method.t (optimizer steps before the switch) must be >= 0 (got {t}); e.g. method.t=100")
        try:
            alpha = float(self.alpha)
        except (TypeError, ValueError):
            alpha = float("nan")
        if not alpha > 0:
            raise MethodConfigError(f"method.alpha must be > 0 (got {self.alpha!r}); e.g. method.alpha=16")
        try:
            dropout = float(self.dropout)
        except (TypeError, ValueError):
            dropout = float("nan")
        if not 0.0 <= dropout < 1.0:
            raise MethodConfigError(f"method.dropout must be in [0, 1) (got {self.dropout!r})")
        if not self.target_modules and not self.target_roles:
            raise MethodConfigError("set method.target_roles (e.g. [q,k,v,o,in,out]) or method.target_modules")
        check_train_head(self.train_head)
        if not isinstance(self.svd_cache, bool):
            raise MethodConfigError(f"method.svd_cache must be true or false (got {self.svd_cache!r})")


#: the option names (LoraDashOptions' fields)
CONFIG_KEYS = LoraDashOptions.keys()


@register
class LoraDash(Method):
    """LoRA-Dash. Defaults (conf/method/lora_dash.yaml): s=8, t=100 (the paper's); r / alpha / dropout / targets as
    LoRA's."""

    name = "lora_dash"
    options_class = LoraDashOptions

    def peft_config(self, cfg: Mapping[str, Any], ctx: MethodContext) -> LoraDashConfig:
        o: LoraDashOptions = self.options(cfg)
        try:
            targets = resolve_targets(ctx.model_type, o.target_modules, o.target_roles)
        except KeyError as e:
            raise MethodConfigError(
                f"{e.args[0]} (e.g. for LLaMA the paper's commonsense runs use method.target_roles=[q,k,v,up,down]; "
                "or pass explicit method.target_modules)"
            ) from None
        return LoraDashConfig(
            r=_int(o.r, "r"),
            lora_alpha=float(o.alpha),
            lora_dropout=float(o.dropout),
            target_modules=targets,
            modules_to_save=head_to_save(o.train_head, ctx),
            dash_s=_int(o.s, "s"),
            dash_t=_int(o.t, "t"),
        )

    def apply(self, model, cfg: Mapping[str, Any], ctx: MethodContext):
        from peft import get_peft_model

        config = self.peft_config(cfg, ctx)
        if ctx.total_steps is not None and config.dash_t >= ctx.total_steps:
            log.warning(
                "LoRA-Dash t=%d >= the run's %d optimizer steps: it will never switch and trains plain LoRA",
                config.dash_t, ctx.total_steps,
            )
        return get_peft_model(model, config)

    def callbacks(self, model, cfg: Mapping[str, Any], ctx: MethodContext) -> list:
        o: LoraDashOptions = self.options(cfg)
        return [LoraDashSwitchCallback(t=_int(o.t, "t"), cache_dir=ctx.cache_dir if o.svd_cache else None)]

    def record_state(self, model, cfg: Mapping[str, Any]) -> dict:
        layers = [m for _, m in dash_layers(model)]
        adapter = getattr(model, "active_adapter", "default")
        o: LoraDashOptions = self.options(cfg)
        s = _int(o.s, "s")
        out: dict[str, Any] = {
            "t": _int(o.t, "t"),
            "s": s,
            "adapted_matrices": len(layers),
            "dash_parameters": sum(m.lora_dash_d[adapter].numel() for m in layers if adapter in m.lora_dash_d),
            "switched": is_switched(model),
            "switch_step": switch_step(model),
        }
        history = getattr(getattr(model, "base_model", model), "__dict__", {}).get("_lora_dash_switch_info", [])
        if history:
            # the one-time cost of the switch done in this process (absent after a post-switch resume)
            out["switch_cost"] = history[-1]
        if out["switched"]:
            # how "task-specific" the chosen directions are: share among the s largest singular directions
            idx = [m.lora_dash_index[adapter].detach().cpu() for m in layers if adapter in m.lora_dash_index]
            top = sum(int((i < s).sum()) for i in idx)
            total = sum(i.numel() for i in idx)
            out["chosen_in_top_s_fraction"] = round(top / total, 4) if total else None
            # how far d moved from 0 (it starts at 0: a d that never moves makes LoRA-Dash plain LoRA)
            ds = [m.lora_dash_d[adapter].detach().float().abs().cpu() for m in layers if adapter in m.lora_dash_d]
            if ds:
                import torch

                flat = torch.cat(ds)
                out["d_abs_mean"] = round(float(flat.mean()), 6)
                out["d_abs_max"] = round(float(flat.max()), 6)
        return out
