"""The import graph of bench/: no circle anywhere, counting the imports inside functions too.

A circle closed by a function-local import works until someone moves that import to the top of a module; it also
means no module of the circle can be understood, tested or moved without the others. grimp (import-linter's graph)
reads every import statement of a module, at module level or inside functions, so each edge here is one import."""

from __future__ import annotations

import grimp


def strongly_connected(graph, modules: set[str]) -> list[list[str]]:
    """The import circles: Tarjan's strongly connected components of more than one module (or a self-import)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    out: list[list[str]] = []

    def visit(v: str) -> None:  # recursion depth <= number of modules (about 100)
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph.find_modules_directly_imported_by(v) & modules):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1 or v in graph.find_modules_directly_imported_by(v):
                out.append(sorted(comp))

    for m in sorted(modules):
        if m not in index:
            visit(m)
    return out


def test_bench_has_no_import_circle():
    graph = grimp.build_graph("bench", cache_dir=None)
    modules = {m for m in graph.modules if m == "bench" or m.startswith("bench.")}
    circles = strongly_connected(graph, modules)
    detail = []
    for comp in circles:
        for m in comp:
            for d in sorted(graph.find_modules_directly_imported_by(m) & set(comp)):
                lines = graph.get_import_details(importer=m, imported=d)
                detail.append(f"  {m} -> {d} (line {', '.join(str(x['line_number']) for x in lines)})")
    assert not circles, "import circles in bench/ (break each by moving what both sides need lower):\n" + "\n".join(
        f"{' <-> '.join(c)}" for c in circles) + "\n" + "\n".join(detail)


def test_the_check_finds_a_circle_closed_inside_a_function(tmp_path, monkeypatch):
    pkg = tmp_path / "circ"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("")
    (pkg / "a.py").write_text("from circ import b\n")
    (pkg / "b.py").write_text("def f():\n    from circ import a\n    return a\n")
    (pkg / "c.py").write_text("from circ import a\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    graph = grimp.build_graph("circ", cache_dir=None)
    assert strongly_connected(graph, set(graph.modules)) == [["circ.a", "circ.b"]]


def test_one_composition_of_conf():
    """Only bench.config.compose composes conf/ (and `bench run`'s own Hydra app, which composes the fallback of
    offline_fallback inside its running Hydra context)."""
    from pathlib import Path

    root = Path(__file__).resolve().parents[1] / "bench"
    users = sorted(str(p.relative_to(root.parent)) for p in root.rglob("*.py")
                   if "initialize_config_dir" in p.read_text() or "hydra_compose(" in p.read_text())
    assert users == ["bench/cli.py", "bench/config/compose.py"]


def _layers() -> list[str]:
    """The layers of pyproject.toml's bench/ contract, top to bottom (siblings joined by ':' or '|' split)."""
    import re
    from pathlib import Path

    text = (Path(__file__).resolve().parents[1] / "pyproject.toml").read_text()
    block = re.search(r'containers = \["bench"\]\nlayers = \[\n(.*?)\n\]', text, re.DOTALL)
    assert block, "pyproject.toml: no layers contract with containers = [\"bench\"]"
    return [n.strip() for line in re.findall(r'"([^"]+)"', block.group(1)) for n in re.split(r"[:|]", line)]


def test_every_part_of_bench_sits_in_a_layer():
    """A new module or package at the top of bench/ must be placed in the layers contract: one that is not named
    there would be free to import anything (import-linter checks only the layers it is told)."""
    from pathlib import Path

    root = Path(__file__).resolve().parents[1] / "bench"
    parts = {p.stem for p in root.glob("*.py") if p.stem != "__init__"}
    parts |= {p.name for p in root.iterdir() if (p / "__init__.py").is_file()}
    assert parts == set(_layers()), (
        f"not in pyproject.toml's layers: {sorted(parts - set(_layers()))}; "
        f"named there but gone: {sorted(set(_layers()) - parts)}")


def test_package_inits_are_thin():
    """Every __init__.py of bench/ is a docstring (saying what the package holds) and nothing else: no code,
    no re-exports; a name is imported from the module that defines it."""
    import ast
    from pathlib import Path

    root = Path(__file__).resolve().parents[1] / "bench"
    fat = []
    for init in sorted(root.rglob("__init__.py")):
        body = ast.parse(init.read_text()).body
        code = [n for n in body if not (isinstance(n, ast.Expr) and isinstance(n.value, ast.Constant))
                and not (isinstance(n, ast.ImportFrom) and n.module == "__future__")]
        if code or not ast.get_docstring(ast.parse(init.read_text())):
            fat.append(str(init.relative_to(root.parent)))
    assert not fat, f"__init__.py with code or without a docstring: {fat}"


def test_no_private_name_crosses_a_module():
    """A name that starts with one underscore is its module's own: another module that imports it (at the top or
    inside a function) depends on an internal that may change without notice. Shared helpers get a public name."""
    import ast
    from pathlib import Path

    repo = Path(__file__).resolve().parents[1]
    ours = ("bench", "methods", "registry")
    crossings = []
    for top in ours:
        for path in sorted((repo / top).rglob("*.py")):
            for node in ast.walk(ast.parse(path.read_text())):
                if isinstance(node, ast.ImportFrom) and node.module and node.module.split(".")[0] in ours:
                    crossings += [f"{path.relative_to(repo)}: from {node.module} import {a.name}"
                                  for a in node.names if a.name.startswith("_") and not a.name.startswith("__")]
    assert not crossings, f"private names imported across modules: {crossings}"
