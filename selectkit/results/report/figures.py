"""Figures of report.html as small hand-written inline SVG, drawn from aggregates (counts, histograms,
a correlation matrix, a sampled 2-D map): no plotting library, no script, no external reference, and
byte-identical for the same inputs (coordinates rounded, nothing dated). Each figure's ids carry its
prefix, so figures never clash on a page."""

from __future__ import annotations

import math
from html import escape

import numpy as np

POOL, SELECTED, CUT, INK, MUTED, GRID = "#9aa5b1", "#1f6feb", "#d1242f", "#1f2328", "#59636e", "#d1d9e0"
CHAR = 6.2  # width of one character at FONT px, to lay out labels without measuring text
FONT = 11


def _f(value: float) -> str:
    """A coordinate: one decimal, no trailing zeros, no negative zero."""
    text = f"{value:.1f}".rstrip("0").rstrip(".")
    return "0" if text in ("-0", "") else text


def _svg(width: float, height: float, prefix: str, title: str, body: list[str]) -> str:
    return (f'<svg id="{escape(prefix)}" role="img" aria-labelledby="{escape(prefix)}-title" '
            f'width="{_f(width)}" height="{_f(height)}" viewBox="0 0 {_f(width)} {_f(height)}" '
            f'font-size="{FONT}" font-family="system-ui,sans-serif">'
            f'<title id="{escape(prefix)}-title">{escape(title)}</title>{"".join(body)}</svg>')


def _text(x: float, y: float, text: str, anchor: str = "start", color: str = INK, size: int | None = None,
          extra: str = "") -> str:
    font = f' font-size="{size}"' if size else ""
    return (f'<text x="{_f(x)}" y="{_f(y)}" text-anchor="{anchor}" fill="{color}"{font}{extra}>'
            f"{escape(text)}</text>")


def _clip(text: str, chars: int) -> str:
    return text if len(text) <= chars else text[: max(1, chars - 1)] + "…"


def number(value: float) -> str:
    """A tick or value label: short and deterministic."""
    if value == 0:
        return "0"
    if abs(value) >= 1e5 or abs(value) < 1e-3:
        return f"{value:.2g}"
    return f"{value:.4g}"


def ticks(low: float, high: float, count: int = 5) -> list[float]:
    """Round values (1, 2 or 5 times a power of ten apart) between low and high."""
    if not (math.isfinite(low) and math.isfinite(high)) or high <= low:
        return [low]
    raw = (high - low) / max(count - 1, 1)
    power = 10 ** math.floor(math.log10(raw))
    step = next(m * power for m in (1, 2, 5, 10) if m * power >= raw)
    first = math.ceil(low / step) * step
    return [round(first + i * step, 12) for i in range(int((high - first) / step + 1e-9) + 1)]


def _legend(x: float, y: float, items: list[tuple[str, str, str]]) -> list[str]:
    """Legend entries (label, color, kind: box | line | dash) in a row from (x, y)."""
    out = []
    for label, color, kind in items:
        yy = y
        if kind == "box":
            out.append(f'<rect x="{_f(x)}" y="{_f(yy - 8)}" width="10" height="9" fill="{color}"/>')
        else:
            dash = ' stroke-dasharray="4 3"' if kind == "dash" else ""
            out.append(f'<line x1="{_f(x)}" y1="{_f(yy - 4)}" x2="{_f(x + 12)}" y2="{_f(yy - 4)}" stroke="{color}" '
                       f'stroke-width="1.6"{dash}/>')
        out.append(_text(x + 16, yy, label, size=FONT - 1))
        x += 28 + CHAR * len(label)
    return out


