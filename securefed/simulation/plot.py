"""``--plot FILE.png``: held-out utility against rounds, one line per target epsilon, and the epsilon the
members actually spent, side by side."""

from __future__ import annotations

from collections import defaultdict
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only: no display, no GUI toolkit

import matplotlib.pyplot as plt  # noqa: E402

from securefed.errors import ConfigError  # noqa: E402
from securefed.simulation.records import RoundRecord  # noqa: E402


def _label(eps: float | None) -> str:
    return "non-private" if eps is None else f"target \u03b5 = {eps:g}"


def plot_records(records: list[RoundRecord], path: Path) -> Path:
    """Draw ``records`` into ``path`` (PNG); ``ConfigError`` if the file cannot be written."""
    by_eps: dict[float | None, list[RoundRecord]] = defaultdict(list)
    for r in records:
        by_eps[r.epsilon].append(r)
    order = sorted(by_eps, key=lambda e: float("inf") if e is None else e)
    first = records[0]
    metric = next(iter(first.metric), None)
    panels = 3 if metric else 2
    fig, axes = plt.subplots(1, panels, figsize=(5.2 * panels, 4.2), constrained_layout=True)
    ax_ppl, ax_eps = axes[0], axes[-1]
    for eps in order:
        rs = sorted(by_eps[eps], key=lambda r: r.round)
        rounds = [r.round for r in rs]
        style = dict(marker="o", linestyle="--" if eps is None else "-", label=_label(eps))
        ax_ppl.plot(rounds, [r.heldout_ppl for r in rs], **style)
        if metric:
            axes[1].plot(rounds, [r.metric.get(metric, float("nan")) for r in rs], **style)
        if eps is not None:
            ax_eps.plot(rounds, [r.epsilon_spent_max or 0.0 for r in rs], **style)
            ax_eps.axhline(eps, color=ax_eps.lines[-1].get_color(), linewidth=0.8, linestyle=":")
    ax_ppl.set(xlabel="round", ylabel="held-out perplexity (lower is better)", title="Utility")
    if metric:
        axes[1].set(xlabel="round", ylabel=metric.replace("_", " "), title="Task metric")
    ax_eps.set(xlabel="round", ylabel="\u03b5 spent (most-spent member)", title="Privacy spent (dotted: target)")
    for ax in axes:
        ax.grid(True, alpha=0.3)
        ax.xaxis.get_major_locator().set_params(integer=True)
        if ax.lines:
            ax.legend(fontsize=8)
    fig.suptitle(f"securefed simulate: {first.members} members, cohort {max(r.cohort for r in records)}, "
                 f"{first.mode}, {first.engine} engine", fontsize=11)
    try:
        fig.savefig(path, dpi=120)
    except OSError as exc:
        raise ConfigError(f"{path}: cannot write the plot ({exc.strerror})") from None
    finally:
        plt.close(fig)
    return path
