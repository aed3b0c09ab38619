"""Bottleneck adapters, series (Houlsby et al., ICML 2019) and parallel (He et al., ICLR 2022), as a peft tuner of
this project's own and two harness methods (``method=adapter_series``, ``method=adapter_parallel``).

The ``adapters`` library (AdapterHub) has them, but its 1.3.0 pins ``transformers ~=4.57.6`` and this project runs
transformers 5 (docs/methods.md). After ``import methods`` plain peft code works::

    from peft import get_peft_model, PeftModel
    model = get_peft_model(base, BottleneckConfig(mode="series", r=64, target_modules=[...]))
    model.save_pretrained(out_dir)          # adapter_model.safetensors: W_down, b_down, W_up, b_up (+ modules_to_save)
    model = PeftModel.from_pretrained(base, out_dir)
    model.merge_and_unload()                # ValueError: ... cannot merge ...
"""

from methods.peft_compat import register_tuner

from .config import BOTTLENECK, BottleneckConfig
from .layer import CANNOT_MERGE, BottleneckLayer, Linear
from .model import BottleneckModel
from .placement import SUBLAYER_INPUTS

register_tuner("bottleneck", BottleneckConfig, BottleneckModel, prefix="bottleneck_")

from .method import AdapterParallel, AdapterSeries, BottleneckMethod, closed_form  # noqa: E402  (registers both)

__all__ = [
    "BOTTLENECK",
    "CANNOT_MERGE",
    "SUBLAYER_INPUTS",
    "AdapterParallel",
    "AdapterSeries",
    "BottleneckConfig",
    "BottleneckLayer",
    "BottleneckMethod",
    "BottleneckModel",
    "Linear",
    "closed_form",
]
