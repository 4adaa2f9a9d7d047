"""Plots saved with every run: accuracy curve and partition heatmap (PNG)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # headless: servers and CI have no display
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from matplotlib.ticker import MaxNLocator  # noqa: E402

from common.io import atomic_write  # noqa: E402


def _save(fig, path: Path) -> None:
    atomic_write(path, lambda tmp: fig.savefig(tmp, format="png", dpi=120))
    plt.close(fig)


def plot_accuracy(
    rounds: Sequence[int], accuracy: Sequence[float], title: str, path: Path
) -> None:
    """Global test accuracy per round, with the best round marked."""
    fig, ax = plt.subplots(figsize=(6, 4))
    ax.plot(rounds, np.asarray(accuracy) * 100, marker="o", ms=3)
    if len(accuracy):
        best = int(np.argmax(accuracy))
        ax.scatter(
            [rounds[best]],
            [accuracy[best] * 100],
            color="tab:red",
            zorder=3,
            label=f"best {accuracy[best] * 100:.2f}% (round {rounds[best]})",
        )
        ax.legend(loc="lower right")
    ax.set_xlabel("round")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_ylabel("global test accuracy (%)")
    ax.set_title(title, fontsize=9)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    _save(fig, path)


def plot_partition_heatmap(
    counts: np.ndarray, class_names: Sequence[str], title: str, path: Path
) -> None:
    """Clients x classes sample counts (numbers in the cells for small tables)."""
    num_clients, num_classes = counts.shape
    # A row per client up to 10 inches tall; beyond that the rows shrink (a
    # 1,000-client figure at 0.4 inch a row was 48,000 pixels and 0.7 GB).
    fig, ax = plt.subplots(
        figsize=(
            max(5, 0.6 * num_classes + 2),
            min(11.5, max(3, 0.4 * num_clients + 1.5)),
        )
    )
    im = ax.imshow(counts, aspect="auto", cmap="viridis", interpolation="nearest")
    ax.set_xlabel("class")
    ax.set_ylabel("client (partition-id)")
    if num_clients <= 25:
        ax.set_yticks(range(num_clients))
    else:
        ax.yaxis.set_major_locator(MaxNLocator(integer=True))
    if num_classes <= 20:
        ax.set_xticks(
            range(num_classes), class_names, rotation=45, ha="right", fontsize=7
        )
    if num_clients * num_classes <= 400:
        vmax = counts.max() or 1
        for i in range(num_clients):
            for j in range(num_classes):
                ax.text(
                    j,
                    i,
                    str(counts[i, j]),
                    ha="center",
                    va="center",
                    fontsize=6,
                    color="white" if counts[i, j] < 0.6 * vmax else "black",
                )
    fig.colorbar(im, ax=ax, label="samples")
    ax.set_title(title, fontsize=9)
    fig.tight_layout()
    _save(fig, path)


def plot_curves_panels(
    panels: dict[str, dict[str, tuple[Sequence[int], np.ndarray, np.ndarray]]],
    title: str,
    path: Path,
    ylabel: str = "global test accuracy (%)",
) -> None:
    """One panel per key, one line per series: mean per round with a +-std band.

    ``panels[panel][series] = (rounds, mean, std)``, values as fractions
    (plotted in %); a zero std draws no band.
    """
    names = list(panels)
    cols = min(3, max(1, len(names)))
    rows = -(-len(names) // cols)
    fig, axes = plt.subplots(
        rows, cols, figsize=(4.2 * cols, 3.4 * rows), squeeze=False, sharey=True
    )
    for ax, name in zip(axes.flat, names, strict=False):
        for i, (series, (rounds, mean, std)) in enumerate(panels[name].items()):
            color = f"C{i % 10}"
            mean, std = np.asarray(mean) * 100, np.asarray(std) * 100
            ax.plot(rounds, mean, color=color, label=series, lw=1.4)
            if np.any(std > 0):
                ax.fill_between(rounds, mean - std, mean + std, color=color, alpha=0.2)
        ax.set_title(name, fontsize=9)
        ax.set_xlabel("round")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.grid(alpha=0.3)
    for ax in axes[:, 0]:
        ax.set_ylabel(ylabel)
    for ax in list(axes.flat)[len(names) :]:
        ax.set_visible(False)
    handles, labels = axes.flat[0].get_legend_handles_labels()
    ncol = min(len(labels), 3 * cols)  # legend rows fit the figure's width
    legend_rows = -(-len(labels) // max(1, ncol))
    fig.legend(handles, labels, loc="lower center", ncol=max(1, ncol), fontsize=8)
    fig.suptitle(title, fontsize=9)
    fig.tight_layout(rect=(0, 0.05 * legend_rows / rows + 0.03, 1, 1))
    _save(fig, path)
