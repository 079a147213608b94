"""The chart of a bench.run beside its report: each of issue 19's ratios by target and database, with the
least each must reach (1.0 over the peer, 0.8 and 0.7 over the ceilings). SVG, text kept as text, and
no date or random ids inside, so that the same figures draw the same file."""

from __future__ import annotations

from pathlib import Path

from bench.report import Goal

COLOURS = {"sqlite": "#4c78a8", "postgresql": "#f58518"}
NAMES = {"sqlite": "SQLite", "postgresql": "PostgreSQL"}
BAR = 0.38  # height of one database's bar; a target's bars share 1.0


def draw(goals: list[Goal], path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")  # no display
    from matplotlib import pyplot

    matplotlib.rcParams.update({"svg.fonttype": "none", "svg.hashsalt": "invmesh-bench", "font.size": 9})
    targets = list(dict.fromkeys(g.what for g in goals))
    databases = list(dict.fromkeys(g.database for g in goals))
    figure, axes = pyplot.subplots(figsize=(9, 1.2 + 0.55 * len(targets)))
    for d, database in enumerate(databases):
        offset = (d - (len(databases) - 1) / 2) * BAR
        mine = [g for g in goals if g.database == database]
        ys = [targets.index(g.what) + offset for g in mine]
        colour, name = COLOURS.get(database), NAMES.get(database, database)
        axes.barh(ys, [g.ratio for g in mine], height=BAR, color=colour, label=name)
        for y, g in zip(ys, mine, strict=True):
            axes.annotate(f"{g.ratio:.2f}", (g.ratio, y), xytext=(3, 0), textcoords="offset points",
                          va="center", fontsize=7)  # fmt: skip
    for y, what in enumerate(targets):
        least = next(g.least for g in goals if g.what == what)
        # One legend entry for all the target lines: matplotlib leaves out labels starting with "_".
        axes.vlines(least, y - 0.5, y + 0.5, colors="black", linestyles="dashed", linewidth=1,
                    label="target" if y == 0 else "_target")  # fmt: skip
    axes.set_yticks(range(len(targets)), targets)
    axes.invert_yaxis()  # the first target on top, as in the report's table
    axes.set_xlabel("req/s through the facade over the peer's with 2 workers, or as named (higher is better)")
    axes.set_xlim(0, max(1.2, *(g.ratio * 1.12 for g in goals)))
    axes.set_title(title)
    axes.legend(loc="lower right", fontsize=8)
    axes.grid(axis="x", alpha=0.3)
    figure.tight_layout()
    figure.savefig(path, format="svg", metadata={"Date": None})
    pyplot.close(figure)
