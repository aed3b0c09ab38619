"""Propulsion (Kowsher, Prottasha, Bhat; arXiv 2409.10927) as a peft tuner and a harness method.

After ``import methods.propulsion`` plain peft code works::

    from peft import get_peft_model, PeftModel
    model = get_peft_model(base, PropulsionConfig(degree=15))
    model.save_pretrained(out_dir)                 # adapter_model.safetensors: z vectors (+ modules_to_save)
    model = PeftModel.from_pretrained(base, out_dir)
    merged = model.merge_and_unload()              # W' = diag(z**k) W, b' = z**k * b, E' = E * z**k
"""

from methods.peft_compat import register_tuner

from .config import PropulsionConfig, paper_degree, paper_degrees, paper_train_head
from .layer import Embedding, Linear, PropulsionLayer
from .model import PropulsionModel

register_tuner("propulsion", PropulsionConfig, PropulsionModel)

from .method import PropulsionMethod, resolve_degree, resolve_train_head  # noqa: E402  (registers "propulsion")

__all__ = [
    "Embedding",
    "Linear",
    "PropulsionConfig",
    "PropulsionLayer",
    "PropulsionMethod",
    "PropulsionModel",
    "paper_degree",
    "paper_degrees",
    "paper_train_head",
    "resolve_degree",
    "resolve_train_head",
]