def bars(labels: list[str], values: list[float], prefix: str, title: str, value_labels: list[str],
         colors: list[str] | None = None, axis: str = "") -> str:
    """Horizontal bars, one per label, with their value written at the end."""
    left = min(220.0, 16 + CHAR * max((len(s) for s in labels), default=4))
    width, row, top = 640.0, 20.0, 24.0
    height = top + row * len(labels) + 26
    scale = (width - left - 80) / max(max(values, default=0), 1e-300)
    body = [_text(8, 15, title, extra=' font-weight="600"')]
    for i, (label, value) in enumerate(zip(labels, values)):
        y = top + i * row
        w = max(value, 0) * scale
        body.append(_text(left - 6, y + 13, _clip(label, int((left - 10) / CHAR)), "end"))
        body.append(f'<rect x="{_f(left)}" y="{_f(y + 3)}" width="{_f(w)}" height="{_f(row - 6)}" '
                    f'fill="{(colors or [SELECTED] * len(labels))[i]}"/>')
        body.append(_text(left + w + 4, y + 13, value_labels[i], color=MUTED, size=FONT - 1))
    body.append(f'<line x1="{_f(left)}" y1="{_f(top)}" x2="{_f(left)}" y2="{_f(top + row * len(labels))}" '
                f'stroke="{INK}"/>')
    if axis:
        body.append(_text(left, height - 8, axis, color=MUTED, size=FONT - 1))
    return _svg(width, height, prefix, title, body)


def funnel(stages: list[str], kept: list[int], prefix: str) -> str:
    """Examples left after each stage."""
    return bars(stages, [float(k) for k in kept], prefix, "examples left after each stage",
                [f"{k:,}" for k in kept], axis="examples left")


def composition(groups: list[str], pool_share: list[float], selected_share: list[float], prefix: str,
                title: str) -> str:
    """Share of each group in the pool and in the selection, side by side."""
    left = min(220.0, 16 + CHAR * max((len(s) for s in groups), default=4))
    width, row, top = 640.0, 26.0, 40.0
    height = top + row * len(groups) + 28
    scale = (width - left - 70) / max(max(pool_share + selected_share, default=0), 1e-12)
    body = [_text(8, 15, title, extra=' font-weight="600"'),
            *_legend(left, 31, [("pool", POOL, "box"), ("selection", SELECTED, "box")])]
    for i, group in enumerate(groups):
        y = top + i * row
        body.append(_text(left - 6, y + 16, _clip(group, int((left - 10) / CHAR)), "end"))
        for k, (share, color) in enumerate(((pool_share[i], POOL), (selected_share[i], SELECTED))):
            w = max(share, 0) * scale
            yy = y + 3 + k * 10
            body.append(f'<rect x="{_f(left)}" y="{_f(yy)}" width="{_f(w)}" height="9" fill="{color}"/>')
            body.append(_text(left + w + 4, yy + 8, f"{100 * share:.1f}%", color=MUTED, size=FONT - 2))
    body.append(f'<line x1="{_f(left)}" y1="{_f(top)}" x2="{_f(left)}" y2="{_f(top + row * len(groups))}" '
                f'stroke="{INK}"/>')
    body.append(_text(left, height - 8, "share", color=MUTED, size=FONT - 1))
    return _svg(width, height, prefix, title, body)


