"""Fill the jinja2 template: one HTML file with the styles, the scripts, the figures' JSON and plotly.js all
inlined, so it opens offline from a file. plotly.js (plotly's own offline bundle) is inlined gzip-compressed
and base64-encoded (2.0 MB instead of 4.8 MB) and unpacked by the browser's DecompressionStream; the tables
are plain HTML and need no script."""

from __future__ import annotations

import base64
import functools
import gzip
import os
import tempfile
from datetime import datetime, timezone
from importlib import resources
from pathlib import Path
from typing import Any

from markupsafe import Markup

TEMPLATES = "templates"


@functools.lru_cache(maxsize=1)
def plotly_bundle() -> tuple[str, str]:
    """(plotly.js version, the bundle gzip-compressed and base64-encoded)."""
    import plotly.offline

    js = plotly.offline.get_plotlyjs().encode()
    version = js[:300].decode(errors="replace").split("plotly.js v", 1)[-1].split()[0] if b"plotly.js v" in js[:300] \
        else "?"
    return version, base64.b64encode(gzip.compress(js, 9, mtime=0)).decode()


def _script_json(text: str) -> Markup:
    """JSON inside <script type="application/json">: '</' escaped so no string can close the tag."""
    return Markup(text.replace("</", "<\\/"))


def _environment():
    from jinja2 import Environment, PackageLoader, StrictUndefined, select_autoescape

    env = Environment(loader=PackageLoader("bench.report", TEMPLATES), autoescape=select_autoescape(["html", "j2"]),
                      undefined=StrictUndefined, trim_blocks=True, lstrip_blocks=True)
    env.filters["script_json"] = _script_json
    env.filters["num"] = lambda v, spec=".2f": "-" if v is None else format(v, spec)
    return env


def _asset(name: str) -> Markup:
    return Markup(resources.files("bench.report").joinpath(TEMPLATES, name).read_text())


def render(report, figures: dict[str, Any], command: str) -> str:
    version, bundle = plotly_bundle()
    meta = {"generated_at": datetime.now(timezone.utc).isoformat(timespec="seconds"), "command": command,
            "plotly_js": version, "bench": _version("peft-bench")}
    return _environment().get_template("index.html.j2").render(
        report=report, figures=figures, meta=meta, css=_asset("report.css"), js=_asset("report.js"),
        plotly_b64=bundle, cells=list(enumerate(report.cells)))


def _version(dist: str) -> str:
    from importlib import metadata

    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return "?"


def write(text: str, path: Path) -> Path:
    """Atomically (a reader never sees half a page), readable by others like the records."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
        mask = os.umask(0o022)
        os.umask(mask)
        os.chmod(tmp, 0o666 & ~mask)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    return path
