"""ODE suite: `ParallelNewtonSolver` against sequential `diffeqsolve` and `lax.scan`.

For every problem, number of steps T and dtype, the same T steps of Tsit5 on the same
grid are evaluated by

- `diffrax.diffeqsolve` with `Tsit5()` and `ConstantStepSize` (what a user would run);
- a `lax.scan` of `Tsit5().step` (the cheapest sequential evaluation of the same map);
- `diffeqsolve` with `ParallelNewtonSolver(Tsit5(), root_finder=..., num_micro_steps=K)`
    for each root finder and scan mode: W windows of K = T / W micro-steps, each window
    one diffrax step solved by the parallel root finder.

The GRU cell is a discrete recurrence: there `lax.scan` is the sequential baseline and
`solve_recurrence` the parallel method. Every solution is compared at 100 equally spaced
checkpoints with the sequential solution and with a tight reference (Dopri8 at rtol = atol
= 1e-12 in float64 for ODEs, a float64 `lax.scan` for the GRU). A converged parallel
solution that is further from the sequential one than allowed is a wrong solution: the suite
finishes, writes its results and exits with status 1.

    python benchmarks/ode_suite.py --quick     # under ten minutes on a 2-core CPU
    python benchmarks/ode_suite.py             # the full suite (hours on a CPU)
"""

import argparse
import dataclasses
import functools
import os
import sys
import time
from collections.abc import Callable
from typing import Any


sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import _common
import _problems
from _common import log
from _ode_suite_report import markdown_report, ROOT_FINDER_NAMES, write_plots


_common.enable_float64()

import diffrax as dfx
import jax.numpy as jnp
import numpy as np
from jax import lax

import diffrax_parallel as dp
from diffrax_parallel._optimistix import default_tolerance


NUM_CHECKPOINTS = 100

ROOT_FINDERS = {name: getattr(dp, name) for name in ROOT_FINDER_NAMES}
MODES = ("sequential", "associative")
SEQUENTIAL_METHODS = ("diffeqsolve", "lax.scan")


@dataclasses.dataclass(frozen=True)
class Problem:
    """A test problem; `vector_field` is `None` for the GRU recurrence."""

    name: str
    size: int
    vector_field: Callable | None
    y0: np.ndarray
    args: Any
    t1: float
    # The default number of windows (diffrax steps) of the parallel solver.
    num_windows: int

    @property
    def label(self) -> str:
        return f"{self.name} d={self.size}"


@functools.cache
def problems() -> dict[str, Problem]:
    """Returns every problem by its command-line key."""
    entries = {
        # Windows of 1 time unit: over the whole interval plain Newton overflows from
        # the constant initial guess.
        "vdp": Problem(
            "Van der Pol", 2, _problems.van_der_pol, np.array([2.0, 0.0]), 1.0, 10.0, 10
        ),
        # Time in ms, four spikes in 50 ms at 10 uA/cm^2; windows of 5 ms. With
        # T = 1000, DEER diverged from the constant initial guess on the upstroke of a
        # spike with windows of 5, 1 and 0.5 ms alike (100, 20 and 10 micro-steps).
        "hh": Problem(
            "Hodgkin-Huxley",
            4,
            _problems.hodgkin_huxley,
            _problems.hodgkin_huxley_rest(),
            _problems.HODGKIN_HUXLEY_CURRENT,
            50.0,
            10,
        ),
        # Windows of 0.5 time units, about 0.45 Lyapunov times.
        "lorenz": Problem(
            "Lorenz-63",
            3,
            _problems.lorenz63,
            _problems.lorenz_attractor_start(),
            _problems.LORENZ_PARAMETERS,
            10.0,
            20,
        ),
    }
    for size in (4, 16, 64):
        entries[f"mlp{size}"] = Problem(
            "MLP neural ODE",
            size,
            _problems.mlp_vector_field,
            _problems.mlp_initial_state(size),
            _problems.mlp_parameters(size),
            10.0,
            1,
        )
    for size in (1, 8, 32):
        entries[f"gru{size}"] = Problem(
            "GRU", size, None, np.zeros(size), _problems.gru_parameters(size), 0.0, 1
        )
    return entries


