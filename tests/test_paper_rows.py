"""results/paper/*.yaml rows: every runnable row composes for every task of its file, the baseline rows resolve to
the method and settings their comment cites, and rows this suite cannot run (`overrides: null`, `not_runnable`)
are shown with the paper's numbers, listed with the reason and never expected as runs."""

from __future__ import annotations

import pytest
import yaml

from bench.analysis.table import command as table_command
from bench.analysis.table import protocol as table_protocol
from bench.analysis.table import protocol
from bench.config.compose import compose
from bench.config.identity import run_identity
from bench.config.overrides import merge_overrides
from bench.errors import BenchError
from conftest import ROOT
from test_table import write_record

PAPERS = sorted(p.stem for p in table_protocol.PAPER_DIR.glob("*.yaml"))
CONF = ROOT / "conf"
QKVUD = ["q", "k", "v", "up", "down"]


def experiments_of(paper: str) -> list[tuple[str, str | None]]:
    """(experiment, table_variant) of every conf/experiment file whose paper_table is this paper."""
    out = []
    for f in sorted((CONF / "experiment").glob("*.yaml")):
        root = compose([f"experiment={f.stem}"], hydra=True)
        if str(root.get("paper_table") or "") == paper:
            out.append((f.stem, root.get("table_variant")))
    return out


def method_exists(overrides: list[str]) -> bool:
    method = next(o.split("=", 1)[1] for o in overrides if o.startswith("method="))
    return (CONF / "method" / f"{method}.yaml").is_file()


def row_overrides(row: dict, variant: str | None) -> list[str]:
    extra = ((row.get("variants") or {}).get(variant) or []) if variant else []
    return merge_overrides([*row["overrides"], *extra])


@pytest.mark.slow  # one Hydra composition per row x task (about 300): half a minute or more on a loaded machine
@pytest.mark.parametrize("paper", PAPERS)
def test_every_runnable_row_composes_for_every_task(paper):
    from bench.run import runner

    spec = table_protocol.load_paper(paper)
    exps = experiments_of(paper)
    assert (paper, None) in exps, f"no paper-scale experiment conf/experiment/{paper}.yaml"
    # a row whose method has not landed in this checkout is skipped (as tests/test_sweep.py does)
    runnable = [r for r in spec["rows"] if r["overrides"] is not None and method_exists(r["overrides"])]
    assert runnable
    hashes: dict[str, str] = {}
    for row in runnable:
        for i, task in enumerate(spec["tasks"]):
            cfg = compose([f"experiment={paper}", *row_overrides(row, None), f"task={task}"])
            assert cfg.task.name == task and cfg.experiment_name == paper, (row["label"], task)
            chash = run_identity(cfg).hash
            assert hashes.setdefault(chash, row["label"]) == row["label"], \
                f"{paper}: rows {hashes[chash]!r} and {row['label']!r} compose to the same run ({task})"
            if i == 0:
                runner.validate_config(cfg)
                runner.resolve_method(cfg)  # the method accepts the row's options
    for exp, variant in exps:  # the smaller-scale variants (e.g. *_cpu) with the row's variant overrides
        if variant is None:
            continue
        first = compose([f"experiment={exp}"], hydra=True).hydra.sweeper.params.task.split(",")[0]
        for row in runnable:
            cfg = compose([f"experiment={exp}", *row_overrides(row, variant), f"task={first}"])
            runner.validate_config(cfg)
            runner.resolve_method(cfg)


