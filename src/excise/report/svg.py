"""Tiny dependency-free SVG charts, so report.html stays self-contained (no network at view time)."""

from __future__ import annotations

from html import escape

from excise.report.fmt import finite

PALETTE = ("#4c72b0", "#dd8452", "#55a868", "#c44e52", "#8172b3", "#937860", "#da8bc3", "#8c8c8c")


def bar_chart(
    title: str,
    groups: list[str],
    series: dict[str, list[float | None]],
    *,
    width: int = 640,
    height: int = 260,
    ymax: float | None = None,
) -> str:
    """Grouped bars: one group per label in ``groups``, one bar per series."""
    top = ymax or max([v for vs in series.values() for v in vs if finite(v)] + [1e-9])
    left, bottom, plot_h = 48, 40, height - 80
    plot_w = width - left - 16
    group_w = plot_w / max(1, len(groups))
    bar_w = group_w * 0.8 / max(1, len(series))
    parts = [
        f'<svg class="chart" role="img" aria-label="{escape(title)}" width="{width}" height="{height}" xmlns="http://www.w3.org/2000/svg">'
    ]
    parts.append(
        f'<text x="{width / 2}" y="16" text-anchor="middle" font-weight="bold">{escape(title)}</text>'
    )
    for tick in range(5):
        value = top * tick / 4
        y = height - bottom - plot_h * tick / 4
        parts.append(
            f'<line x1="{left}" x2="{width - 16}" y1="{y:.1f}" y2="{y:.1f}" stroke="#ddd"/>'
        )
        parts.append(
            f'<text x="{left - 4}" y="{y + 4:.1f}" text-anchor="end" font-size="10">{value:.2g}</text>'
        )
    for s, (name, values) in enumerate(series.items()):
        color = PALETTE[s % len(PALETTE)]
        for g, value in enumerate(values):
            if not finite(value):  # None, NaN, inf: no bar
                continue
            h = plot_h * min(value, top) / top
            x = left + g * group_w + group_w * 0.1 + s * bar_w
            y = height - bottom - h
            parts.append(
                f'<rect x="{x:.1f}" y="{y:.1f}" width="{bar_w:.1f}" height="{h:.1f}" fill="{color}"><title>{escape(name)} {escape(groups[g])}: {value:.3f}</title></rect>'
            )
        parts.append(
            f'<rect x="{left + s * 110}" y="{height - 14}" width="10" height="10" fill="{color}"/><text x="{left + s * 110 + 14}" y="{height - 5}" font-size="11">{escape(name)}</text>'
        )
    for g, label in enumerate(groups):
        x = left + g * group_w + group_w / 2
        parts.append(
            f'<text x="{x:.1f}" y="{height - bottom + 14}" text-anchor="middle" font-size="10">{escape(label)}</text>'
        )
    parts.append("</svg>")
    return "".join(parts)


def line_chart(
    title: str,
    series: dict[str, list[tuple[float, float | None]]],
    *,
    xlabel: str = "",
    ylabel: str = "",
    width: int = 640,
    height: int = 260,
    ymax: float | None = None,
) -> str:
    """Lines through (x, y) points, one per series."""
    # a point without a finite value (None, NaN, inf) is left out
    series = {k: [(x, y) for x, y in pts if finite(x) and finite(y)] for k, pts in series.items()}
    points = [p for pts in series.values() for p in pts]
    xmax = max([x for x, _ in points] + [1e-9])
    top = ymax or max([y for _, y in points] + [1e-9])
    left, bottom, plot_h = 48, 44, height - 84
    plot_w = width - left - 16

    def at(x: float, y: float) -> str:
        return f"{left + plot_w * x / xmax:.1f},{height - bottom - plot_h * min(y, top) / top:.1f}"

    parts = [
        f'<svg class="chart" role="img" aria-label="{escape(title)}" width="{width}" height="{height}" xmlns="http://www.w3.org/2000/svg">'
    ]
    parts.append(
        f'<text x="{width / 2}" y="16" text-anchor="middle" font-weight="bold">{escape(title)}</text>'
    )
    for tick in range(5):
        y = height - bottom - plot_h * tick / 4
        parts.append(
            f'<line x1="{left}" x2="{width - 16}" y1="{y:.1f}" y2="{y:.1f}" stroke="#ddd"/>'
        )
        parts.append(
            f'<text x="{left - 4}" y="{y + 4:.1f}" text-anchor="end" font-size="10">{top * tick / 4:.2g}</text>'
        )
        x = left + plot_w * tick / 4
        parts.append(
            f'<text x="{x:.1f}" y="{height - bottom + 14}" text-anchor="middle" font-size="10">{xmax * tick / 4:.3g}</text>'
        )
    parts.append(
        f'<text x="{left + plot_w / 2}" y="{height - bottom + 28}" text-anchor="middle" font-size="11">{escape(xlabel)}</text>'
    )
    parts.append(
        f'<text x="12" y="{height / 2}" font-size="11" transform="rotate(-90 12 {height / 2})" text-anchor="middle">{escape(ylabel)}</text>'
    )
    for s, (name, pts) in enumerate(series.items()):
        color = PALETTE[s % len(PALETTE)]
        path = " ".join(at(x, y) for x, y in pts)
        parts.append(
            f'<polyline fill="none" stroke="{color}" stroke-width="2" points="{path}"><title>{escape(name)}</title></polyline>'
        )
        for x, y in pts:
            parts.append(
                f'<circle cx="{at(x, y).split(",")[0]}" cy="{at(x, y).split(",")[1]}" r="3" fill="{color}"><title>{escape(name)} @ {x:g}: {y:.3f}</title></circle>'
            )
        parts.append(
            f'<rect x="{left + s * 120}" y="{height - 14}" width="10" height="10" fill="{color}"/><text x="{left + s * 120 + 14}" y="{height - 5}" font-size="11">{escape(name)}</text>'
        )
    parts.append("</svg>")
    return "".join(parts)
