"""PNG plots of scenario figures (matplotlib's Agg backend: no display needed)."""

from __future__ import annotations

from pathlib import Path

Series = dict[str, list[tuple[float, float]]]


def line_plot(
    path: Path, title: str, xlabel: str, ylabel: str, series: Series, *, logx: bool = False
) -> Path:
    """One line per series of (x, y) points, written to `path`."""
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib import pyplot

    figure, axes = pyplot.subplots(figsize=(7, 4.5), dpi=100)
    for name, points in series.items():
        xs, ys = zip(*sorted(points), strict=True)
        axes.plot(xs, ys, marker="o", label=name)
    if logx:
        axes.set_xscale("log", base=2)
    axes.set(title=title, xlabel=xlabel, ylabel=ylabel)
    axes.grid(True, alpha=0.3)
    axes.legend()
    figure.tight_layout()
    figure.savefig(path)
    pyplot.close(figure)
    return path


def bar_plot(path: Path, title: str, ylabel: str, bars: dict[str, dict[str, float]]) -> Path:
    """Grouped bars: one group per key of `bars`, one bar per inner key, log scale."""
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib import pyplot

    groups = list(bars)
    names = list(dict.fromkeys(name for group in bars.values() for name in group))
    width = 0.8 / max(1, len(names))
    figure, axes = pyplot.subplots(figsize=(max(7, len(groups) * 0.9), 4.5), dpi=100)
    for index, name in enumerate(names):
        xs = [i + index * width for i in range(len(groups))]
        axes.bar(xs, [bars[group].get(name, 0.0) for group in groups], width, label=name)
    axes.set_xticks([i + width * (len(names) - 1) / 2 for i in range(len(groups))])
    axes.set_xticklabels(groups, rotation=30, ha="right", fontsize=8)
    axes.set_yscale("log")
    axes.set(title=title, ylabel=ylabel)
    axes.legend()
    figure.tight_layout()
    figure.savefig(path)
    pyplot.close(figure)
    return path