# (paper, row label) -> (experiment keys the row must resolve to). Sources: the row's comment in its file.
EXPECTED = {
    ("lora_dash_commonsense", "Full FT"): {"method.name": "full", "train.lr": 2.0e-5},
    ("lora_dash_commonsense", "Prefix"): {"method.name": "prefix_tuning", "method.peft_type": "PREFIX_TUNING",
                                          "method.num_virtual_tokens": 20, "model.name": "llama-7b"},
    ("lora_dash_commonsense", "LoRA (r=4)"): {"method.name": "lora", "method.r": 4, "method.alpha": 8,
                                              "method.dropout": 0.05, "method.target_roles": QKVUD},
    ("lora_dash_commonsense", "AdaLoRA (r=4)"): {
        "method.name": "adalora", "method.peft_type": "ADALORA", "method.init_r": 4, "method.target_r": 3,
        "method.lora_alpha": 8, "method.lora_dropout": 0.05, "method.target_roles": QKVUD, "train.lr": 2.0e-4},
    ("lora_dash_commonsense", "DoRA (r=4)"): {
        "method.name": "dora", "method.peft_type": "LORA", "method.use_dora": True, "method.r": 4,
        "method.lora_alpha": 8, "method.lora_dropout": 0.05, "method.target_roles": QKVUD},
    ("lora_dash_commonsense", "LoRA-Dash (r=4)"): {"method.name": "lora_dash", "method.r": 4, "method.alpha": 8,
                                                   "method.s": 8, "method.target_roles": QKVUD},
    ("lora_dash_commonsense", "AdaLoRA (r=32)"): {"method.name": "adalora", "method.init_r": 32,
                                                  "method.target_r": 21, "method.lora_alpha": 64,
                                                  "method.target_roles": QKVUD},
    ("lora_dash_commonsense", "DoRA (r=32)"): {
        "method.name": "dora", "method.use_dora": True, "method.r": 32, "method.lora_alpha": 64,
        "method.lora_dropout": 0.05, "method.target_roles": QKVUD, "model.name": "llama-7b", "train.lr": 2.0e-4},
    ("lora_dash_commonsense_llama3", "LoRA (r=16)"): {"method.name": "lora", "method.r": 16, "method.alpha": 32},
    ("lora_dash_commonsense_llama3", "AdaLoRA (r=16)"): {"method.name": "adalora", "method.init_r": 16,
                                                         "method.target_r": 11, "method.lora_alpha": 32,
                                                         "method.target_roles": QKVUD},
    ("lora_dash_commonsense_llama3", "LoRA-Dash (r=16)"): {"method.name": "lora_dash", "method.r": 16,
                                                           "method.alpha": 32, "method.s": 8},
    ("lora_dash_commonsense_llama3", "PiSSA (r=32)"): {
        "method.name": "pissa", "method.init_lora_weights": "pissa", "method.r": 32, "method.lora_alpha": 64,
        "method.lora_dropout": 0.0, "method.target_roles": QKVUD, "model.name": "llama3-8b", "train.lr": 1.0e-4},
    ("lora_dash_commonsense_llama3", "MiLoRA (r=32)"): {
        "method.name": "milora", "method.init_lora_weights": "milora", "method.r": 32, "method.lora_alpha": 64,
        "method.lora_dropout": 0.05, "method.target_roles": QKVUD, "train.lr": 1.0e-4},
    ("lora_dash_commonsense_llama3", "DoRA (r=32)"): {"method.name": "dora", "method.use_dora": True,
                                                      "method.r": 32, "method.lora_alpha": 64,
                                                      "method.target_roles": QKVUD},
    ("lora_dash_commonsense", "Series"): {"method.name": "adapter_series", "method.r": 256,
                                          "method.target_roles": ["down"], "model.name": "llama-7b"},
    ("lora_dash_commonsense", "Parallel"): {"method.name": "adapter_parallel", "method.r": 256,
                                            "method.target_roles": ["down"], "method.scaling": 1.0},
    ("propulsion_glue", "Adapter (Houlsby)"): {"method.name": "adapter_series", "method.r": 64,
                                               "method.target_roles": ["o", "down"], "train.lr": 3.0e-4},
    ("propulsion_glue", "Prompt tuning"): {"method.name": "prompt_tuning", "method.peft_type": "PROMPT_TUNING",
                                           "method.num_virtual_tokens": 20, "train.lr": 1.0e-2,
                                           "model.name": "roberta-base"},
    ("propulsion_glue", "(IA)3"): {"method.name": "ia3", "train.lr": 3.0e-3},
    ("propulsion_glue", "BitFit"): {"method.name": "bitfit", "train.lr": 3.0e-4},
    ("propulsion_glue", "AdaLoRA"): {"method.name": "adalora", "method.init_r": 12, "method.target_r": 8,
                                     "method.target_roles": ["q", "k", "v", "o", "in", "out"], "train.lr": 1.0e-3},
    ("propulsion_glue", "LoKr"): {"method.name": "lokr", "method.peft_type": "LOKR", "method.r": 8,
                                  "method.alpha": 8, "method.target_roles": ["q", "v"], "train.lr": 1.0e-3},
    ("propulsion_glue", "LoHa"): {"method.name": "loha", "method.peft_type": "LOHA", "method.r": 8,
                                  "method.alpha": 8, "method.target_roles": ["q", "v"], "train.lr": 1.0e-3},
    ("id3_glue", "BitFit"): {"method.name": "bitfit", "model.name": "deberta-v3-base"},
    ("id3_glue", "PaFi (103K)"): {"method.name": "pafi", "method.budget": 103000},
    ("id3_glue", "PaFi (320K)"): {"method.name": "pafi", "method.budget": 320000},
}
# the methods of this session's baselines: every row running one of them must be in EXPECTED
NEW_METHODS = {"dora", "pissa", "milora", "adalora", "vera", "loha", "lokr", "oft", "fourierft", "prefix_tuning",
               "prompt_tuning", "bitfit", "pafi", "random_mask", "adapter_series", "adapter_parallel"}


