"""Predictability decides how many DEER iterations a recurrence needs.

Reproduces the central experiment of

    X. Gonzalez, L. Kozachkov, D. M. Zoltowski, K. L. Clarkson, S. W. Linderman,
    "Predictability enables parallelization of nonlinear state space models",
    NeurIPS 2025, arXiv:2508.16817,

with this library's `solve_recurrence` and `estimate_lyapunov_exponent`. The model is
the mean-field RNN

    s_t = W tanh(s_{t-1}) + u_t,

with `D = 100` units, `W_ij ~ N(0, g^2 / D)` for `i != j` and `W_ii = 0`, and small
Gaussian inputs `u_t`. The paper shows that the gain `g` moves the largest Lyapunov
exponent (LLE) across zero. It also shows that the number of DEER (Newton) iterations
needed to evaluate the whole trajectory in parallel stays small for every length `T`
when the LLE is negative, and grows with `T` when it is positive.

For each gain `g` and length `T` the script computes the sequential trajectory with
`jax.lax.scan`, the LLE along it, and the number of DEER iterations from the default
initial guess (`y0` repeated), with a cap on the iterations (see `DEFAULT_MAX_STEPS`).
Each converged DEER trajectory is checked against the recurrence and the `lax.scan`
trajectory (see `check_trajectory`). A run that stops on a non-finite iterate is
reported as such. No run of the default grid does, and DEER's iterates on this model
also stayed finite at g = 4 and 8 (tried separately with T = 300 and 30 iterations).

Differences from the authors' experiment code
(github.com/lindermanlab/predictability_enables_parallelization): the inputs here are
Gaussian noise rather than sinusoids, and DEER starts from `y0` repeated rather than
from a random guess.

Run from the repository root:

    python examples/predictability.py [--quick] [--output-dir results/predictability]

It writes `predictability.png`, `predictability.csv` and `predictability.md` (the
table) to the output folder, and prints the table.
"""

import argparse
import csv
import math
import time
from pathlib import Path

import jax


# float64 keeps rounding out of the picture. The experiment is about how the dynamics
# condition the Newton iteration, and in float32 rounding errors of size 1e-7 grow like
# exp(LLE t) along a chaotic trajectory. They would then decide both the iteration
# count and the agreement with `lax.scan` long before the dynamics do.
jax.config.update("jax_enable_x64", True)

import jax.numpy as jnp
import jax.random as jr
import matplotlib
import numpy as np
from jax import lax

import diffrax_parallel as dp


matplotlib.use("Agg")
import matplotlib.pyplot as plt
import matplotlib.ticker


STATE_SIZE = 100
INPUT_SCALE = 0.1
SEED = 0
# The stopping test is max_t |r_t| / (atol + rtol |s_t|) < 1 on the residual
# r_t = s_t - f(s_{t-1}). 1e-8 is far above float64 rounding of the residual (about
# 1e-15 |s|), and Newton converges quadratically near the solution, so a tighter
# tolerance adds at most one iteration.
TOLERANCE = 1e-8
# A converged DEER trajectory must match `lax.scan` to this relative error on the
# steps that `_compared_steps` selects, where error growth stays below 1e6.
MAX_RELATIVE_ERROR = 1e-6
# The cap on DEER iterations for each length T. DEER is exact after at most T
# iterations, so T = 100 and T = 300 run uncapped. On the longer horizons the
# predictable cases converge in under 20 iterations, and the caps only bound the time
# spent on cases that need many more. One DEER iteration costs about 0.25 s at T = 1000
# and 3 s at T = 10000 on a 2-core CPU.
DEFAULT_MAX_STEPS = {100: 100, 300: 300, 1000: 50, 10000: 20}


def _parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description="Count DEER iterations against the largest Lyapunov exponent of a "
        "mean-field RNN, over a grid of gains and sequence lengths."
    )
    parser.add_argument(
        "--quick",
        action="store_true",
        help="a smaller grid (6 gains, T up to 1000) that runs in about a minute",
    )
    parser.add_argument(
        "--output-dir",
        type=Path,
        default=Path("results/predictability"),
        help="folder for the figure, the CSV and the Markdown table "
        "(default: results/predictability)",
    )
    parser.add_argument(
        "--max-steps",
        type=int,
        default=None,
        help="the cap on DEER iterations for every T; each run uses min(T, cap) "
        "(default: T for T <= 300, 50 for T = 1000, 20 for T = 10000)",
    )
    parser.add_argument(
        "--run-implied",
        action="store_true",
        help="also run DEER where the count at a shorter T already exceeds the cap "
        "(see `iteration_lower_bound`), which the default skips to save time",
    )
    args = parser.parse_args()
    if args.max_steps is not None and args.max_steps < 1:
        parser.error(f"--max-steps must be at least 1, got {args.max_steps}")
    return args


