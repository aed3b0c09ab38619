"""The switch from plain LoRA to LoRA-Dash, driven by the Trainer's optimizer-step counter."""

from __future__ import annotations

import logging
from typing import Optional

from transformers import TrainerCallback

from methods.lora_dash.model import is_switched, switch_step, switch_to_dash

log = logging.getLogger(__name__)


class LoraDashSwitchCallback(TrainerCallback):
    """Switch once ``state.global_step`` (optimizer steps) reaches t.

    ``on_step_end`` fires once per optimizer step, after the update; evaluation, gradient
    accumulation micro-batches and gradient-checkpointing recomputation never reach it, so they
    cannot move the switch. The switched / step state lives in the model's buffers: a run resumed
    from a checkpoint saved after the switch does not switch again, one resumed from before still
    switches at t. ``t`` defaults to the adapter config's ``dash_t``.
    """

    def __init__(self, t: Optional[int] = None, cache_dir: Optional[str] = None, adapter: Optional[str] = None):
        self.t = t
        self.cache_dir = cache_dir
        self.adapter = adapter
        self.last_info: Optional[dict] = None

    def _t(self, model) -> int:
        if self.t is not None:
            return int(self.t)
        adapter = self.adapter or model.active_adapter
        return int(model.peft_config[adapter].dash_t)

    def _maybe_switch(self, state, model, when: str) -> None:
        if model is None or is_switched(model, self.adapter):
            return
        t = self._t(model)
        if state.global_step < t:
            return
        if state.global_step > t:
            log.warning(
                "LoRA-Dash: switching at optimizer step %d (%s), later than t=%d - was t changed for a resumed run?",
                state.global_step, when, t,
            )
        self.last_info = switch_to_dash(model, state.global_step, self.cache_dir, self.adapter)
        log.info("LoRA-Dash switch: %s", self.last_info)

    def on_train_begin(self, args, state, control, model=None, **kwargs):
        # t = 0: no pre-launch phase (directions then rank by singular value alone, since B A = 0)
        self._maybe_switch(state, model, "train begin")

    def on_step_end(self, args, state, control, model=None, **kwargs):
        self._maybe_switch(state, model, "step end")

    def on_train_end(self, args, state, control, model=None, **kwargs):
        if model is not None and not is_switched(model, self.adapter):
            log.warning(
                "LoRA-Dash never switched: the run ended at optimizer step %d before t=%d; it trained plain LoRA",
                state.global_step, self._t(model),
            )
        elif model is not None:
            log.info("LoRA-Dash switched at optimizer step %s", switch_step(model, self.adapter))