def distribution(name: str, edges: np.ndarray, pool: np.ndarray, selected: np.ndarray,
                 cuts: list[tuple[str, float]], prefix: str) -> str | None:
    """Density of a value in the pool (filled steps) and in the selection (a step line), cut-offs dashed."""
    if pool.sum() == 0:
        return None
    width, height = 420.0, 262.0
    left, right, top, bottom = 46.0, 12.0, 40.0, 34.0
    plot_w, plot_h = width - left - right, height - top - bottom
    widths = np.diff(edges)
    densities = [c / (c.sum() * widths) if c.sum() else None for c in (pool, selected)]
    peak = max(float(d.max()) for d in densities if d is not None) or 1.0
    low, high = float(edges[0]), float(edges[-1])

    def x_of(v: float) -> float:
        return left + (v - low) / (high - low) * plot_w

    def y_of(d: float) -> float:
        return top + plot_h - d / peak * plot_h * 0.95

    body = [_text(8, 15, name, extra=' font-weight="600"')]
    for t in ticks(0, peak, 4):
        y = y_of(t)
        body.append(f'<line x1="{_f(left)}" y1="{_f(y)}" x2="{_f(width - right)}" y2="{_f(y)}" stroke="{GRID}" '
                    'stroke-width="0.6"/>')
        body.append(_text(left - 4, y + 3, number(t), "end", MUTED, FONT - 2))
    for t in ticks(low, high, 5):
        x = x_of(t)
        body.append(f'<line x1="{_f(x)}" y1="{_f(top + plot_h)}" x2="{_f(x)}" y2="{_f(top + plot_h + 4)}" '
                    f'stroke="{INK}"/>')
        body.append(_text(x, top + plot_h + 15, number(t), "middle", MUTED, FONT - 2))
    legend = []
    for k, (counts, density, color, label) in enumerate(((pool, densities[0], POOL, "pool"),
                                                        (selected, densities[1], SELECTED, "selection"))):
        if density is None:
            continue
        steps = [f"M{_f(x_of(low))} {_f(y_of(0))}"]
        for i, d in enumerate(density):
            steps.append(f"L{_f(x_of(float(edges[i])))} {_f(y_of(float(d)))}L{_f(x_of(float(edges[i + 1])))} "
                         f"{_f(y_of(float(d)))}")
        steps.append(f"L{_f(x_of(high))} {_f(y_of(0))}")
        style = f'fill="{color}" fill-opacity="0.55" stroke="{color}"' if k == 0 else \
            f'fill="none" stroke="{color}" stroke-width="1.4"'
        body.append(f'<path d="{"".join(steps)}{"Z" if k == 0 else ""}" {style}/>')
        legend.append((f"{label} ({int(counts.sum()):,})", color, "box" if k == 0 else "line"))
    for label, value in cuts:
        if low <= value <= high:
            x = x_of(value)
            body.append(f'<line x1="{_f(x)}" y1="{_f(top)}" x2="{_f(x)}" y2="{_f(top + plot_h)}" stroke="{CUT}" '
                        'stroke-width="1.1" stroke-dasharray="4 3"/>')
            legend.append((f"cut: {label}", CUT, "dash"))
    body.append(f'<line x1="{_f(left)}" y1="{_f(top + plot_h)}" x2="{_f(width - right)}" y2="{_f(top + plot_h)}" '
                f'stroke="{INK}"/>')
    body.append(_text(12, top + plot_h / 2, "density", "middle", MUTED, FONT - 2,
                      f' transform="rotate(-90 12 {_f(top + plot_h / 2)})"'))
    body += _legend(left, 31, legend)
    return _svg(width, height, prefix, name, body)


def _diverging(value: float) -> str:
    """-1 blue, 0 light grey, +1 red (ColorBrewer RdBu ends)."""
    blue, mid, red = (33, 102, 172), (247, 247, 247), (178, 24, 43)
    t = max(-1.0, min(1.0, value))
    end = red if t > 0 else blue
    rgb = [round(m + (e - m) * abs(t)) for m, e in zip(mid, end)]
    return "#" + "".join(f"{c:02x}" for c in rgb)