# --------------------------------------------------------------------------------------
# Model
# --------------------------------------------------------------------------------------


def rnn_step(state, inputs, weight):
    """Apply one step of the mean-field RNN, `s_t = W tanh(s_{t-1}) + u_t`."""
    return weight @ jnp.tanh(state) + inputs


def make_problem(max_length: int):
    """Return the unit-gain weight, the inputs `(max_length, D)` and the initial state.

    The weight for gain `g` is `g` times the unit-gain weight, so that every gain uses
    the same random matrix. Shorter runs use the first `T` inputs.
    """
    key_weight, key_inputs, key_state = jr.split(jr.key(SEED), 3)
    weight = jr.normal(key_weight, (STATE_SIZE, STATE_SIZE)) / math.sqrt(STATE_SIZE)
    weight = jnp.where(jnp.eye(STATE_SIZE, dtype=bool), 0.0, weight)
    inputs = INPUT_SCALE * jr.normal(key_inputs, (max_length, STATE_SIZE))
    initial_state = jr.normal(key_state, (STATE_SIZE,))
    return weight, inputs, initial_state


@jax.jit
def sequential_trajectory(initial_state, inputs, weight):
    def body(state, step_inputs):
        next_state = rnn_step(state, step_inputs, weight)
        return next_state, next_state

    return lax.scan(body, initial_state, inputs)[1]


# --------------------------------------------------------------------------------------
# One (g, T) case
# --------------------------------------------------------------------------------------


def _status(result) -> str:
    if result == dp.RESULTS.successful:
        return "converged"
    if result == dp.RESULTS.newton_max_steps_reached:
        return "max_steps"
    if result == dp.RESULTS.newton_nonfinite:
        return "nonfinite"
    return "failed: " + dp.RESULTS[result]


def _compared_steps(exponent: float, length: int) -> int:
    """Return the number of leading steps on which DEER must match `lax.scan`.

    Both trajectories satisfy the recurrence only up to small per-step errors (the
    solver's tolerance, and rounding), and a chaotic recurrence amplifies those like
    exp(LLE t). Beyond about `log(1e6) / LLE` steps the two are different, equally
    valid numerical trajectories and need not agree. A predictable recurrence damps
    the errors, so the whole trajectory is compared.
    """
    if exponent <= 0:
        return length
    return max(1, min(length, int(math.log(1e6) / exponent)))


def check_trajectory(ys, reference, initial_state, inputs, weight, exponent):
    """Check a converged DEER trajectory and return its error against `lax.scan`.

    Two checks, each raising a `RuntimeError` on failure: the residual
    `s_t - f(s_{t-1})`, recomputed here, meets the solver's stopping test at every
    step, and the trajectory matches `lax.scan` on the steps given by `_compared_steps`.
    """
    previous = jnp.concatenate([initial_state[None], ys[:-1]])
    following = jax.vmap(rnn_step, in_axes=(0, 0, None))(previous, inputs, weight)
    residual = jnp.abs(ys - following) / (TOLERANCE + TOLERANCE * jnp.abs(ys))
    if not float(jnp.max(residual)) < 1:
        raise RuntimeError(
            "DEER reported convergence, but its trajectory does not satisfy the "
            f"recurrence: the largest scaled residual is {float(jnp.max(residual)):.2e}"
            " (limit 1)."
        )
    num_compared = _compared_steps(exponent, ys.shape[0])
    difference = jnp.max(jnp.abs(ys[:num_compared] - reference[:num_compared]))
    error = float(difference / jnp.max(jnp.abs(reference[:num_compared])))
    if not error <= MAX_RELATIVE_ERROR:
        raise RuntimeError(
            "DEER reported convergence, but its first "
            f"{num_compared} states differ from lax.scan by a relative error of "
            f"{error:.2e} (limit {MAX_RELATIVE_ERROR:.0e})."
        )
    return error, num_compared


