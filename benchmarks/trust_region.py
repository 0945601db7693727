"""Trust-region (ELK) against plain Newton (DEER) on Van der Pol and Lorenz-63.

Every problem is a recurrence `y_t = RK4(y_{t-1})` of classical fourth-order Runge–Kutta
steps, solved by `solve_recurrence` from the initial guess `y_0` at every step:

- Van der Pol, mu = 1, y(0) = (2, 0), t in [0, 10], 1000 steps (dt = 0.01). Plain
    Newton (DEER) is expected to overflow: the linearisation along the constant guess
    is expanding, so its iterate becomes non-finite and the solve stops with
    `newton_nonfinite`.
- Lorenz-63 (sigma = 10, rho = 28, beta = 8/3), windows of 50, 200 and 800 steps with
    dt = 0.01, starting on the attractor. The largest Lyapunov exponent is about 0.9,
    so the windows span about 0.45, 1.8 and 7 Lyapunov times.

A converged solve must match a `lax.scan` of the same step map; otherwise the script
finishes its table and exits with status 1.

    python benchmarks/trust_region.py
    python benchmarks/trust_region.py --quick   # sequential scans only
"""

import argparse
import functools
import os
import sys


sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import _common
import _problems
from _common import format_mib, format_seconds, log


_common.enable_float64()

import jax.numpy as jnp
from jax import lax

import diffrax_parallel as dp
from diffrax_parallel._optimistix import default_tolerance


ROOT_FINDERS = {
    "DEER": dp.DEER,
    "QuasiDEER": dp.QuasiDEER,
    "ELK": dp.ELK,
    "QuasiELK": dp.QuasiELK,
}
MODES = ("sequential", "associative")
DT = 0.01


def rk4_map(vector_field):
    """Returns the recurrence step `(y, x, args) -> y_next`: one RK4 step of length `DT`."""

    def step(y, x, args):
        del x
        return _problems.rk4_step(vector_field, y, jnp.asarray(DT, y.dtype), args)

    return step


def problems(dtype):
    """Returns `(name, step map, y0, args, T)` of every problem."""
    vdp_args = jnp.asarray(1.0, dtype)
    entries = [
        (
            "Van der Pol",
            rk4_map(_problems.van_der_pol),
            jnp.asarray([2.0, 0.0], dtype),
            vdp_args,
            1000,
        )
    ]
    lorenz_y0 = jnp.asarray(_problems.lorenz_attractor_start(), dtype)
    lorenz_args = _problems.cast(_problems.LORENZ_PARAMETERS, dtype)
    for window in (50, 200, 800):
        entries.append(
            ("Lorenz-63", rk4_map(_problems.lorenz63), lorenz_y0, lorenz_args, window)
        )
    return entries


def scan_solve(step, num_steps, y0, args):
    def body(y, _):
        y = step(y, None, args)
        return y, y

    return lax.scan(body, y0, None, length=num_steps)[1]


def parallel_solve(step, num_steps, root_finder, max_steps, y0, args):
    solution = dp.solve_recurrence(
        step,
        y0,
        None,
        args,
        num_steps=num_steps,
        solver=root_finder,
        max_steps=max_steps,
        throw=False,
    )
    return solution.ys, solution.result, solution.num_newton_steps


def parse_arguments():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument(
        "--quick", action="store_true", help="sequential scan mode only"
    )
    parser.add_argument("--modes", nargs="+", choices=MODES)
    parser.add_argument("--dtype", choices=["float32", "float64"], default="float64")
    parser.add_argument(
        "--max-steps", type=int, default=1000, help="iteration cap of every root finder"
    )
    _common.add_measurement_arguments(
        parser, repeats=10, max_seconds=3.0, max_memory=False
    )
    return parser.parse_args()


def benchmark_problem(entry, modes, arguments, tolerance, wrong):
    name, step, y0, args, num_steps = entry
    common = {"problem": name, "T": num_steps}
    timing = dict(repeats=arguments.repeats, max_seconds=arguments.max_seconds)
    log(f"trust_region: {name} T={num_steps} lax.scan")
    scan_fn = functools.partial(scan_solve, step, num_steps)
    scan_measurement, reference = _common.measure(scan_fn, y0, args, **timing)
    rows = [
        dict(
            common,
            solver="lax.scan",
            compile=format_seconds(scan_measurement.compile_seconds),
            run=format_seconds(scan_measurement.run_seconds),
            **{"memory MiB": format_mib(scan_measurement.memory_bytes)},
        )
    ]
    scale = max(float(jnp.max(jnp.abs(reference))), 1.0)
    for solver_name, solver_cls in ROOT_FINDERS.items():
        for mode in modes:
            log(f"trust_region: {name} T={num_steps} {solver_name} {mode}")
            fn = functools.partial(
                parallel_solve,
                step,
                num_steps,
                solver_cls(mode=mode),
                arguments.max_steps,
            )
            measurement, (ys, result, num_newton_steps) = _common.measure(
                fn, y0, args, **timing
            )
            row = dict(
                common,
                solver=solver_name,
                mode=mode,
                compile=format_seconds(measurement.compile_seconds),
                run=format_seconds(measurement.run_seconds),
                iterations=int(num_newton_steps),
                result=_common.result_name(result, dp.RESULTS),
                **{"memory MiB": format_mib(measurement.memory_bytes)},
            )
            row["x lax.scan"] = measurement.run_seconds / scan_measurement.run_seconds
            error = _common.max_abs_difference(ys, reference) / scale
            row["rel. error"] = error
            if row["result"] == "successful":
                wrong.check(
                    error <= tolerance,
                    f"{name} T={num_steps} {solver_name} {mode} converged but its "
                    f"relative error {error:.3e} to lax.scan exceeds {tolerance:.1e}",
                )
            rows.append(row)
    return rows


def main():
    arguments = parse_arguments()
    if arguments.modes:
        modes = arguments.modes
    elif arguments.quick:
        modes = ["sequential"]
    else:
        modes = list(MODES)
    dtype = jnp.dtype(arguments.dtype)
    # Loose on purpose. The root finder leaves a residual of up to its default
    # tolerance, eps^0.75 per step (1.8e-12 in float64), and Lorenz-63 amplifies it by
    # up to exp(0.9 * 8) ~ 1e3 over 800 steps. A wrong trajectory differs by the size
    # of the attractor.
    tolerance = float(jnp.sqrt(jnp.finfo(dtype).eps))
    wrong = _common.WrongAnswers()
    rows = []
    for entry in problems(dtype):
        rows.extend(benchmark_problem(entry, modes, arguments, tolerance, wrong))
    columns = [
        "problem",
        "T",
        "solver",
        "mode",
        "compile",
        "run",
        "x lax.scan",
        "iterations",
        "result",
        "rel. error",
        "memory MiB",
    ]
    notes = [
        f"RK4 steps of dt = {DT}; initial guess y(0) at every step; default tolerances "
        f"(eps^0.75 = {default_tolerance(dtype):.1e}); at most {arguments.max_steps} "
        "iterations",
        "rel. error: max |y - y_scan| / max(1, max |y_scan|) against a lax.scan of the "
        f"same step map; a converged solve must be within {tolerance:.1e}. For a "
        "failed solve it is the error of the last finite iterate.",
    ]
    _common.write_report(
        "## Trust region against Newton",
        [arguments.dtype],
        notes,
        columns,
        rows,
        os.path.join(arguments.output_dir, "trust_region.md"),
    )
    wrong.exit_if_any()


if __name__ == "__main__":
    main()
