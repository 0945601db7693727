"""Markdown report and plots of `ode_suite.py`."""

import os
from typing import Any

import _common
from _common import log


# The root finders in the order of their plot colours.
ROOT_FINDER_NAMES = ["DEER", "QuasiDEER", "Picard", "Jacobi", "ELK", "QuasiELK"]


COLUMNS = {
    "T": "T",
    "dtype": "dtype",
    "method": "method",
    "mode": "mode",
    "windows": "windows x K",
    "compile_seconds": "compile",
    "run_seconds": "run",
    "ratio_diffeqsolve": "x diffeqsolve",
    "ratio_lax.scan": "x lax.scan",
    "iterations": "iterations",
    "result": "result",
    "error_sequential": "err. vs seq.",
    "error_reference": "err. vs ref.",
    "memory_bytes": "memory MiB",
    "note": "note",
}


def _format_row(row: dict[str, Any]) -> dict[str, Any]:
    formatted = {}
    for key, column in COLUMNS.items():
        value = row.get(key)
        if key.endswith("_seconds"):
            value = _common.format_seconds(value)
        elif key == "memory_bytes":
            value = _common.format_mib(value)
        formatted[column] = value
    return formatted


def markdown_report(rows, arguments, total_seconds: float) -> str:
    dtypes = sorted({row["dtype"] for row in rows})
    notes = [
        "base solver Tsit5 with constant steps on [0, t1]; every method uses the same "
        "T steps; states compared at 100 equally spaced checkpoints",
        "ParallelNewtonSolver: `windows x K` = W diffrax steps (windows) of K micro-steps; "
        f"at most {arguments.max_newton_steps} Newton iterations per window; "
        "`iterations` is the total over accepted windows; the root finders' default "
        "tolerances (tol = eps^0.75)",
        "GRU: `lax.scan` is the sequential baseline and `solve_recurrence` the parallel "
        "method, over the whole sequence",
        "x diffeqsolve, x lax.scan: run time divided by that of the sequential method",
        "err. vs ref.: max |y - y_ref| / max(1, max |y_ref|) at the checkpoints, y_ref "
        "from Dopri8 at rtol = atol = 1e-12 in float64 (GRU: float64 lax.scan)",
        "err. vs seq.: the same against the sequential solution (diffeqsolve, GRU: "
        "lax.scan) in the same dtype; a converged method must be within max(10 err. "
        "vs ref. of the sequential solution, sqrt(eps), min(T tol, 0.1)), where tol "
        "is the root finders' tolerance per step",
        f"total wall time of this run: {total_seconds:.0f} s",
    ]
    sections = [
        "## ODE suite\n",
        _common.header(_common.command_line(), dtypes, notes),
    ]
    labels = list(dict.fromkeys(row["problem"] for row in rows))
    for label in labels:
        problem_rows = [_format_row(row) for row in rows if row["problem"] == label]
        sections.append(f"\n### {label}\n")
        sections.append(_common.markdown_table(list(COLUMNS.values()), problem_rows))
    return "\n".join(sections) + "\n"


def _method_label(row) -> str:
    if row["mode"] is None:
        return row["method"]
    return f"{row['method']} {MODE_ABBREVIATIONS[row['mode']]}"


MODE_ABBREVIATIONS = {"sequential": "seq.", "associative": "assoc."}


def _line_style(row) -> dict[str, Any]:
    """Returns the line style of a method: one colour per root finder (black and grey
    for the sequential methods), dashed for the associative mode."""
    import matplotlib.pyplot as plt

    if row["mode"] is None:
        colour = "black" if row["method"] == "diffeqsolve" else "grey"
        return {"color": colour, "linestyle": ":", "marker": "s"}
    colours = plt.get_cmap("tab10").colors
    colour = colours[ROOT_FINDER_NAMES.index(row["method"])]
    if row["mode"] == "associative":
        return {"color": colour, "linestyle": "--", "marker": "^"}
    return {"color": colour, "linestyle": "-", "marker": "o"}


def write_plots(rows, output_dir: str) -> None:
    """Writes log-log plots of run time and iterations against T, one file per dtype."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    for dtype in sorted({row["dtype"] for row in rows}):
        dtype_rows = [row for row in rows if row["dtype"] == dtype]
        labels = list(dict.fromkeys(row["problem"] for row in dtype_rows))
        for quantity, ylabel in (
            ("run_seconds", "run time (s)"),
            ("iterations", "Newton iterations"),
        ):
            columns = min(3, len(labels))
            num_rows = -(-len(labels) // columns)
            figure, axes = plt.subplots(
                num_rows, columns, figsize=(5 * columns, 4 * num_rows), squeeze=False
            )
            for axis, label in zip(axes.flat, labels):
                _plot_problem(
                    axis, [r for r in dtype_rows if r["problem"] == label], quantity
                )
                axis.set_title(f"{label} ({dtype})")
                axis.set_xlabel("T (steps)")
                axis.set_ylabel(ylabel)
            for axis in list(axes.flat)[len(labels) :]:
                axis.set_visible(False)
            figure.suptitle("crosses: runs that did not converge", fontsize=9)
            figure.tight_layout()
            name = "time" if quantity == "run_seconds" else "iterations"
            path = os.path.join(output_dir, f"ode_suite_{name}_{dtype}.png")
            figure.savefig(path, dpi=100)
            plt.close(figure)
            log(f"wrote {path}")


def _plot_problem(axis, rows, quantity: str) -> None:
    """Plots one line per method through its converged runs; failures are crosses."""
    for method in dict.fromkeys(_method_label(row) for row in rows):
        method_rows = [
            row
            for row in rows
            if _method_label(row) == method and row.get(quantity) is not None
        ]
        if not method_rows:
            continue
        style = _line_style(method_rows[0])
        converged = [
            (row["T"], row[quantity])
            for row in method_rows
            if row.get("result") == "successful"
        ]
        failed = [
            (row["T"], row[quantity])
            for row in method_rows
            if row.get("result") != "successful"
        ]
        if converged:
            axis.loglog(*zip(*converged), label=method, **style)
        if failed:
            axis.loglog(
                *zip(*failed),
                "x",
                color=style["color"],
                markersize=10,
                label=None if converged else f"{method} (failed)",
            )
    axis.grid(True, which="both", alpha=0.3)
    axis.legend(fontsize=7)
