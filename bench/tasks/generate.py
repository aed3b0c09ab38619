"""Batched greedy generation for the reasoning tasks: left padding, the KV cache, one stop at EOS."""

from __future__ import annotations

import time
from typing import Callable, Optional

import torch

from bench.errors import BenchError
from bench.tasks.loglikelihood import padded


@torch.no_grad()
def generate(
    model,
    prompts: list[list[int]],
    *,
    pad_token_id: int,
    eos_token_id: int | list[int],
    max_new_tokens: int,
    batch_size: int,
    on_batch: Optional[Callable[[int], None]] = None,
) -> list[list[int]]:
    """Greedy continuation of every prompt (token ids), batched with LEFT padding and the KV cache.

    Prompts are sorted by length (long first) so a batch holds similar lengths and the largest
    batch runs first; the outputs come back in the input order, each cut at its first EOS.
    """
    from transformers import GenerationConfig

    eos_ids = [eos_token_id] if isinstance(eos_token_id, int) else list(eos_token_id)
    gen_config = GenerationConfig(
        max_new_tokens=int(max_new_tokens),
        do_sample=False,
        num_beams=1,
        use_cache=True,
        eos_token_id=eos_ids,
        pad_token_id=int(pad_token_id),
    )
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    order = sorted(range(len(prompts)), key=lambda i: (-len(prompts[i]), i))
    outputs: list[list[int]] = [[] for _ in prompts]
    try:
        for start in range(0, len(order), int(batch_size)):
            idx = order[start : start + int(batch_size)]
            input_ids, attention = padded([prompts[i] for i in idx], pad_token_id, side="left")
            width = input_ids.shape[1]
            out = model.generate(
                input_ids=input_ids.to(device), attention_mask=attention.to(device), generation_config=gen_config
            )
            for row, i in enumerate(idx):
                new = out[row, width:].tolist()
                cut = next((j for j, tok in enumerate(new) if tok in eos_ids), None)
                outputs[i] = new if cut is None else new[:cut]
            if on_batch is not None:
                on_batch(len(idx))
    finally:
        model.train(was_training)
    return outputs


def eos_ids(tokenizer, model) -> list[int]:
    """The tokenizer's EOS plus the model's generation EOS ids (a chat model may end turns with another token)."""
    ids = [tokenizer.eos_token_id] if tokenizer.eos_token_id is not None else []
    gen = getattr(getattr(model, "generation_config", None), "eos_token_id", None)
    for x in [gen] if isinstance(gen, int) else list(gen or []):
        if x not in ids:
            ids.append(int(x))
    if not ids:
        raise BenchError("the tokenizer has no EOS token: generation could not stop before max_new_tokens")
    return ids


def generate_texts(model, tokenizer, prompts: list[list[int]], *, max_new_tokens: int, batch_size: int,
                   desc: str, progress: bool = True) -> tuple[list[str], list[int], float]:
    """(decoded outputs, new-token counts, seconds) of every prompt, with a progress bar."""
    from tqdm.auto import tqdm

    bar = tqdm(total=len(prompts), unit="ex", desc=desc, disable=not progress)
    t0 = time.perf_counter()
    try:
        outs = generate(model, prompts, pad_token_id=tokenizer.pad_token_id, eos_token_id=eos_ids(tokenizer, model),
                        max_new_tokens=max_new_tokens, batch_size=batch_size, on_batch=bar.update)
    finally:
        bar.close()
    texts = [tokenizer.decode(o, skip_special_tokens=True) for o in outs]
    return texts, [len(o) for o in outs], time.perf_counter() - t0