def checkpoint_times(problem: Problem, dtype) -> jnp.ndarray:
    fractions = np.arange(1, NUM_CHECKPOINTS + 1) / NUM_CHECKPOINTS
    return jnp.asarray(problem.t1 * fractions, dtype)


# ---- Methods. Each returns a function of `(y0, args)`, with everything else static. ----


def diffeqsolve_method(problem, dtype, solver, num_windows):
    """Builds a `diffeqsolve` over [0, t1] of `num_windows` constant steps of `solver`."""
    term = dfx.ODETerm(problem.vector_field)
    t0 = jnp.asarray(0.0, dtype)
    t1 = jnp.asarray(problem.t1, dtype)
    dt0 = jnp.asarray(problem.t1 / num_windows, dtype)
    saveat = dfx.SaveAt(ts=checkpoint_times(problem, dtype), solver_state=True)

    def run(y0, args):
        solution = dfx.diffeqsolve(
            term,
            solver,
            t0,
            t1,
            dt0,
            y0,
            args,
            saveat=saveat,
            stepsize_controller=dfx.ConstantStepSize(),
            # A few spare steps, so that a grid that drifts by rounding is reported
            # (as a step count other than `num_windows`) rather than cut short.
            max_steps=num_windows + 10,
            throw=False,
        )
        state = solution.solver_state
        num_newton_steps = getattr(state, "num_newton_steps", jnp.array(-1))
        return (
            solution.ys,
            solution.result,
            solution.stats["num_steps"],
            num_newton_steps,
        )

    return run


def scan_tsit5_method(problem, num_steps, dtype):
    """Builds a `lax.scan` of `Tsit5().step` that keeps the state at every checkpoint."""
    term = dfx.ODETerm(problem.vector_field)
    solver = dfx.Tsit5()
    dt = jnp.asarray(problem.t1 / num_steps, dtype)
    stride = num_steps // NUM_CHECKPOINTS

    def run(y0, args):
        zero = jnp.asarray(0.0, dtype)
        state = solver.init(term, zero, dt, y0, args)

        def step(carry, index):
            y, state = carry
            # Both ends from the index, so that consecutive steps share their end
            # times exactly (`t + dt` would not, in float32) and the solver, which
            # computes its step as `t1 - t0`, steps over the whole interval.
            t0 = index.astype(dtype) * dt
            t1 = (index + 1).astype(dtype) * dt
            y, _, _, state, _ = solver.step(
                term, t0, t1, y, args, state, made_jump=False
            )
            return (y, state), None

        def segment(carry, first_index):
            carry, _ = lax.scan(step, carry, first_index + jnp.arange(stride))
            return carry, carry[0]

        _, ys = lax.scan(segment, (y0, state), stride * jnp.arange(NUM_CHECKPOINTS))
        return ys

    return run


def scan_gru_method(num_steps):
    stride = num_steps // NUM_CHECKPOINTS

    def run(h0, args):
        params, xs = args

        def step(h, x):
            h = _problems.gru_step(h, x, params)
            return h, h

        ys = lax.scan(step, h0, xs)[1]
        return ys[stride - 1 :: stride]

    return run


def recurrence_method(num_steps, root_finder, max_steps):
    stride = num_steps // NUM_CHECKPOINTS

    def run(h0, args):
        params, xs = args
        solution = dp.solve_recurrence(
            _problems.gru_step,
            h0,
            xs,
            params,
            solver=root_finder,
            max_steps=max_steps,
            throw=False,
        )
        ys = solution.ys[stride - 1 :: stride]
        return ys, solution.result, solution.num_newton_steps

    return run


# ---- Reference solutions ------------------------------------------------------------


