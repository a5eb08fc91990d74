"""Figures for a run: training curves per head and confusion matrices (matplotlib, Agg).

The notes' `plot_train_history` meant to draw one panel per head with train against validation;
here it is, with the pass boundaries marked so "reload the best checkpoint, lower the LR" shows.
"""

from __future__ import annotations

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from harness.core import metrics  # noqa: E402


def close(figure) -> None:
    plt.close(figure)


def training_curves(history: list[dict], dataset: str, title: str = ""):
    """One panel for the total loss and one per head (accuracy, train vs validation);
    x is the epoch counted across passes, dotted lines mark where a new pass starts."""
    panels = metrics.curve_panels(dataset)
    cols = min(3, len(panels))
    rows = int(np.ceil(len(panels) / cols))
    figure, axes = plt.subplots(rows, cols, figsize=(4.2 * cols, 3.0 * rows), squeeze=False)
    steps = [h["step"] for h in history]
    starts = [h["step"] for prev, h in zip(history, history[1:]) if h["pass"] != prev["pass"]]
    for ax, (train_key, val_key, label) in zip(axes.flat, panels):
        for key, name in ((train_key, "train"), (val_key, "validation")):
            values = [h["metrics"].get(key, np.nan) for h in history]
            ax.plot(steps, values, marker="o", markersize=2.5, label=name)
        for start in starts:
            ax.axvline(start - 0.5, color="grey", linestyle=":", linewidth=1)
        ax.set_title(label)
        ax.set_xlabel("epoch")
        ax.grid(alpha=0.3)
    for ax in list(axes.flat)[len(panels):]:
        ax.axis("off")
    axes.flat[0].legend()
    figure.suptitle(title)
    figure.tight_layout()
    return figure


def confusion_matrix(labels, predictions, classes, title: str = ""):
    """Counts with row-normalised colour, so a head stuck on its majority class is obvious."""
    from sklearn.metrics import confusion_matrix as sk_confusion

    n = len(classes)
    counts = sk_confusion(np.asarray(labels), np.asarray(predictions), labels=list(range(n)))
    rates = counts / np.maximum(counts.sum(axis=1, keepdims=True), 1)
    size = max(3.5, 0.9 * n + 1.5)
    figure, ax = plt.subplots(figsize=(size + 1, size))
    image = ax.imshow(rates, cmap="Blues", vmin=0, vmax=1)
    for i in range(n):
        for j in range(n):
            ax.text(j, i, str(counts[i, j]), ha="center", va="center",
                    color="white" if rates[i, j] > 0.6 else "black", fontsize=8)
    ax.set_xticks(range(n), [str(c) for c in classes], rotation=35, ha="right", fontsize=8)
    ax.set_yticks(range(n), [str(c) for c in classes], fontsize=8)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    accuracy = np.trace(counts) / max(counts.sum(), 1)
    ax.set_title(f"{title}\naccuracy {accuracy:.3f}", fontsize=9)
    figure.colorbar(image, ax=ax, fraction=0.046)
    figure.tight_layout()
    return figure
