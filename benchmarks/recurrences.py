"""A GRU recurrence: every root finder of `solve_recurrence` against a `lax.scan`.

The GRU cell (input size = hidden size = d, random weights scaled so that the cell
contracts) runs over T random inputs from `h_0 = 0`. Each root finder (DEER, QuasiDEER,
Picard, Jacobi, ELK, QuasiELK) runs in both scan modes, from the default initial guess
(`h_0` at every step), with at most `--max-steps` iterations. A solve that does not
converge is reported with its result code. A converged solve whose states differ from
the `lax.scan` states by more than the tolerance is a wrong solution: the script finishes
its table and exits with status 1.

    python benchmarks/recurrences.py            # d in {1, 8, 32}, T in {1e3, 1e4, 1e5}
    python benchmarks/recurrences.py --quick    # T in {1e3, 1e4}
"""

import argparse
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
    "Picard": dp.Picard,
    "Jacobi": dp.Jacobi,
    "ELK": dp.ELK,
    "QuasiELK": dp.QuasiELK,
}
MODES = ("sequential", "associative")


def scan_gru(h0, xs, params):
    def body(h, x):
        h = _problems.gru_step(h, x, params)
        return h, h

    return lax.scan(body, h0, xs)[1]


def parallel_gru(root_finder, max_steps: int):
    def solve(h0, xs, params):
        solution = dp.solve_recurrence(
            _problems.gru_step,
            h0,
            xs,
            params,
            solver=root_finder,
            max_steps=max_steps,
            throw=False,
        )
        return solution.ys, solution.result, solution.num_newton_steps

    return solve


def parse_arguments():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument(
        "--quick", action="store_true", help="only T in {1e3, 1e4} (a few minutes)"
    )
    parser.add_argument("--sizes", type=int, nargs="+", default=[1, 8, 32])
    parser.add_argument(
        "--num-steps", type=int, nargs="+", help="override the list of T"
    )
    parser.add_argument(
        "--solvers", nargs="+", choices=list(ROOT_FINDERS), default=list(ROOT_FINDERS)
    )
    parser.add_argument("--modes", nargs="+", choices=MODES, default=list(MODES))
    parser.add_argument("--dtype", choices=["float32", "float64"], default="float64")
    parser.add_argument(
        "--max-steps", type=int, default=256, help="iteration cap of every root finder"
    )
    _common.add_measurement_arguments(parser, repeats=10, max_seconds=3.0)
    return parser.parse_args()


def _run_one(name, fn, inputs, arguments):
    log(f"recurrences: {name}")
    return _common.measure(
        fn,
        *inputs,
        repeats=arguments.repeats,
        max_seconds=arguments.max_seconds,
        max_memory_bytes=arguments.max_memory_gb * 2**30,
    )


def benchmark_size(size, num_steps, arguments, tolerance, wrong):
    """Returns the table rows of one (d, T): the scan, then every root finder."""
    dtype = jnp.dtype(arguments.dtype)
    params = _problems.cast(_problems.gru_parameters(size), dtype)
    xs = jnp.asarray(_problems.gru_inputs(num_steps, size), dtype)
    h0 = jnp.zeros(size, dtype)
    inputs = (h0, xs, params)
    common = {"d": size, "T": num_steps}

    scan_measurement, reference = _run_one(
        f"d={size} T={num_steps} lax.scan", scan_gru, inputs, arguments
    )
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
    for solver_name in arguments.solvers:
        for mode in arguments.modes:
            root_finder = ROOT_FINDERS[solver_name](mode=mode)
            measurement, output = _run_one(
                f"d={size} T={num_steps} {solver_name} {mode}",
                parallel_gru(root_finder, arguments.max_steps),
                inputs,
                arguments,
            )
            row = dict(
                common,
                solver=solver_name,
                mode=mode,
                compile=format_seconds(measurement.compile_seconds),
                run=format_seconds(measurement.run_seconds),
                **{"memory MiB": format_mib(measurement.memory_bytes)},
            )
            if measurement.skipped is not None:
                row["result"] = f"skipped: {measurement.skipped}"
                rows.append(row)
                continue
            ys, result, num_newton_steps = output
            row["x lax.scan"] = measurement.run_seconds / scan_measurement.run_seconds
            row["iterations"] = int(num_newton_steps)
            row["result"] = _common.result_name(result, dp.RESULTS)
            error = _common.max_abs_difference(ys, reference) / scale
            row["rel. error"] = error
            if row["result"] == "successful":
                wrong.check(
                    error <= tolerance,
                    f"d={size} T={num_steps} {solver_name} {mode} converged but its "
                    f"relative error {error:.3e} to lax.scan exceeds {tolerance:.1e}",
                )
            rows.append(row)
    return rows


def main():
    arguments = parse_arguments()
    if arguments.num_steps:
        all_num_steps = arguments.num_steps
    elif arguments.quick:
        all_num_steps = [1000, 10_000]
    else:
        all_num_steps = [1000, 10_000, 100_000]
    step_tolerance = default_tolerance(jnp.dtype(arguments.dtype))
    wrong = _common.WrongAnswers()
    rows = []
    for size in arguments.sizes:
        for num_steps in all_num_steps:
            # The root finders stop once every step's residual is below their
            # default tolerance `tol` (relative), so the state errors of T steps add
            # up to at most T tol, and much less where the cell contracts. That bound
            # is capped at 0.1: a sequence further than 10% from the scan is wrong
            # whatever the cause.
            tolerance = min(num_steps * step_tolerance, 0.1)
            rows.extend(benchmark_size(size, num_steps, arguments, tolerance, wrong))
    columns = [
        "d",
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
        f"GRU cell, input size = hidden size = d, recurrent weights of scale "
        f"{_problems.GRU_RECURRENT_SCALE}/sqrt(d), h_0 = 0, normal random inputs",
        f"root finders: default tolerances (tol = eps^0.75 = {step_tolerance:.1e}), "
        f"at most {arguments.max_steps} iterations, initial guess h_0 at every step",
        "rel. error: max |h - h_scan| / max(1, max |h_scan|) against the lax.scan "
        "states; a converged solve must be within min(T tol, 0.1), where tol is the "
        "root finders' tolerance per step",
        "x lax.scan: run time divided by the run time of lax.scan at the same d and T",
    ]
    _common.write_report(
        "## GRU recurrence",
        [arguments.dtype],
        notes,
        columns,
        rows,
        os.path.join(arguments.output_dir, "recurrences.md"),
    )
    wrong.exit_if_any()


if __name__ == "__main__":
    main()