@functools.cache
def ode_reference(key: str) -> np.ndarray:
    """Computes the solution at the checkpoints with Dopri8, rtol = atol = 1e-12, float64."""
    problem = problems()[key]
    log(f"ode_suite: reference solution of {problem.label}")
    solution = dfx.diffeqsolve(
        dfx.ODETerm(problem.vector_field),
        dfx.Dopri8(),
        0.0,
        problem.t1,
        problem.t1 / 1000,
        jnp.asarray(problem.y0, jnp.float64),
        _problems.cast(problem.args, jnp.float64),
        saveat=dfx.SaveAt(ts=checkpoint_times(problem, jnp.float64)),
        stepsize_controller=dfx.PIDController(rtol=1e-12, atol=1e-12),
        max_steps=1_000_000,
    )
    return np.asarray(solution.ys)


def gru_reference(problem: Problem, num_steps: int) -> np.ndarray:
    """Computes the GRU states at the checkpoints by a float64 `lax.scan`."""
    args = _gru_args(problem, num_steps, jnp.float64)
    run = scan_gru_method(num_steps)
    return np.asarray(run(jnp.asarray(problem.y0, jnp.float64), args))


def _gru_args(problem: Problem, num_steps: int, dtype):
    xs = _problems.gru_inputs(num_steps, problem.size)
    return _problems.cast((problem.args, xs), dtype)


# ---- One case: a problem, T and dtype ------------------------------------------------


@dataclasses.dataclass
class Case:
    key: str
    problem: Problem
    num_steps: int
    dtype: Any
    arguments: argparse.Namespace

    @property
    def is_ode(self) -> bool:
        return self.problem.vector_field is not None

    @property
    def num_windows(self) -> int:
        if not self.is_ode:
            return 1
        return self.arguments.num_windows or self.problem.num_windows

    def inputs(self):
        y0 = jnp.asarray(self.problem.y0, self.dtype)
        if self.is_ode:
            return y0, _problems.cast(self.problem.args, self.dtype)
        return y0, _gru_args(self.problem, self.num_steps, self.dtype)

    def reference(self) -> np.ndarray:
        if self.is_ode:
            return ode_reference(self.key)
        return gru_reference(self.problem, self.num_steps)

    def sequential_methods(self) -> dict[str, Callable]:
        if not self.is_ode:
            return {"lax.scan": scan_gru_method(self.num_steps)}
        return {
            "diffeqsolve": diffeqsolve_method(
                self.problem, self.dtype, dfx.Tsit5(), self.num_steps
            ),
            "lax.scan": scan_tsit5_method(self.problem, self.num_steps, self.dtype),
        }

    def parallel_method(self, root_finder) -> Callable:
        max_steps = self.arguments.max_newton_steps
        if not self.is_ode:
            return recurrence_method(self.num_steps, root_finder, max_steps)
        solver = dp.ParallelNewtonSolver(
            dfx.Tsit5(),
            num_micro_steps=self.num_steps // self.num_windows,
            root_finder=root_finder,
            max_newton_steps=max_steps,
        )
        return diffeqsolve_method(self.problem, self.dtype, solver, self.num_windows)


def _unpack(case: Case, method: str, output) -> dict[str, Any]:
    """Returns the states, result name, step count and Newton steps of an output."""
    if method == "lax.scan":
        return {"ys": output, "result": "successful"}
    if case.is_ode:
        ys, result, num_steps, num_newton_steps = output
        values = {"ys": ys, "result": _common.result_name(result, dfx.RESULTS)}
        expected = case.num_steps if method == "diffeqsolve" else case.num_windows
        if int(num_steps) != expected and values["result"] == "successful":
            values["note"] = f"took {int(num_steps)} diffrax steps"
        if method != "diffeqsolve":
            values["iterations"] = int(num_newton_steps)
        return values
    ys, result, num_newton_steps = output
    return {
        "ys": ys,
        "result": _common.result_name(result, dp.RESULTS),
        "iterations": int(num_newton_steps),
    }