def _get(cfg, dotted: str):
    from omegaconf import OmegaConf

    node = OmegaConf.select(cfg, dotted, throw_on_missing=True)
    return OmegaConf.to_container(node, resolve=True) if OmegaConf.is_config(node) else node


def test_every_new_method_row_is_in_the_expected_table():
    have = set()
    for paper in PAPERS:
        for row in table_protocol.load_paper(paper)["rows"]:
            method = next((o.split("=", 1)[1] for o in row["overrides"] or [] if o.startswith("method=")), None)
            if method in NEW_METHODS:
                have.add((paper, row["label"]))
    assert have <= set(EXPECTED), sorted(have - set(EXPECTED))


@pytest.mark.parametrize("paper,label", sorted(EXPECTED))
def test_baseline_row_resolves_to_its_method_and_settings(paper, label):
    spec = table_protocol.load_paper(paper)
    row = next(r for r in spec["rows"] if r["label"] == label)
    if not method_exists(row["overrides"]):
        pytest.skip(f"{row['overrides'][0]}: not in this checkout")
    cfg = compose([f"experiment={paper}", *row["overrides"], f"task={next(iter(spec['tasks']))}"])
    for key, want in EXPECTED[(paper, label)].items():
        got = _get(cfg, key)
        assert got == pytest.approx(want) if isinstance(want, float) else got == want, (paper, label, key, got)


def test_cpu_variant_of_a_budget_row_is_the_same_fraction():
    spec = table_protocol.load_paper("id3_glue")
    id3, pafi = (next(r for r in spec["rows"] if r["label"] == lab) for lab in ("ID3 (320K)", "PaFi (320K)"))
    assert pafi["variants"]["cpu"] == id3["variants"]["cpu"]
    cfg = compose(["experiment=id3_glue_cpu", *row_overrides(pafi, "cpu"), "task=rte"])
    assert cfg.method.name == "pafi" and cfg.method.budget == pytest.approx(0.00174)


