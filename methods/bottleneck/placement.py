"""Where the bottleneck adapters go, per architecture (transformers ``config.model_type``).

Targets are the output projections of the two sub-layers of a block, by this suite's roles (methods/targets.py):
``o`` (attention output: BERT ``attention.output.dense``, Llama ``self_attn.o_proj``) and ``down`` (FFN output:
BERT ``layer.N.output.dense``, Llama ``mlp.down_proj``). A parallel adapter also needs the sub-layer's *input*:
the module whose first input it is, named by a substitution on the target's qualified name.
"""

from __future__ import annotations

_BERT_LIKE = {
    r"\.attention\.output\.dense$": ".attention",  # BertAttention(hidden_states, ...): the attention block's input
    r"\.output\.dense$": ".intermediate",  # BertIntermediate(attention_output): the FFN's input
}
SUBLAYER_INPUTS: dict[str, dict[str, str]] = {
    "bert": _BERT_LIKE,
    "roberta": _BERT_LIKE,
    "deberta-v2": _BERT_LIKE,
    "deberta": _BERT_LIKE,
    "llama": {
        r"\.self_attn\.o_proj$": ".self_attn",  # LlamaAttention(hidden_states=...)
        r"\.mlp\.down_proj$": ".mlp",  # LlamaMLP(x)
    },
}
