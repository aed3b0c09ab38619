"""Records -> pandas: one row per run, then paper-shaped tables (mean +- std over seeds)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Iterable

import pandas as pd

SCALE = 100.0  # the papers print scores x 100


def load_records(results_dir: str | Path) -> pd.DataFrame:
    """Every record under results_dir (recursively) as one row; unreadable files are listed, not dropped."""
    rows = []
    for path in sorted(Path(results_dir).rglob("*.json")):
        try:
            rec = json.loads(path.read_text())
        except (OSError, json.JSONDecodeError) as e:
            rows.append({"path": str(path), "status": "unreadable", "error": str(e)})
            continue
        if not isinstance(rec, dict) or "config_hash" not in rec:
            continue
        params = rec.get("params") or {}
        train = rec.get("train") or {}
        rows.append(
            {
                "path": str(path),
                "status": rec.get("status"),
                "method": rec.get("method"),
                "task": rec.get("task"),
                "model": rec.get("model"),
                "seed": rec.get("seed"),
                "tag": rec.get("tag"),
                "experiment": (rec.get("config") or {}).get("experiment_name"),
                "config_hash": rec.get("config_hash"),
                "main_metric": rec.get("main_metric"),
                "main_score": rec.get("main_score"),
                "trainable": params.get("trainable"),
                "trainable_method": params.get("trainable_method"),
                "trainable_head": params.get("trainable_head"),
                "total": params.get("total"),
                "steps": train.get("steps"),
                "step_time_s": train.get("step_time_median_s"),
                "samples_per_s": train.get("samples_per_s"),
                "peak_rss_mb": (rec.get("memory") or {}).get("peak_rss_mb"),
                "wall_s": rec.get("wall_s"),
                "error": rec.get("error"),
                **{f"metric.{k}": v for k, v in (rec.get("metrics") or {}).items()},
            }
        )
    return pd.DataFrame(rows)


def _fmt(mean: float, std: float, n: int) -> str:
    if pd.isna(mean):
        return "-"
    return f"{mean:.2f}" if n < 2 or pd.isna(std) else f"{mean:.2f} ± {std:.2f}"


def summary_table(df: pd.DataFrame, methods: Iterable[str] | None = None, tasks: Iterable[str] | None = None):
    """Rows method, columns task + Avg + trainable parameters; cells mean ± std (x100) over seeds."""
    ok = df[df["status"] == "ok"].copy()
    if ok.empty:
        return pd.DataFrame(), pd.DataFrame()
    ok["score"] = ok["main_score"].astype(float) * SCALE
    stats = ok.groupby(["method", "task"])["score"].agg(["mean", "std", "count"]).reset_index()
    method_order = list(methods) if methods else sorted(ok["method"].unique())
    task_order = list(tasks) if tasks else sorted(ok["task"].unique())
    table = pd.DataFrame(index=method_order, columns=[*task_order, "Avg", "Trainable params", "Seeds"], dtype=object)
    numeric = pd.DataFrame(index=method_order, columns=[*task_order, "Avg"], dtype=float)
    for _, r in stats.iterrows():
        if r["method"] in table.index and r["task"] in table.columns:
            table.loc[r["method"], r["task"]] = _fmt(r["mean"], r["std"], int(r["count"]))
            numeric.loc[r["method"], r["task"]] = r["mean"]
    for m in method_order:
        row = numeric.loc[m, task_order]
        numeric.loc[m, "Avg"] = row.mean() if row.notna().all() else float("nan")
        table.loc[m, "Avg"] = f"{numeric.loc[m, 'Avg']:.2f}" if row.notna().all() else "-"
        sub = ok[ok["method"] == m]
        trainable = sub["trainable_method"].dropna()
        head = sub["trainable_head"].dropna()
        if len(trainable):
            # parameters differ per task only through the head; report the method's own count + head apart
            table.loc[m, "Trainable params"] = f"{int(trainable.median()):,} (+{int(head.median()):,} head)"
        table.loc[m, "Seeds"] = ",".join(str(s) for s in sorted(sub["seed"].dropna().unique()))
    return table.fillna("-"), numeric


def main(argv: list[str]) -> None:
    from bench.cli import compose

    cfg = compose(argv)
    df = load_records(cfg.results_dir)
    if df.empty:
        print(f"no records under {cfg.results_dir}; run `python -m bench run ...` first")
        return
    table, _ = summary_table(df)
    out_dir = Path(cfg.get("tables_dir") or Path(cfg.results_dir).parent / "tables")
    out_dir.mkdir(parents=True, exist_ok=True)
    df.to_csv(out_dir / "runs.csv", index=False)
    table.to_csv(out_dir / "summary.csv")
    md = table.to_markdown()
    (out_dir / "summary.md").write_text(md + "\n")
    print(md)
    bad = df[df["status"] != "ok"]
    if len(bad):
        print(f"\n{len(bad)} run(s) not ok (not in the table):")
        for _, r in bad.iterrows():
            print(f"  {r.get('status')}: {r.get('method')} / {r.get('task')} seed {r.get('seed')}: {r.get('error')}")
    print(f"\nwrote {out_dir}/summary.md, summary.csv, runs.csv ({len(df)} records)")