def allowed_difference(case: Case, sequential_error: float) -> float:
    """Returns the largest allowed relative difference to the sequential solution.

    A root finder stops once every step's residual is below its default tolerance
    `tol = eps^0.75` (relative), so on a map that does not expand the errors of T steps
    add up to at most T tol. That bound is capped at 0.1, because a trajectory further
    than 10% from the sequential one is wrong whatever the cause. A wrong solution from
    a defect differs by the size of the solution.
    """
    eps = float(jnp.finfo(case.dtype).eps)
    accumulated = min(case.num_steps * default_tolerance(case.dtype), 0.1)
    return max(10 * sequential_error, eps**0.5, accumulated)


def _measure(case, name, mode, fn, inputs, history) -> tuple[dict[str, Any], Any]:
    """Measures one method; returns its table row and its output (`None` if skipped).

    `history` maps each method to its last (T, run time); a method whose run time,
    scaled linearly in T, would exceed `--max-projected-seconds` is skipped.
    """
    arguments = case.arguments
    label = name if mode is None else f"{name} {mode}"
    dtype = str(jnp.dtype(case.dtype))
    row = dict(problem=case.problem.label, T=case.num_steps, dtype=dtype)
    row.update(method=name, mode=mode)
    if mode is not None and case.is_ode:
        row["windows"] = f"{case.num_windows} x {case.num_steps // case.num_windows}"
    key = (case.problem.label, dtype, label)
    if key in history:
        last_num_steps, last_seconds = history[key]
        projected = last_seconds * case.num_steps / last_num_steps
        if projected > arguments.max_projected_seconds:
            seconds = _common.format_seconds(projected)
            row["result"] = f"skipped: projected run time {seconds}"
            log(f"ode_suite: skip {key} T={case.num_steps}: {row['result']}")
            return row, None
    log(f"ode_suite: {case.problem.label} T={case.num_steps} {dtype} {label}")
    measurement, output = _common.measure(
        fn,
        *inputs,
        repeats=arguments.repeats,
        max_seconds=arguments.max_seconds,
        max_memory_bytes=arguments.max_memory_gb * 2**30,
    )
    row.update(
        compile_seconds=measurement.compile_seconds,
        run_seconds=measurement.run_seconds,
        memory_bytes=measurement.memory_bytes,
    )
    if measurement.skipped is not None:
        row["result"] = f"skipped: {measurement.skipped}"
        return row, None
    history[key] = (case.num_steps, measurement.run_seconds)
    return row, output


def run_case(case: Case, wrong: _common.WrongAnswers, history) -> list[dict[str, Any]]:
    """Measures every method on one case and checks every solution.

    The first method is the sequential baseline that the others must match.
    """
    inputs = case.inputs()
    reference = case.reference()
    scale = max(float(np.max(np.abs(reference))), 1.0)
    methods = [(name, None, fn) for name, fn in case.sequential_methods().items()]
    for name, mode in case.arguments.methods:
        root_finder = ROOT_FINDERS[name](mode=mode)
        methods.append((name, mode, case.parallel_method(root_finder)))

    rows = []
    sequential = None
    allowed = None
    for name, mode, fn in methods:
        row, output = _measure(case, name, mode, fn, inputs, history)
        rows.append(row)
        if output is None:
            continue
        values = _unpack(case, name, output)
        ys = values.pop("ys")
        row.update(values)
        row["error_reference"] = _common.max_abs_difference(ys, reference) / scale
        if mode is None and sequential is None:
            wrong.check(
                row["result"] == "successful",
                f"{case.problem.label} T={case.num_steps} {row['dtype']} {name}: the "
                f"sequential baseline failed with {row['result']}",
            )
            sequential = ys
            allowed = allowed_difference(case, row["error_reference"])
            continue
        if sequential is None:
            row["note"] = "not checked: the sequential baseline was skipped"
            continue
        row["error_sequential"] = _common.max_abs_difference(ys, sequential) / scale
        if row["result"] == "successful":
            wrong.check(
                row["error_sequential"] <= allowed,
                f"{case.problem.label} T={case.num_steps} {row['dtype']} {name} "
                f"{mode}: converged, but its relative difference "
                f"{row['error_sequential']:.3e} to the sequential solution exceeds "
                f"{allowed:.1e}",
            )
    _add_ratios(rows)
    return rows


