"""docs/: every cited page and section exists; docs/methods.md's reported numbers are results/paper/*.yaml's."""

from __future__ import annotations

import re
import sys

import pytest
import yaml

from conftest import ROOT

PAPER_DIR = ROOT / "results" / "paper"
METHODS_DOC = ROOT / "docs" / "methods.md"
DOC_REF = re.compile(r"\bdocs/([A-Za-z0-9_./-]+\.md)(?:#([A-Za-z0-9_-]+))?")


def slug(heading: str) -> str:
    """GitHub's anchor of a Markdown heading: lower case, punctuation dropped, spaces -> '-'."""
    return re.sub(r"[^a-z0-9 _-]", "", heading.strip().lower()).replace(" ", "-")


def anchors(path) -> set[str]:
    return {slug(m.group(1)) for m in re.finditer(r"^#{1,6}\s+(.+?)\s*$", path.read_text(), re.MULTILINE)}


def citing_files():
    return [*sorted((ROOT / "conf").rglob("*.yaml")), *sorted(PAPER_DIR.glob("*.yaml")), ROOT / "README.md"]


def test_every_cited_doc_and_section_exists():
    cited = 0
    for path in citing_files():
        for m in DOC_REF.finditer(path.read_text()):
            target = ROOT / "docs" / m.group(1)
            where = f"{path.relative_to(ROOT)} cites {m.group(0)}"
            assert target.is_file(), f"{where}: no such file"
            if m.group(2):
                assert m.group(2) in anchors(target), f"{where}: no such section (has {sorted(anchors(target))})"
            cited += 1
    assert cited >= 9  # the experiment and paper YAMLs that cite docs/methods.md, at least


def papers() -> list[str]:
    """results/paper/*.yaml that transcribe a paper (source.arxiv); the others are this suite's own rows (a pilot's),
    which report no numbers (bench.table.load_paper refuses them)."""
    return sorted(p.stem for p in PAPER_DIR.glob("*.yaml")
                  if (yaml.safe_load(p.read_text())["source"] or {}).get("arxiv"))


def test_methods_doc_has_a_section_per_method_and_cites_each_paper():
    sections = anchors(METHODS_DOC)
    assert {"propulsion", "lora", "ia3", "lora-dash", "id3", "full-fine-tuning", "reported-numbers"} <= sections
    text = METHODS_DOC.read_text()
    assert len(papers()) >= 5
    for path in (PAPER_DIR / f"{name}.yaml" for name in papers()):
        source = yaml.safe_load(path.read_text())["source"]
        assert f"arXiv:{source['arxiv']}" in text and source["venue"] in text, path.name


def reported_tables() -> dict[str, tuple[list[str], dict[str, list[str]]]]:
    """{paper yaml name: (header cells, {row label: cells})} of the tables under '## Reported numbers'."""
    text = METHODS_DOC.read_text().split("## Reported numbers", 1)[1]
    out = {}
    for part in re.split(r"^### ", text, flags=re.MULTILINE)[1:]:
        name = re.search(r"`results/paper/([a-z0-9_]+)\.yaml`", part.splitlines()[0])
        if not name:
            continue
        lines = [ln for ln in part.splitlines() if ln.startswith("|")]
        cells = [[c.strip() for c in ln.strip("|").split("|")] for ln in lines]
        out[name.group(1)] = (cells[0], {r[0]: r[1:] for r in cells[2:]})
    return out


@pytest.mark.parametrize("paper", papers())
def test_reported_numbers_in_the_doc_are_the_paper_yamls(paper):
    spec = yaml.safe_load((PAPER_DIR / f"{paper}.yaml").read_text())
    assert "docs/methods.md" in str(spec["source"].get("transcribed_from", ""))
    tables = reported_tables()
    assert paper in tables, f"docs/methods.md has no table for results/paper/{paper}.yaml"
    header, rows = tables[paper]
    keys = list(spec["tasks"]) + ["avg"]
    assert header == ["row", *(spec["tasks"][k]["label"] for k in spec["tasks"]), "avg"]
    reported = {r["label"]: r["reported"] for r in spec["rows"] if r.get("reported")}
    assert set(rows) == set(reported)
    for label, numbers in reported.items():
        for key, cell in zip(keys, rows[label]):
            if key in numbers:
                assert float(cell) == pytest.approx(float(numbers[key]), abs=1e-9), (label, key, cell)
            else:
                assert cell == "-", (label, key, cell)


def test_the_table_check_can_fail(monkeypatch, tmp_path):
    """A number changed in the doc (or the YAML) is caught: the comparison above is not vacuous."""
    changed = tmp_path / "methods.md"
    changed.write_text(METHODS_DOC.read_text().replace("| 90.14 |", "| 90.41 |"))
    monkeypatch.setattr(sys.modules[__name__], "METHODS_DOC", changed)
    with pytest.raises(AssertionError):
        test_reported_numbers_in_the_doc_are_the_paper_yamls("lora_dash_glue")
