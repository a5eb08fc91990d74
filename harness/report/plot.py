"""`harness table --plot FILE.png`: each head's validation accuracy per iteration against its
majority rate, so a head that learned nothing is visible at a glance. matplotlib only, imported
when the chart is asked for (the table itself stays quick)."""

from __future__ import annotations

from pathlib import Path
from typing import Callable, Optional

from harness.core import metrics as contract
from harness.core.labels import majority_rates


def plot(book, rows: list, path: Path, value: Callable[[object, str], Optional[float]]) -> Path:
    """One panel per head, a bar per iteration (`value(run, head)`: the table's number), each
    head's majority rate as a dashed line; stale runs hatched, iterations not run left empty."""
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib.figure import Figure
    from matplotlib.lines import Line2D
    from matplotlib.patches import Patch

    dataset = book.resolve(book.names[0]).data.name
    single = contract.single_head(dataset)
    heads = contract.heads_of(dataset)
    rates = majority_rates(dataset)
    cols = min(4, len(heads))
    nrows = -(-len(heads) // cols)
    width = max(4.0, 0.42 * len(rows) + 1.5)
    figure = Figure(figsize=(width * cols, 3.4 * nrows), layout="constrained")
    axes = figure.subplots(nrows, cols, squeeze=False)
    x = list(range(len(rows)))
    for ax, head in zip(axes.flat, heads):
        for i, row in enumerate(rows):
            shown = value(row.run, head) if row.run else None
            if shown is None:
                continue
            stale = row.state == "stale"
            ax.bar(i, shown, color="lightgrey" if stale else "tab:blue", hatch="//" if stale else None,
                   edgecolor="grey" if stale else "tab:blue")
        if head in rates:
            ax.axhline(rates[head], color="tab:red", linestyle="--", linewidth=1.2)
            ax.text(len(rows) - 0.5, rates[head], f"majority {rates[head]:.3f}", color="tab:red",
                    ha="right", va="bottom", fontsize=8)
        ax.set_title("val acc" if single else head)
        ax.set_ylim(0, 1)
        ax.set_xticks(x, [row.name for row in rows], rotation=60, ha="right", fontsize=8)
        ax.set_xlim(-0.6, len(rows) - 0.4)
        ax.grid(axis="y", alpha=0.3)
    for ax in list(axes.flat)[len(heads):]:
        ax.axis("off")
    figure.legend(handles=[Patch(color="tab:blue", label="current run"),
                           Patch(facecolor="lightgrey", edgecolor="grey", hatch="//", label="stale run"),
                           Line2D([], [], color="tab:red", linestyle="--", label="majority rate")],
                  loc="outside lower center", ncols=3, fontsize=8)
    figure.suptitle(f"{book.experiment}: validation accuracy per head (selected checkpoint; empty: not run)")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=110)
    return path