def _add_ratios(rows: list[dict[str, Any]]) -> None:
    """Adds the run time of each row divided by that of each sequential method."""
    baselines = {
        row["method"]: row.get("run_seconds")
        for row in rows
        if row["method"] in SEQUENTIAL_METHODS and row["mode"] is None
    }
    for row in rows:
        if row.get("run_seconds") is None:
            continue
        for name, seconds in baselines.items():
            if seconds:
                row[f"ratio_{name}"] = row["run_seconds"] / seconds


# ---- Command line -------------------------------------------------------------------

ALL_METHODS = [f"{name}:{mode}" for name in ROOT_FINDERS for mode in MODES]
QUICK = dict(
    problems=["vdp", "hh", "mlp16", "gru8", "lorenz"],
    num_steps=[1000, 10_000],
    dtypes=["float64"],
    methods=[
        "DEER:sequential",
        "DEER:associative",
        "QuasiDEER:sequential",
        "QuasiELK:sequential",
    ],
)
FULL = dict(
    problems=list(problems()),
    num_steps=[1000, 10_000, 100_000, 1_000_000],
    dtypes=["float32", "float64"],
    methods=ALL_METHODS,
)


def parse_arguments():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument(
        "--quick",
        action="store_true",
        help=f"a subset that runs in minutes: {QUICK}",
    )
    parser.add_argument("--problems", nargs="+", choices=list(problems()))
    parser.add_argument(
        "--num-steps", type=int, nargs="+", help="T values, multiples of 100 and of W"
    )
    parser.add_argument("--dtypes", nargs="+", choices=["float32", "float64"])
    parser.add_argument(
        "--methods",
        nargs="+",
        choices=ALL_METHODS,
        metavar="ROOT_FINDER:MODE",
        help=f"parallel methods, from {ALL_METHODS}",
    )
    parser.add_argument(
        "--num-windows",
        type=int,
        help="windows W of every ODE problem (default: each problem's own)",
    )
    parser.add_argument(
        "--max-newton-steps",
        type=int,
        default=200,
        help="iteration cap per window (ODEs) or per sequence (GRU)",
    )
    _common.add_measurement_arguments(parser, repeats=5, max_seconds=2.0)
    parser.add_argument(
        "--max-projected-seconds",
        type=float,
        default=600.0,
        help="skip a method at a larger T when its run time at the previous T, "
        "scaled linearly in T, exceeds this many seconds",
    )
    arguments = parser.parse_args()
    defaults = QUICK if arguments.quick else FULL
    for name, value in defaults.items():
        if getattr(arguments, name) is None:
            setattr(arguments, name, value)
    arguments.methods = [tuple(method.split(":")) for method in arguments.methods]
    return arguments


def _check_num_steps(arguments, all_problems) -> None:
    for key in arguments.problems:
        windows = arguments.num_windows or all_problems[key].num_windows
        for num_steps in arguments.num_steps:
            if num_steps % NUM_CHECKPOINTS or num_steps % windows:
                raise SystemExit(
                    f"T={num_steps} must be a multiple of {NUM_CHECKPOINTS} "
                    f"(checkpoints) and of the {windows} windows of {key}."
                )


def main():
    arguments = parse_arguments()
    all_problems = problems()
    _check_num_steps(arguments, all_problems)
    start = time.perf_counter()
    wrong = _common.WrongAnswers()
    history = {}
    rows = []
    for key in arguments.problems:
        for num_steps in sorted(arguments.num_steps):
            for dtype in arguments.dtypes:
                case = Case(
                    key, all_problems[key], num_steps, jnp.dtype(dtype), arguments
                )
                rows.extend(run_case(case, wrong, history))
    total_seconds = time.perf_counter() - start
    text = markdown_report(rows, arguments, total_seconds)
    print(text)
    output_dir = arguments.output_dir
    _common.write_text(os.path.join(output_dir, "ode_suite.md"), text)
    _common.write_json(os.path.join(output_dir, "ode_suite.json"), rows)
    write_plots(rows, output_dir)
    wrong.exit_if_any()


if __name__ == "__main__":
    main()
