"""The refit's two plots, as PNG bytes: the cumulative explained variance, and PC1 against PC2 coloured by label."""

from __future__ import annotations

import io

import numpy as np

# Points drawn in the PC1/PC2 scatter at most (a random sample of the table's rows beyond that).
SCATTER_SAMPLE = 3000


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _png(figure) -> bytes:
    plt = _pyplot()
    buffer = io.BytesIO()
    figure.tight_layout()
    figure.savefig(buffer, format="png")
    plt.close(figure)
    return buffer.getvalue()


def explained_variance_plot(ratios: np.ndarray, kept: list[float]) -> bytes:
    """The cumulative explained variance of all components (``ratios``) and of the ``kept`` ones."""
    plt = _pyplot()
    figure, axis = plt.subplots(figsize=(6, 4), dpi=110)
    shown = min(len(ratios), max(100, 2 * len(kept)))
    axis.plot(np.arange(1, shown + 1), np.cumsum(ratios[:shown]), label="all components")
    axis.plot(np.arange(1, len(kept) + 1), np.cumsum(kept), "o", markersize=3, label=f"kept (k={len(kept)})")
    axis.set(xlabel="components", ylabel="cumulative explained variance", ylim=(0, 1.01), title="PCA explained variance")
    axis.grid(alpha=0.3)
    axis.legend(loc="lower right")
    return _png(figure)


def scatter_plot(labels: np.ndarray, points: np.ndarray, total: int, coordinates_version: int) -> bytes:
    """PC1 against PC2 of ``points`` ((n, k), a sample of ``total`` rows in version ``coordinates_version``)."""
    plt = _pyplot()
    figure, axis = plt.subplots(figsize=(7, 6), dpi=110)
    names = sorted(set(labels))
    colours = plt.get_cmap("tab20")
    for index, label in enumerate(names):
        mine = points[labels == label]
        second = mine[:, 1] if mine.shape[1] > 1 else np.zeros(len(mine))
        axis.scatter(mine[:, 0], second, s=6, color=colours(index % 20), label=label)
    axis.set(
        xlabel="PC1", ylabel="PC2",
        title=f"PC1 vs PC2 (v{coordinates_version}), {len(points)} of {total} rows, {len(names)} labels",
    )
    if len(names) <= 20:
        axis.legend(fontsize=6, markerscale=2, loc="best")
    return _png(figure)
