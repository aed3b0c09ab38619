"""`bench params`: paper-scale parameter counts from embedded architectures on the meta device (no weights)."""

import pytest
from omegaconf import OmegaConf

from bench.config.compose import CONF_DIR
from bench.models.arch import ARCHS
from bench.models.build import build_meta
from bench.models.params import count_parameters
from bench.perf import paramtable

# totals of the published checkpoints (with a 2-label head for the encoders, the LM head for the decoders)
PUBLISHED_TOTALS = {
    "roberta-base": 124_647_170,
    "roberta-large": 355_361_794,
    "deberta-v3-base": 184_423_682,
    "llama-7b": 6_738_415_616,
    "llama3-8b": 8_030_261_248,
    "smollm2-135m": 134_515_008,
}


def need_method(name: str) -> None:
    """Skip (do not fail) while a method written by another helper is not there yet."""
    from methods import available

    if name not in available() or not (CONF_DIR / "method" / f"{name}.yaml").is_file():
        pytest.skip(f"method {name!r} is not available in this checkout yet")


def row(df, method: str) -> dict:
    r = df[df["method"] == method].iloc[0].to_dict()
    assert not r.get("error") or r["error"] != r["error"], r.get("error")  # NaN when there is no error
    return r


@pytest.mark.parametrize("name", sorted(PUBLISHED_TOTALS))
def test_embedded_architecture_totals(name):
    decoder = ARCHS[name]["decoder"]
    model = build_meta(OmegaConf.create({"name": name}), "causal_lm" if decoder else "seq_cls",
                       **({} if decoder else {"num_labels": 2}))
    assert next(model.parameters()).device.type == "meta"
    assert count_parameters(model)["total"] == PUBLISHED_TOTALS[name]


def test_lora_r8_query_value_roberta_base_is_294912_plus_head(capsys):
    df, info = paramtable.params_table(["model=roberta-base", "method=lora"])
    r = row(df, "lora")
    assert r["trainable (method)"] == 294_912          # 12 layers x 2 matrices x 8 x (768 + 768)
    assert r["trainable (head)"] == 768 * 768 + 768 + 768 * 2 + 2   # RoBERTa's classifier (dense + out_proj)
    assert r["total"] == PUBLISHED_TOTALS["roberta-base"]
    assert info["task_type"] == "seq_cls" and info["heads"] == ["classifier"]


def test_options_apply_only_where_they_exist_and_cli_prints(capsys):
    paramtable.main(["model=roberta-base", "method=lora,full,no_such_method", "method.r=4"])
    out = capsys.readouterr().out
    lines = {l.split("|")[1].strip(): l for l in out.splitlines() if l.startswith("| ")}
    assert "147,456" in lines["lora"] and "method.r=4" in lines["lora"]      # r=4 halves LoRA
    assert "124,055,040" in lines["full"] and "method.r=4" in lines["full"]  # listed as ignored for full
    assert "no conf/method/no_such_method.yaml" in lines["no_such_method"]
    assert "no weights read" in out


def test_propulsion_roberta_base_two_labels_is_86018():
    need_method("propulsion")
    df, _ = paramtable.params_table(["model=roberta-base", "method=propulsion"])
    r = row(df, "propulsion")
    # 3 x 768 embeddings + 12 x (4 x 768 + 3072 + 768) + classifier dense 768 + out_proj 2
    assert r["trainable"] == 86_018
    assert r["trainable (head)"] == 770  # the classifier's z vectors (its weights stay frozen in the paper)


def test_lora_dash_over_lora_on_llama7b_is_1280():
    need_method("lora_dash")
    opts = ["method.r=32", "method.alpha=64", "method.target_roles=[q,k,v,up,down]"]
    df, info = paramtable.params_table(["model=llama-7b", "method=lora,lora_dash", *opts])
    assert info["task_type"] == "causal_lm"
    lora, dash = row(df, "lora"), row(df, "lora_dash")
    assert lora["trainable"] == 32 * (3 * 32 * (4096 + 4096) + 2 * 32 * (4096 + 11008))  # 56,098,816
    assert dash["trainable"] - lora["trainable"] == 1_280  # s=8 per matrix x 5 matrices x 32 layers
    assert dash["total"] == PUBLISHED_TOTALS["llama-7b"]


def test_id3_counts_its_budget():
    need_method("id3")
    df, _ = paramtable.params_table(["model=deberta-v3-base", "method=id3", "method.budget=103000"])
    r = row(df, "id3")
    assert r["trainable (method)"] == 103_000
    assert r["total"] == PUBLISHED_TOTALS["deberta-v3-base"]
