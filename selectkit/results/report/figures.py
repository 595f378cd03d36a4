"""Figures of report.html as inline SVG (matplotlib, the optional `report` extra), byte-identical
for the same inputs: fixed hash salt, no date or creator metadata, text kept as text, ids prefixed."""

from __future__ import annotations

import io
import re

import numpy as np

POOL, SELECTED, CUT = "#9aa5b1", "#1f6feb", "#d1242f"
RC = {"svg.hashsalt": "selectkit-report", "svg.fonttype": "none", "font.size": 8, "axes.titlesize": 9,
      "axes.spines.top": False, "axes.spines.right": False, "legend.frameon": False, "figure.dpi": 72,
      "path.simplify": True}


def available() -> bool:
    """True when matplotlib is installed (the `report` extra)."""
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        return False
    return True


def _figure(width: float, height: float):
    from matplotlib.figure import Figure

    return Figure(figsize=(width, height), layout="constrained")


def to_svg(fig, prefix: str) -> str:
    """The figure as an <svg> element for inline HTML, its ids prefixed so figures never clash."""
    import matplotlib

    buffer = io.StringIO()
    with matplotlib.rc_context(RC):
        fig.savefig(buffer, format="svg", dpi=144,  # dpi only sets the resolution of rasterized artists
                    metadata={"Date": None, "Creator": None, "Format": None, "Type": None})
    svg = buffer.getvalue()
    svg = svg[svg.index("<svg"):]
    svg = re.sub(r'\s+xmlns(:xlink)?="[^"]*"', "", svg, count=2)
    svg = re.sub(r'(\bid=")([^"]+")', rf"\g<1>{prefix}-\g<2>", svg)
    svg = re.sub(r"url\(#", f"url(#{prefix}-", svg)
    svg = re.sub(r'(href=")#', rf"\g<1>#{prefix}-", svg)
    return svg.replace("<svg ", f'<svg role="img" aria-label="{prefix}" ', 1).strip()


def _plot_range(values: np.ndarray) -> tuple[float, float] | None:
    finite = values[np.isfinite(values)]
    if len(finite) == 0:
        return None
    low, high = np.quantile(finite, [0.001, 0.999]) if len(finite) > 2000 else (finite.min(), finite.max())
    if low == high:
        low, high = low - 0.5, high + 0.5
    return float(low), float(high)


def distribution(name: str, pool: np.ndarray, selected: np.ndarray, cuts: list[tuple[str, float]],
                 prefix: str, bins: int = 40) -> str | None:
    """Density of a score in the pool and in the selection, with cut-offs as dashed lines."""
    import matplotlib

    span = _plot_range(pool)
    if span is None:
        return None
    with matplotlib.rc_context(RC):
        fig = _figure(4.2, 2.5)
        ax = fig.add_subplot()
        edges = np.linspace(span[0], span[1], bins + 1)
        for values, color, label in ((pool, POOL, "pool"), (selected, SELECTED, "selection")):
            finite = np.clip(values[np.isfinite(values)], span[0], span[1])
            if len(finite) == 0:
                continue
            counts, _ = np.histogram(finite, bins=edges)
            density = counts / (counts.sum() * np.diff(edges))
            ax.stairs(density, edges, color=color, fill=label == "pool", alpha=0.55 if label == "pool" else 1,
                      linewidth=1.4, label=f"{label} ({len(finite):,})")
        for label, value in cuts:
            if span[0] <= value <= span[1]:
                ax.axvline(value, color=CUT, linestyle="--", linewidth=1.1, label=f"cut: {label}")
        ax.set_title(name, loc="left")
        ax.set_ylabel("density")
        ax.legend(fontsize=7, loc="best")
        return to_svg(fig, prefix)


def composition(groups: list[str], pool_share: list[float], selected_share: list[float], prefix: str,
                title: str) -> str:
    """Share of each group in the pool and in the selection, side by side."""
    import matplotlib

    with matplotlib.rc_context(RC):
        fig = _figure(6.5, max(1.6, 0.26 * len(groups) + 0.8))
        ax = fig.add_subplot()
        y = np.arange(len(groups))
        ax.barh(y - 0.2, pool_share, height=0.4, color=POOL, label="pool")
        ax.barh(y + 0.2, selected_share, height=0.4, color=SELECTED, label="selection")
        ax.set_yticks(y, groups)
        ax.invert_yaxis()
        ax.set_xlabel("share")
        ax.set_title(title, loc="left")
        ax.legend(fontsize=7, loc="lower right", bbox_to_anchor=(1.0, 1.0), ncols=2)
        return to_svg(fig, prefix)


def funnel(stages: list[str], kept: list[int], prefix: str) -> str:
    """Examples left after each stage."""
    import matplotlib

    with matplotlib.rc_context(RC):
        fig = _figure(6.5, max(1.4, 0.3 * len(stages) + 0.7))
        ax = fig.add_subplot()
        y = np.arange(len(stages))
        ax.barh(y, kept, color=SELECTED)
        for i, k in enumerate(kept):
            ax.text(k, i, f" {k:,}", va="center", fontsize=7)
        ax.set_yticks(y, stages)
        ax.invert_yaxis()
        ax.set_xlabel("examples left")
        ax.set_xlim(0, max(kept) * 1.15 if kept and max(kept) else 1)
        return to_svg(fig, prefix)


def heatmap(labels: list[str], matrix: np.ndarray, prefix: str) -> str:
    """Spearman correlations between scores, annotated."""
    import matplotlib

    with matplotlib.rc_context(RC):
        size = max(2.6, 0.45 * len(labels) + 1.6)
        fig = _figure(size + 0.8, size)
        ax = fig.add_subplot()
        image = ax.imshow(np.nan_to_num(matrix, nan=0.0), vmin=-1, vmax=1, cmap="RdBu_r")
        ticks = np.arange(len(labels))
        ax.set_xticks(ticks, [label.removeprefix("score.") for label in labels], rotation=45, ha="right")
        ax.set_yticks(ticks, [label.removeprefix("score.") for label in labels])
        if len(labels) <= 12:
            for i in range(len(labels)):
                for j in range(len(labels)):
                    text = "–" if np.isnan(matrix[i, j]) else f"{matrix[i, j]:.2f}"
                    dark = not np.isnan(matrix[i, j]) and abs(matrix[i, j]) > 0.6
                    ax.text(j, i, text, ha="center", va="center", fontsize=7, color="white" if dark else "black")
        fig.colorbar(image, ax=ax, shrink=0.8)
        return to_svg(fig, prefix)


def scatter_map(xy: np.ndarray, selected: np.ndarray, prefix: str, title: str) -> str:
    """A 2-D map of (sampled) examples, selected ones on top."""
    import matplotlib

    with matplotlib.rc_context(RC):
        fig = _figure(5.5, 4.2)
        ax = fig.add_subplot()
        # points as one embedded PNG (a data: URI the page's CSP allows): thousands of SVG elements otherwise
        ax.scatter(xy[~selected, 0], xy[~selected, 1], s=4, color=POOL, alpha=0.6, linewidths=0,
                   label=f"not selected ({int((~selected).sum()):,})", rasterized=True)
        ax.scatter(xy[selected, 0], xy[selected, 1], s=6, color=SELECTED, linewidths=0,
                   label=f"selected ({int(selected.sum()):,})", rasterized=True)
        ax.set_title(title, loc="left")
        ax.set_xticks([])
        ax.set_yticks([])
        ax.legend(fontsize=7, loc="best", markerscale=2)
        return to_svg(fig, prefix)
