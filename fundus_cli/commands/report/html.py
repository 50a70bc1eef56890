"""HTML pieces of the report page: escaping, number formats, tables, embedded PNGs. Everything read
from a file is untrusted text: it is escaped here, and only files that start with the PNG signature
are embedded as images."""

from __future__ import annotations

import base64
import html
import json
import math
from pathlib import Path
from typing import Any

import numpy as np

from fundus_cli.schemas.audit_report import VERDICTS


PER_CLASS = 8  # images per row of the real-vs-synthetic grids
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


MAX_IMAGE_BYTES = 20 << 20  # a PNG larger than this is named, not embedded (keeps the page openable)


DISPLAY_TILE = 120  # images smaller than this (px) are shown enlarged without smoothing


def esc(x: Any) -> str:
    """Any value from a file, as safe HTML text."""
    return html.escape("" if x is None else str(x), quote=True)


def num(x: Any) -> float | None:
    if isinstance(x, bool) or not isinstance(x, (int, float)):
        return None
    return float(x) if math.isfinite(float(x)) else None


def fmt(x: Any, spec: str = ".4g") -> str:
    n = num(x)
    return "-" if n is None else esc(format(n, spec))


def fmt_int(x: Any) -> str:
    """A count: digits without a decimal point, or '-'."""
    n = num(x)
    return "-" if n is None else (esc(str(int(n))) if n.is_integer() else fmt(n))


def fmt_ci(d: Any, value: str = ".4g", bounds: str = ".3g") -> str:
    """'value [low, high]' of a {value, ci_low, ci_high} dict (the CLI's format)."""
    if not isinstance(d, dict) or num(d.get("value")) is None:
        return "-"
    return (f"{fmt(d.get('value'), value)} <span class=ci>[{fmt(d.get('ci_low'), bounds)}, "
            f"{fmt(d.get('ci_high'), bounds)}]</span>")


def get(d: Any, *keys: Any) -> Any:
    for k in keys:
        if isinstance(d, dict):
            d = d.get(k)
        elif isinstance(d, list) and isinstance(k, int) and -len(d) <= k < len(d):
            d = d[k]
        else:
            return None
    return d


def as_dict(x: Any) -> dict[str, Any]:
    return x if isinstance(x, dict) else {}


def as_list(x: Any) -> list[Any]:
    return x if isinstance(x, list) else []


def short_fp(fp: Any) -> str:
    s = esc(fp) if isinstance(fp, str) else "-"
    return f"<code title='{s}'>{s[:12]}</code>" if len(s) > 12 else f"<code>{s}</code>"


def table(header: list[str], rows: list[list[str]], *, cls: str = "") -> str:
    """header: plain text (escaped here); rows: cells that are already HTML."""
    head = "".join(f"<th>{esc(h)}</th>" for h in header)
    body = "".join("<tr>" + "".join(f"<td>{c}</td>" for c in row) + "</tr>" for row in rows)
    return f"<table class='{cls}'><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def kv(d: dict[str, Any]) -> str:
    rows = [[f"<code>{esc(k)}</code>", esc(json.dumps(v, default=str)) if isinstance(v, (dict, list)) else esc(v)]
            for k, v in d.items()]
    return table(["setting", "value"], rows, cls="kv")


def details(summary: str, body: str) -> str:
    return f"<details><summary>{esc(summary)}</summary>{body}</details>"


def cmd(text: str) -> str:
    return f"<code class=cmd>{esc(text)}</code>"


def _png(data: bytes, alt: str, *, style: str = "") -> str:
    return (f"<img alt='{esc(alt)}' style='{style}' src='data:image/png;base64,"
            f"{base64.b64encode(data).decode('ascii')}'>")


def png_file(path: Path, alt: str) -> str | None:
    """An existing PNG figure embedded, or None (absent, not a PNG, too large)."""
    try:
        if not path.is_file() or path.stat().st_size > MAX_IMAGE_BYTES:
            return None
        data = path.read_bytes()
    except OSError:
        return None
    return _png(data, alt) if data.startswith(PNG_SIGNATURE) else None


def figure(img: str | None, caption: str, missing: str) -> str:
    if img is None:
        return f"<p class=missing>{esc(missing)}</p>"
    return f"<figure>{img}<figcaption>{esc(caption)}</figcaption></figure>"


def rel(path: Any, root: Path) -> str:
    """A path shown relative to the reported folder when it is a file inside it; a recorded path
    that is not there (it was relative to another working directory) is shown as recorded."""
    if not isinstance(path, str):
        return "-"
    try:
        p = Path(path)
        if p.exists():
            return str(p.resolve().relative_to(root.resolve()))
    except (ValueError, OSError):
        pass
    return path


def grid_png(images: np.ndarray) -> str:
    """A row of images as one PNG."""
    import cv2

    from fundus_cli.images import grid_image

    pad = 2
    grid = grid_image(images, nrow=len(images), pad=pad)
    ok, buf = cv2.imencode(".png", cv2.cvtColor(grid, cv2.COLOR_RGB2BGR))
    if not ok:  # pragma: no cover - OpenCV only fails here on a broken build
        raise RuntimeError("OpenCV could not encode a PNG")
    # Every row is as wide as its share of PER_CLASS images, so tiles line up across rows at any
    # window width; small images are enlarged without blurring.
    style = f"width:{100 * len(images) / PER_CLASS:.2f}%;" + ("image-rendering:pixelated;"
                                                              if images.shape[1] < DISPLAY_TILE else "")
    return _png(buf.tobytes(), "image grid", style=style)


def badge(status: str | None) -> str:
    if status is None:
        return "<span class='badge none'>no audit</span>"
    cls = status if status in VERDICTS else "none"
    return f"<span class='badge {cls}'>{esc(status)}</span>"
