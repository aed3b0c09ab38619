"""BottleneckConfig: the peft configuration of the series (Houlsby) and parallel bottleneck adapters."""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Optional, Union

from peft.config import PeftConfig

from methods.peft_compat import SavesImportHint, peft_type

PEFT_TYPE_NAME = "BOTTLENECK"
BOTTLENECK = peft_type(PEFT_TYPE_NAME)  # methods/peft_compat.py

MODES = ("series", "parallel")
NON_LINEARITIES = ("relu", "gelu", "tanh", "silu")


@dataclass
class BottleneckConfig(SavesImportHint, PeftConfig):
    """Configuration of a :class:`~methods.bottleneck.model.BottleneckModel`.

    Every targeted projection (a sub-layer's output projection: attention output / FFN output) gets one adapter
    ``a(u) = scaling * (W_up f(W_down u + b_down) + b_up)`` with ``W_down`` (r x d), ``W_up`` (d x r), d = the
    projection's output width; 2 d r + r + d trainable parameters. ``W_up`` and ``b_up`` start at zero, so the
    adapted model starts equal to the base model.

    series (Houlsby et al. 2019): ``y = h + a(h)`` with h the projection's output.
    parallel (He et al. 2022): ``y = h + a(x)`` with x the *sub-layer's* input (what enters the attention block / the
    FFN), found through ``sublayer_inputs``.
    """

    mode: str = field(default="series", metadata={"help": "series (Houlsby) or parallel (He et al. 2022)."})
    r: int = field(default=64, metadata={"help": "The bottleneck size r (width of W_down's output)."})
    non_linearity: str = field(default="relu", metadata={"help": f"f in the bottleneck: one of {NON_LINEARITIES}."})
    scaling: float = field(default=1.0, metadata={"help": "A fixed factor on the adapter's output (He et al.'s s)."})
    target_modules: Optional[Union[list[str], str]] = field(
        default=None,
        metadata={
            "help": "The output projections that get an adapter: a list matches a name or a '.<name>' suffix, a "
            "string must match the whole qualified name as a regular expression."
        },
    )
    sublayer_inputs: Optional[dict[str, str]] = field(
        default=None,
        metadata={
            "help": "parallel only: {pattern: replacement}; the first pattern found (re.search) in a target's "
            "qualified name, replaced (re.sub), names the module whose first input is the sub-layer's input "
            "(e.g. '\\.mlp\\.down_proj$' -> '.mlp'). methods/bottleneck/placement.py has them per architecture."
        },
    )
    modules_to_save: Optional[list[str]] = field(
        default=None, metadata={"help": "Modules trained densely and saved with the adapter (a task head)."}
    )
    init_weights: bool = field(
        default=True,
        metadata={"help": "True: W_up, b_up = 0 (the model starts as the base). False: small random W_up (tests)."},
    )

    def __post_init__(self):
        super().__post_init__()
        self.peft_type = BOTTLENECK
        if self.mode not in MODES:
            raise ValueError(f"BottleneckConfig.mode must be one of {MODES}, got {self.mode!r}")
        if isinstance(self.r, bool) or not isinstance(self.r, int) or self.r < 1:
            raise ValueError(f"BottleneckConfig.r (bottleneck size) must be a positive integer, got {self.r!r}")
        if self.non_linearity not in NON_LINEARITIES:
            raise ValueError(f"BottleneckConfig.non_linearity must be one of {NON_LINEARITIES}, got {self.non_linearity!r}")
        if self.target_modules is None:
            raise ValueError("BottleneckConfig.target_modules is required (the output projections to adapt)")
        if isinstance(self.target_modules, (list, tuple, set)):
            self.target_modules = set(self.target_modules)
        if self.mode == "parallel":
            if not self.sublayer_inputs:
                raise ValueError("a parallel adapter needs sublayer_inputs (where each sub-layer's input comes from)")
            for pattern in self.sublayer_inputs:
                re.compile(pattern)
        if self.modules_to_save is not None:
            self.modules_to_save = list(self.modules_to_save)
