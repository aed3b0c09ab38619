"""Shared fixtures: tiny models built in code (no download), seeded."""

import os
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

SHARED_DATA = Path(os.environ.get("BENCH_DATA_DIR", ROOT.parent / "shared" / "data"))


def tiny_bert_config(**kw):
    from transformers import BertConfig

    base = dict(vocab_size=128, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                intermediate_size=64, max_position_embeddings=64, num_labels=2)
    base.update(kw)
    return BertConfig(**base)


def tiny_roberta_config(**kw):
    from transformers import RobertaConfig

    base = dict(vocab_size=128, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                intermediate_size=64, max_position_embeddings=70, num_labels=2, pad_token_id=1)
    base.update(kw)
    return RobertaConfig(**base)


def tiny_llama_config(**kw):
    from transformers import LlamaConfig

    base = dict(vocab_size=128, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                num_key_value_heads=2, intermediate_size=64, max_position_embeddings=128,
                tie_word_embeddings=True)
    base.update(kw)
    return LlamaConfig(**base)


@pytest.fixture
def tiny_bert():
    from transformers import BertForSequenceClassification

    torch.manual_seed(0)
    return BertForSequenceClassification(tiny_bert_config()).eval()


@pytest.fixture
def tiny_roberta():
    from transformers import RobertaForSequenceClassification

    torch.manual_seed(0)
    return RobertaForSequenceClassification(tiny_roberta_config()).eval()


@pytest.fixture
def tiny_llama():
    from transformers import LlamaForCausalLM

    torch.manual_seed(0)
    return LlamaForCausalLM(tiny_llama_config()).eval()


@pytest.fixture
def shared_data():
    if not (SHARED_DATA / "glue").is_dir():
        pytest.skip(f"real data not found at {SHARED_DATA} (set BENCH_DATA_DIR)")
    return SHARED_DATA