def test_not_runnable_rows_say_why_and_name_no_method_that_exists():
    """A not-runnable row whose reason names `method=<m>`: once conf/method/<m>.yaml lands, the row must get overrides."""
    import re

    seen = 0
    for paper in PAPERS:
        for row in table_protocol.load_paper(paper)["rows"]:
            if row["overrides"] is not None:
                continue
            seen += 1
            why = str(row["not_runnable"])
            for m in re.findall(r"method=([a-z0-9_]+)", why):
                assert not (CONF / "method" / f"{m}.yaml").is_file(), \
                    f"{paper} / {row['label']}: method {m} exists now - give the row its overrides"
    assert seen >= 5


def test_a_row_without_overrides_needs_a_reason(tmp_path, monkeypatch):
    spec = yaml.safe_load((table_protocol.PAPER_DIR / "lora_dash_glue.yaml").read_text())
    monkeypatch.setattr(protocol, "PAPER_DIR", tmp_path)
    monkeypatch.setattr(protocol, "REPO_ROOT", tmp_path)
    spec["rows"].append({"label": "X", "overrides": None})
    (tmp_path / "bad.yaml").write_text(yaml.safe_dump(spec))
    with pytest.raises(BenchError, match=r"X\): overrides: null needs not_runnable"):
        table_protocol.load_paper("bad")
    spec["rows"][-1] = {"label": "X", "overrides": ["method=lora"], "not_runnable": "why"}
    (tmp_path / "bad.yaml").write_text(yaml.safe_dump(spec))
    with pytest.raises(BenchError, match="not_runnable with overrides"):
        table_protocol.load_paper("bad")


@pytest.mark.slow  # one composition per row of the LLaMA-7B table (14)
def test_planted_dora_record_fills_its_row_and_unrunnable_rows_are_listed(tmp_path, capsys):
    spec = table_protocol.load_paper("lora_dash_commonsense")
    dora = next(r for r in spec["rows"] if r["label"] == "DoRA (r=32)")
    cfg = compose(["experiment=lora_dash_commonsense", *dora["overrides"], "task=boolq"])
    cfg.seed = 1
    identity = run_identity(cfg)
    runs = tmp_path / "runs"
    write_record(runs, identity.config, identity.hash, metrics={"accuracy": 0.701})

    table_command.main(["experiment=lora_dash_commonsense", "task=boolq", f"results_dir={runs}",
                f"+tables_dir={tmp_path / 't'}"])
    out = capsys.readouterr().out
    md = (tmp_path / "t" / "lora_dash_commonsense.md").read_text()
    lines = md.splitlines()
    row = next(i for i, ln in enumerate(lines) if ln.startswith("| DoRA (r=32)"))
    assert "70.10" in lines[row] and "↳ paper" in lines[row + 1] and "69.70" in lines[row + 1]
    assert "+0.40" in lines[row + 2]  # ours − paper on BoolQ
    flora = next(i for i, ln in enumerate(lines) if ln.startswith("| FLoRA (r=4)"))
    assert "↳ paper" in lines[flora + 1] and "67.20" in lines[flora + 1]  # shown with the paper's numbers
    assert "Not runnable here: 2 row(s)" in out
    assert "FLoRA (r=4): FLoRA: no such method" in out and "FLoRA (r=32): FLoRA" in out
    runnable = sum(r["overrides"] is not None for r in spec["rows"])
    assert f"Missing: {runnable - 1} of {runnable} expected runs" in out
    missing_rows = {ln.strip()[2:].split(":")[0] for ln in out.split("Missing:")[1].split("To run them:")[0].splitlines()
                    if ln.strip().startswith("- ")}
    assert "DoRA (r=32)" not in missing_rows and not missing_rows & {"FLoRA (r=4)", "FLoRA (r=32)"}
    cmds = [ln.strip() for ln in out.splitlines() if ln.strip().startswith("python -m bench run -m")]
    assert len(cmds) == runnable - 1
    assert any("method=dora method.r=4" in c for c in cmds) and not any("method.r=32 method.lora_alpha=64 "
                                                                          "method.lora_dropout=0.05" in c and
                                                                          "method=dora" in c for c in cmds)