def heatmap(labels: list[str], matrix: np.ndarray, prefix: str) -> str:
    """Spearman correlations between scores: cells coloured from -1 to +1, annotated up to 12 columns."""
    short = [label.removeprefix("score.") for label in labels]
    k = len(labels)
    cell = 44.0 if k <= 12 else 18.0
    left = min(200.0, 16 + CHAR * max((len(s) for s in short), default=4))
    top = 30.0
    width = left + cell * k + 70
    height = top + cell * k + min(200.0, 10 + CHAR * max((len(s) for s in short), default=4) * 0.75) + 10
    body = [_text(8, 15, "Spearman correlation", extra=' font-weight="600"')]
    for i in range(k):
        body.append(_text(left - 6, top + cell * i + cell / 2 + 4, _clip(short[i], int((left - 10) / CHAR)), "end"))
        x = left + cell * i + cell / 2
        y = top + cell * k + 6
        body.append(_text(x, y, _clip(short[i], 28), "end", extra=f' transform="rotate(-45 {_f(x)} {_f(y)})"'))
        for j in range(k):
            value = float(matrix[i, j])
            missing = math.isnan(value)
            body.append(f'<rect x="{_f(left + cell * j)}" y="{_f(top + cell * i)}" width="{_f(cell)}" '
                        f'height="{_f(cell)}" fill="{"#eeeeee" if missing else _diverging(value)}" stroke="#ffffff"/>')
            if k <= 12:
                color = "#ffffff" if not missing and abs(value) > 0.6 else INK
                body.append(_text(left + cell * j + cell / 2, top + cell * i + cell / 2 + 4,
                                  "–" if missing else f"{value:.2f}", "middle", color, FONT - 1))
    scale_x = left + cell * k + 20
    for n, v in enumerate((1.0, 0.5, 0.0, -0.5, -1.0)):
        y = top + n * cell * k / 5
        body.append(f'<rect x="{_f(scale_x)}" y="{_f(y)}" width="12" height="{_f(cell * k / 5)}" '
                    f'fill="{_diverging(v)}"/>')
        body.append(_text(scale_x + 16, y + 8, f"{v:+.1f}" if v else "0", color=MUTED, size=FONT - 2))
    return _svg(width, height, prefix, "Spearman correlation between scores", body)


def scatter_map(xy: np.ndarray, selected: np.ndarray, prefix: str, title: str) -> str:
    """A 2-D map of (sampled) examples, selected ones drawn on top: one path of dots per colour."""
    width, height, pad = 520.0, 400.0, 16.0
    top = 44.0
    body = [_text(8, 15, title, extra=' font-weight="600"')]
    if len(xy):
        lo, hi = xy.min(axis=0), xy.max(axis=0)
        span = np.where(hi > lo, hi - lo, 1.0)
        px = pad + (xy[:, 0] - lo[0]) / span[0] * (width - 2 * pad)
        py = top + (hi[1] - xy[:, 1]) / span[1] * (height - top - pad)
        for mask, color, size in ((~selected, POOL, 3), (selected, SELECTED, 4)):
            dots = "".join(f"M{_f(x)} {_f(y)}h0" for x, y in zip(px[mask].tolist(), py[mask].tolist()))
            if dots:
                body.append(f'<path d="{dots}" stroke="{color}" stroke-width="{size}" stroke-linecap="round"/>')
    body += _legend(pad, 31, [(f"not selected ({int((~selected).sum()):,})", POOL, "box"),
                                           (f"selected ({int(selected.sum()):,})", SELECTED, "box")])
    return _svg(width, height, prefix, title, body)


def scatter_xy(x: list[float], y: list[float], prefix: str, title: str, xlabel: str, ylabel: str) -> str:
    """Points (x, y) with their axis ranges as labels (e.g. LDS: each subset's predicted against measured loss)."""
    width, height, pad, top, left = 300.0, 240.0, 16.0, 30.0, 16.0
    body = [_text(8, 15, title, extra=' font-weight="600"')]
    pts = np.array([(a, b) for a, b in zip(x, y) if a is not None and b is not None], dtype=np.float64)
    if len(pts):
        lo, hi = pts.min(axis=0), pts.max(axis=0)
        span = np.where(hi > lo, hi - lo, 1.0)
        px = left + pad + (pts[:, 0] - lo[0]) / span[0] * (width - left - 2 * pad)
        py = top + (hi[1] - pts[:, 1]) / span[1] * (height - top - 2 * pad - 12)
        dots = "".join(f"M{_f(a)} {_f(b)}h0" for a, b in zip(px.tolist(), py.tolist()))
        body.append(f'<path d="{dots}" stroke="{SELECTED}" stroke-width="5" stroke-linecap="round"/>')
        body.append(_text(left + pad, height - 6, f"{xlabel}: {number(lo[0])} .. {number(hi[0])}", color=MUTED,
                          size=FONT - 2))
        body.append(_text(4, top - 2, f"{ylabel}: {number(lo[1])} .. {number(hi[1])}", color=MUTED, size=FONT - 2))
    return _svg(width, height, prefix, title, body)
