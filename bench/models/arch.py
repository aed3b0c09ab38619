"""Architecture configs of the papers' backbones, embedded so that parameter counts need no download.

The values are those of the models' published ``config.json`` files (the fields that change a parameter
count, plus the ones transformers needs to build the same modules). bench.models.build.build_meta builds a model on
the meta device: shapes only, no memory, no weights - enough for every count `bench params` prints.
"""

from __future__ import annotations

from typing import Any, Optional

# name -> (transformers model_type, config fields, decoder-only?)
ARCHS: dict[str, dict[str, Any]] = {
    "roberta-base": {  # FacebookAI/roberta-base
        "model_type": "roberta",
        "decoder": False,
        "config": dict(vocab_size=50265, hidden_size=768, num_hidden_layers=12, num_attention_heads=12,
                       intermediate_size=3072, max_position_embeddings=514, type_vocab_size=1,
                       layer_norm_eps=1e-5, pad_token_id=1, bos_token_id=0, eos_token_id=2),
    },
    "roberta-large": {  # FacebookAI/roberta-large
        "model_type": "roberta",
        "decoder": False,
        "config": dict(vocab_size=50265, hidden_size=1024, num_hidden_layers=24, num_attention_heads=16,
                       intermediate_size=4096, max_position_embeddings=514, type_vocab_size=1,
                       layer_norm_eps=1e-5, pad_token_id=1, bos_token_id=0, eos_token_id=2),
    },
    "deberta-v3-base": {  # microsoft/deberta-v3-base
        "model_type": "deberta-v2",
        "decoder": False,
        "config": dict(vocab_size=128100, hidden_size=768, num_hidden_layers=12, num_attention_heads=12,
                       intermediate_size=3072, max_position_embeddings=512, type_vocab_size=0,
                       relative_attention=True, position_buckets=256, norm_rel_ebd="layer_norm",
                       share_att_key=True, pos_att_type=["p2c", "c2p"], layer_norm_eps=1e-7,
                       max_relative_positions=-1, position_biased_input=False, pooler_hidden_size=768),
    },
    "llama-7b": {  # huggyllama/llama-7b (LLaMA-1 7B)
        "model_type": "llama",
        "decoder": True,
        "config": dict(vocab_size=32000, hidden_size=4096, intermediate_size=11008, num_hidden_layers=32,
                       num_attention_heads=32, num_key_value_heads=32, max_position_embeddings=2048,
                       rms_norm_eps=1e-6, tie_word_embeddings=False, bos_token_id=1, eos_token_id=2,
                       pad_token_id=0),
    },
    "llama3-8b": {  # meta-llama/Meta-Llama-3-8B
        "model_type": "llama",
        "decoder": True,
        "config": dict(vocab_size=128256, hidden_size=4096, intermediate_size=14336, num_hidden_layers=32,
                       num_attention_heads=32, num_key_value_heads=8, max_position_embeddings=8192,
                       rms_norm_eps=1e-5, rope_theta=500000.0, tie_word_embeddings=False,
                       bos_token_id=128000, eos_token_id=128001, pad_token_id=128001),
    },
    "smollm2-135m": {  # HuggingFaceTB/SmolLM2-135M(-Instruct): the CPU stand-in for LLaMA
        "model_type": "llama",
        "decoder": True,
        "config": dict(vocab_size=49152, hidden_size=576, intermediate_size=1536, num_hidden_layers=30,
                       num_attention_heads=9, num_key_value_heads=3, max_position_embeddings=8192,
                       rms_norm_eps=1e-5, rope_theta=100000.0, tie_word_embeddings=True,
                       bos_token_id=1, eos_token_id=2, pad_token_id=2),
    },
}
ALIASES = {"smollm2": "smollm2-135m", "llama3_8b": "llama3-8b", "llama_7b": "llama-7b"}

def arch_name(mcfg: Any) -> Optional[str]:
    """The embedded architecture a model config points at (its ``arch`` key, else its name), or None."""
    for key in (mcfg.get("arch"), mcfg.get("name")):
        if key:
            key = ALIASES.get(key, key)
            if key in ARCHS:
                return key
    return None


def is_decoder(mcfg: Any) -> bool:
    name = arch_name(mcfg)
    if name:
        return bool(ARCHS[name]["decoder"])
    return mcfg.get("model_type") in ("llama", "mistral", "qwen2", "gpt2", "gpt_neox", "phi", "gemma")