def run_case(
    gain, length, unit_weight, inputs, initial_state, max_steps, bound, run_implied
):
    """Run one (g, T) case and return its table row.

    `bound` is a lower bound on the number of DEER iterations from shorter horizons
    (see `iteration_lower_bound`). When it exceeds `max_steps`, DEER cannot converge
    within the cap and is run only if `run_implied` is True.
    """
    weight = gain * unit_weight
    inputs = inputs[:length]
    trajectory = sequential_trajectory(initial_state, inputs, weight)
    # A tenth of the steps lets the tangent vectors align with the most expanding
    # direction before averaging starts.
    estimate = dp.estimate_lyapunov_exponent(
        rnn_step,
        initial_state,
        trajectory,
        weight,
        xs=inputs,
        num_vectors=4,
        num_transient=length // 10,
    )
    exponent = float(estimate.lyapunov_exponent)
    row = {
        "g": gain,
        "T": length,
        "lle": exponent,
        "max_steps": max_steps,
        "window": dp.suggest_num_micro_steps(exponent, 1.0, max_num_micro_steps=length),
        "bound": bound,
        "iterations": None,
        "error": None,
        "compared_steps": None,
        "seconds": 0.0,
    }
    if bound > max_steps and not run_implied:
        row["status"] = "implied"
        return row

    start = time.perf_counter()
    solution = dp.solve_recurrence(
        rnn_step,
        initial_state,
        inputs,
        weight,
        solver=dp.DEER(rtol=TOLERANCE, atol=TOLERANCE),
        max_steps=max_steps,
        throw=False,
    )
    row["iterations"] = int(solution.num_newton_steps)
    row["seconds"] = time.perf_counter() - start
    row["status"] = _status(solution.result)
    if row["status"] == "converged":
        row["error"], row["compared_steps"] = check_trajectory(
            solution.ys, trajectory, initial_state, inputs, weight, exponent
        )
    return row


def iteration_lower_bound(rows, gain) -> int:
    """Return a lower bound on the DEER iterations for `gain` on a longer horizon.

    DEER from `y0` repeated is causal. Step `t` of the residual reads states `t` and
    `t - 1` only, and the Newton update is a forward substitution. So, in exact
    arithmetic and with the same inputs, the first `T'` states of every iterate on a
    horizon `T > T'` equal the iterates of the horizon `T'`. The stopping test on `T`
    includes the residuals of those states, so the count on `T` is at least the count
    on `T'`, or more than the cap on `T'` when that run did not converge.
    """
    bound = 0
    for row in rows:
        if row["g"] == gain:
            bound = max(bound, iteration_count_or_bound(row) or 0)
    return bound


def iteration_count_or_bound(row) -> int | None:
    """Return the iteration count of a converged run, else a lower bound on it.

    The bound is one more than the cap, or the bound from shorter horizons when that is
    larger. A run stopped by a non-finite iterate gives no bound and returns None.
    """
    if row["status"] == "converged":
        return row["iterations"]
    if row["status"] in ("max_steps", "implied"):
        return max(row["max_steps"] + 1, row["bound"])
    return None


# --------------------------------------------------------------------------------------
# Output
# --------------------------------------------------------------------------------------


_OUTCOMES = {
    "converged": "converged",
    "max_steps": "cap reached",
    "nonfinite": "non-finite iterate",
    "implied": "not run: bound > cap",
}


def _iterations_text(row) -> str:
    if row["status"] == "converged":
        return str(row["iterations"])
    if row["status"] == "max_steps":
        return f"> {row['max_steps']}"
    if row["status"] == "implied":
        return f"≥ {row['bound']}"
    return f"stopped at {row['iterations']}"


