"""Linear recurrences: `BlockBidiagonal` (associative and sequential) against `lax.scan`.

Solves `x_0 = b_0`, `x_t = A_t x_{t-1} + b_t` for `t < T` with dense random blocks `A_t`
of spectral norm 0.9, three ways:

- `lineax.linear_solve` of a `BlockBidiagonalOperator` (identity diagonal blocks,
    sub-diagonal blocks `-A_t`) with `BlockBidiagonal("associative")`, a
    `jax.lax.associative_scan` of depth O(log T) and work O(T d^3);
- the same with `BlockBidiagonal("sequential")`, a `jax.lax.scan` of depth T;
- a plain `jax.lax.scan` of `x_t = A_t x_{t-1} + b_t` (work O(T d^2)), the baseline.

All three solutions must agree; a disagreement exits with status 1.

    python benchmarks/linear_scan.py            # d in {1, 8, 32}, T in {1e3, 1e4, 1e5}
    python benchmarks/linear_scan.py --quick    # T in {1e3, 1e4}
"""

import argparse
import os
import sys


sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import _common
from _common import format_mib, format_seconds, log


_common.enable_float64()

import jax.numpy as jnp
import jax.random as jr
import lineax as lx
from jax import lax

import diffrax_parallel as dp


def random_blocks(num_steps: int, size: int, dtype, seed: int = 0):
    """Returns dense blocks `A_1..A_{T-1}` of spectral norm 0.9 and offsets `b`."""
    key_blocks, key_offsets = jr.split(jr.key(seed))
    blocks = jr.normal(key_blocks, (num_steps - 1, size, size), jnp.float64)
    norms = jnp.linalg.norm(blocks, ord=2, axis=(1, 2))
    blocks = blocks * (0.9 / norms)[:, None, None]
    offsets = jr.normal(key_offsets, (num_steps, size), jnp.float64)
    return blocks.astype(dtype), offsets.astype(dtype)


def block_bidiagonal_solve(mode: str):
    solver = dp.BlockBidiagonal(mode)

    def solve(blocks, offsets):
        operator = dp.BlockBidiagonalOperator(-blocks)
        return lx.linear_solve(operator, offsets, solver).value

    return solve


def scan_solve(blocks, offsets):
    def body(x, inputs):
        block, offset = inputs
        x = jnp.matmul(block, x, precision=lax.Precision.HIGHEST) + offset
        return x, x

    _, rest = lax.scan(body, offsets[0], (blocks, offsets[1:]))
    return jnp.concatenate([offsets[:1], rest])


METHODS = {
    "lax.scan": scan_solve,
    "BlockBidiagonal associative": block_bidiagonal_solve("associative"),
    "BlockBidiagonal sequential": block_bidiagonal_solve("sequential"),
}


def parse_arguments():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument(
        "--quick", action="store_true", help="only T in {1e3, 1e4} (a few minutes)"
    )
    parser.add_argument("--sizes", type=int, nargs="+", default=[1, 8, 32])
    parser.add_argument(
        "--num-steps", type=int, nargs="+", help="override the list of T"
    )
    parser.add_argument("--dtype", choices=["float32", "float64"], default="float64")
    _common.add_measurement_arguments(parser, repeats=10, max_seconds=3.0)
    return parser.parse_args()


def main():
    arguments = parse_arguments()
    if arguments.num_steps:
        all_num_steps = arguments.num_steps
    elif arguments.quick:
        all_num_steps = [1000, 10_000]
    else:
        all_num_steps = [1000, 10_000, 100_000]
    dtype = jnp.dtype(arguments.dtype)
    # Agreement required between the three solutions, relative to max |x|. The blocks
    # contract, so rounding errors do not grow along the recurrence.
    tolerance = 1e4 * float(jnp.finfo(dtype).eps)
    max_memory = arguments.max_memory_gb * 2**30
    wrong = _common.WrongAnswers()
    rows = []
    for size in arguments.sizes:
        for num_steps in all_num_steps:
            blocks, offsets = random_blocks(num_steps, size, dtype)
            reference = None
            baseline_seconds = None
            for name, method in METHODS.items():
                log(f"linear_scan: d={size} T={num_steps} {name}")
                measurement, solution = _common.measure(
                    method,
                    blocks,
                    offsets,
                    repeats=arguments.repeats,
                    max_seconds=arguments.max_seconds,
                    max_memory_bytes=max_memory,
                )
                row = {
                    "d": size,
                    "T": num_steps,
                    "method": name,
                    "compile": format_seconds(measurement.compile_seconds),
                    "run": format_seconds(measurement.run_seconds),
                    "repeats": measurement.num_repeats,
                    "memory MiB": format_mib(measurement.memory_bytes),
                }
                if measurement.skipped is not None:
                    row["note"] = f"skipped: {measurement.skipped}"
                    rows.append(row)
                    continue
                if reference is None:
                    reference = solution
                    baseline_seconds = measurement.run_seconds
                else:
                    scale = max(float(jnp.max(jnp.abs(reference))), 1.0)
                    error = _common.max_abs_difference(solution, reference) / scale
                    row["rel. diff. to lax.scan"] = error
                    wrong.check(
                        error <= tolerance,
                        f"d={size} T={num_steps} {name}: relative difference {error:.3e} "
                        f"to lax.scan exceeds {tolerance:.1e}",
                    )
                if baseline_seconds is not None:
                    row["x lax.scan"] = measurement.run_seconds / baseline_seconds
                rows.append(row)
    columns = [
        "d",
        "T",
        "method",
        "compile",
        "run",
        "x lax.scan",
        "repeats",
        "rel. diff. to lax.scan",
        "memory MiB",
        "note",
    ]
    notes = [
        f"agreement required: max |x - x_scan| / max(1, max |x_scan|) <= {tolerance:.1e}",
        "x lax.scan: run time divided by the run time of lax.scan at the same d and T",
    ]
    _common.write_report(
        "## Linear recurrences",
        [arguments.dtype],
        notes,
        columns,
        rows,
        os.path.join(arguments.output_dir, "linear_scan.md"),
    )
    wrong.exit_if_any()


if __name__ == "__main__":
    main()