def format_table(rows) -> str:
    lines = [
        "| g | T | LLE per step | LLE × T | DEER iterations | cap | outcome | "
        "error vs scan (steps compared) | suggested window |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for row in rows:
        outcome = _OUTCOMES.get(row["status"], row["status"])
        error = ""
        if row["status"] == "converged":
            error = f"{row['error']:.1e} ({row['compared_steps']})"
        lines.append(
            f"| {row['g']:.3f} | {row['T']} | {row['lle']:+.4f} | "
            f"{row['lle'] * row['T']:+.1f} | {_iterations_text(row)} | "
            f"{row['max_steps']} | {outcome} | {error} | {row['window']} |"
        )
    return "\n".join(lines)


def write_csv(rows, path: Path) -> None:
    names = sorted({name for row in rows for name in row})
    with path.open("w", newline="") as file:
        writer = csv.DictWriter(file, fieldnames=names)
        writer.writeheader()
        writer.writerows(rows)


def _shown_gains(gains):
    """Return the gains of the grid nearest to 0.5, 1, 1.2, 1.5 and 2, in order."""
    selected = []
    for target in (0.5, 1.0, 1.2, 1.5, 2.0):
        nearest = min(gains, key=lambda gain: abs(gain - target))
        if nearest not in selected:
            selected.append(nearest)
    return selected


def _plot_against_exponent(axes, rows, lengths) -> None:
    colours = plt.get_cmap("viridis")(np.linspace(0, 0.85, len(lengths)))
    for length, colour in zip(lengths, colours):
        same_length = [r for r in rows if r["T"] == length]
        converged = [r for r in same_length if r["status"] == "converged"]
        bounded = [r for r in same_length if r["status"] in ("max_steps", "implied")]
        axes.scatter(
            [r["lle"] for r in converged],
            [iteration_count_or_bound(r) for r in converged],
            color=colour,
            label=f"T = {length}",
        )
        axes.scatter(
            [r["lle"] for r in bounded],
            [iteration_count_or_bound(r) for r in bounded],
            color=colour,
            marker="^",
            facecolors="none",
        )
    axes.scatter(
        [],
        [],
        color="grey",
        marker="^",
        facecolors="none",
        label="not converged (lower bound)",
    )
    axes.axvline(0.0, color="black", linestyle="--", linewidth=1)
    axes.set_xlabel("largest Lyapunov exponent (per step)")
    axes.set_title("DEER iterations against LLE")
    axes.legend(fontsize=8)


def _plot_against_length(axes, rows, gains, lengths) -> None:
    selected = _shown_gains(gains)
    colours = plt.get_cmap("plasma")(np.linspace(0, 0.85, len(selected)))
    for gain, colour in zip(selected, colours):
        gain_rows = [
            r
            for r in rows
            if r["g"] == gain and iteration_count_or_bound(r) is not None
        ]
        label = f"g = {gain:.2f} (LLE {gain_rows[-1]['lle']:+.3f} at T = "
        label += f"{gain_rows[-1]['T']})"
        for first, second in zip(gain_rows, gain_rows[1:]):
            # Dashed where the segment ends at a lower bound, not a measured count.
            measured = second["status"] == "converged"
            axes.plot(
                [first["T"], second["T"]],
                [iteration_count_or_bound(first), iteration_count_or_bound(second)],
                color=colour,
                linestyle="-" if measured else "--",
                label=label if first is gain_rows[0] else None,
            )
        for row in gain_rows:
            converged = row["status"] == "converged"
            axes.scatter(
                row["T"],
                iteration_count_or_bound(row),
                color=colour if converged else "white",
                edgecolors=colour,
                marker="o" if converged else "^",
                zorder=3,
            )
    axes.plot(lengths, lengths, color="grey", linestyle=":", label="iterations = T")
    axes.set_xscale("log")
    axes.set_xlabel("sequence length T")
    axes.set_title("DEER iterations against T (dashed: lower bounds)")
    axes.legend(fontsize=8)


def plot(rows, gains, lengths, path: Path) -> None:
    """Save the figure: iterations against the LLE, and against T for a few gains.

    Open triangles are runs that did not converge, drawn at a lower bound of their
    iteration count (see `iteration_count_or_bound`). Runs stopped by a non-finite iterate
    are left out.
    """
    figure, (left, right) = plt.subplots(1, 2, figsize=(11, 4.2))
    _plot_against_exponent(left, rows, lengths)
    _plot_against_length(right, rows, gains, lengths)
    for axes in (left, right):
        axes.set_yscale("log")
        axes.yaxis.set_major_locator(matplotlib.ticker.LogLocator(subs=(1.0, 2.0, 5.0)))
        axes.yaxis.set_major_formatter(matplotlib.ticker.ScalarFormatter())
        axes.yaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())
        axes.set_ylabel("DEER iterations")
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    plt.close(figure)


# --------------------------------------------------------------------------------------
# Main
# --------------------------------------------------------------------------------------


def main() -> None:
    args = _parse_args()
    if args.quick:
        gains = [float(g) for g in np.linspace(0.5, 2.0, 6)]
        lengths = [100, 300, 1000]
    else:
        gains = [float(g) for g in np.linspace(0.5, 2.0, 10)]
        lengths = [100, 300, 1000, 10000]
    args.output_dir.mkdir(parents=True, exist_ok=True)

    start = time.perf_counter()
    unit_weight, inputs, initial_state = make_problem(max(lengths))
    rows = []
    for gain in gains:
        for length in lengths:
            cap = args.max_steps or DEFAULT_MAX_STEPS[length]
            row = run_case(
                gain,
                length,
                unit_weight,
                inputs,
                initial_state,
                max_steps=min(length, cap),
                bound=iteration_lower_bound(rows, gain),
                run_implied=args.run_implied,
            )
            rows.append(row)
            print(
                f"g={gain:.3f} T={length:5d} LLE={row['lle']:+.4f} "
                f"iterations={_iterations_text(row):>6} "
                f"{_OUTCOMES.get(row['status'], row['status'])} "
                f"({row['seconds']:.1f} s)",
                flush=True,
            )
    seconds = time.perf_counter() - start

    table = format_table(rows)
    print()
    print(table)
    print(f"\nTotal time: {seconds:.0f} s")
    (args.output_dir / "predictability.md").write_text(table + "\n")
    plot(rows, gains, lengths, args.output_dir / "predictability.png")
    write_csv(rows, args.output_dir / "predictability.csv")
    print(f"Wrote the figure, table and CSV to {args.output_dir}/")


if __name__ == "__main__":
    main()
