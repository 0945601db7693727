"""Tests of `ParallelNewtonSolver` against sequential `diffrax.diffeqsolve`.

The core check: the parallel solve equals a sequential solve with the same base solver
on the same micro-grid. With `K` micro-steps per window of length `dt0`, the sequential
reference uses `ConstantStepSize` with `dt0 / K`, or `StepTo` on the same micro-grid.
"""

import math
from typing import Any

import diffrax as dfx
import equinox as eqx
import jax
import jax.numpy as jnp
import jax.random as jr
import numpy as np
import optimistix as optx
import pytest

import diffrax_parallel as dp
from diffrax_parallel._diffrax import (
    micro_steps,
    num_newton_steps_per_window,
    ParallelNewtonSolver,
    ParallelNewtonState,
)
from diffrax_parallel._diffrax._interpolation import micro_times

from .helpers import max_relative_error


# ---- Problems ------------------------------------------------------------------------


def linear(t, y, args):
    # The linear test equation y' = lambda y, componentwise.
    return args * y


def van_der_pol(t, y, args):
    x, v = y
    return jnp.stack([v, args * (1 - x**2) * v - x])


def lotka_volterra(t, y, args):
    prey, predator = y
    a, b, c, d = args
    return jnp.stack(
        [a * prey - b * prey * predator, d * prey * predator - c * predator]
    )


ARENSTORF_MU = 0.012277471
# Initial state and period of the periodic Arenstorf orbit of the restricted
# three-body problem (Hairer, Norsett and Wanner, "Solving Ordinary Differential
# Equations I", section II.0).
ARENSTORF_Y0 = (0.994, 0.0, 0.0, -2.00158510637908252240537862224)
ARENSTORF_PERIOD = 17.0652165601579625588917206249


def arenstorf(t, y, args):
    x, y_, vx, vy = y
    mu = ARENSTORF_MU
    mu_prime = 1 - mu
    d1 = ((x + mu) ** 2 + y_**2) ** 1.5
    d2 = ((x - mu_prime) ** 2 + y_**2) ** 1.5
    ax = x + 2 * vy - mu_prime * (x + mu) / d1 - mu * (x - mu_prime) / d2
    ay = y_ - 2 * vx - mu_prime * y_ / d1 - mu * y_ / d2
    return jnp.stack([vx, vy, ax, ay])


# name: (vector field, y0, args, t1)
PROBLEMS = {
    "linear": (linear, (1.0, -2.0), (-0.8, 0.5), 2.0),
    "van_der_pol": (van_der_pol, (2.0, 0.0), 1.0, 3.0),
    "lotka_volterra": (lotka_volterra, (1.0, 1.0), (2 / 3, 4 / 3, 1.0, 1.0), 4.0),
    # The start of the orbit, near the moon; the full period is tested below. One
    # window of 16 micro-steps from a constant initial guess diverges on [0, 1].
    "arenstorf": (arenstorf, ARENSTORF_Y0, None, 0.5),
}

BASES = {
    "Euler": dfx.Euler,
    "Heun": dfx.Heun,
    "Midpoint": dfx.Midpoint,
    "Ralston": dfx.Ralston,
    "Bosh3": dfx.Bosh3,
    "Tsit5": dfx.Tsit5,
    "Dopri5": dfx.Dopri5,
    "Dopri8": dfx.Dopri8,
}

# Order of the dense output error at interior times: min(method order, interpolation
# order). Euler interpolates linearly. Heun, Midpoint, Ralston and Bosh3 use a cubic
# Hermite interpolant. diffrax documents 5th-order interpolation for Tsit5 and Dopri5
# and 8th-order for Dopri8; on this test Dopri8 shows order 7 before round-off, so 7
# is checked.
DENSE_ORDERS = {
    "Euler": 1,
    "Heun": 2,
    "Midpoint": 2,
    "Ralston": 2,
    "Bosh3": 3,
    "Tsit5": 5,
    "Dopri5": 5,
    "Dopri8": 7,
}


def _problem(name, dtype=jnp.float64):
    vector_field, y0, args, t1 = PROBLEMS[name]
    y0 = jnp.asarray(y0, dtype=dtype)
    if args is not None:
        args = jnp.asarray(args, dtype=dtype)
    return dfx.ODETerm(vector_field), y0, args, t1


def _solve(solver, term, y0, args, t0, t1, dt0, **kwargs) -> Any:
    # Times as arrays, so that solves differing only in times share one compilation.
    # Returns a `diffrax.Solution`, typed `Any` because its `ts` and `ys` are optional.
    dtype = jnp.result_type(*jax.tree_util.tree_leaves(y0))
    dt0 = None if dt0 is None else jnp.asarray(dt0, dtype=dtype)
    return dfx.diffeqsolve(
        term,
        solver,
        jnp.asarray(t0, dtype=dtype),
        jnp.asarray(t1, dtype=dtype),
        dt0,
        y0,
        args=args,
        **kwargs,
    )


def _window_grid(window_ends, num_micro_steps):
    """Return the micro-grid of windows ending at `window_ends` (including t0)."""
    pieces = [window_ends[:1]]
    for a, b in zip(window_ends[:-1], window_ends[1:]):
        pieces.append(micro_times(a, b, num_micro_steps)[1:])
    return jnp.concatenate(pieces)


# ---- Parallel equals sequential ------------------------------------------------------


@pytest.mark.parametrize("base_name", list(BASES))
def test_linear_equation_all_bases(base_name):
    term, y0, args, t1 = _problem("linear")
    base = BASES[base_name]()
    num_micro_steps = 4
    solver = ParallelNewtonSolver(base, num_micro_steps=num_micro_steps)
    # Save times strictly inside micro-steps, to exercise the window interpolation.
    ts = jnp.linspace(0.0, t1, 12)[1:-1] + 0.0123
    saveat = dfx.SaveAt(ts=ts, t1=True)
    rates = jnp.asarray(PROBLEMS["linear"][2])
    exact = y0[None, :] * jnp.exp(rates[None, :] * ts[:, None])

    errors_to_exact = []
    for num_windows in (1, 2, 4, 8):
        dt0 = t1 / num_windows
        parallel = _solve(solver, term, y0, args, 0.0, t1, dt0, saveat=saveat)
        sequential = _solve(
            base, term, y0, args, 0.0, t1, dt0 / num_micro_steps, saveat=saveat
        )
        assert parallel.stats["num_steps"] == num_windows
        assert max_relative_error(parallel.ys, sequential.ys) < 1e-10
        errors_to_exact.append(float(jnp.max(jnp.abs(parallel.ys[:-1] - exact))))

    # Accuracy against the closed form: halving the micro-step shrinks the error of
    # the dense output by 2**order. Coarse grids are not yet asymptotic, so the best
    # pair must show the order and every pair must come within 1.2 of it. Errors
    # below 1e-12 are at the round-off floor and carry no order information.
    orders = [
        math.log2(coarse / fine)
        for coarse, fine in zip(errors_to_exact[:-1], errors_to_exact[1:])
        if fine > 1e-12
    ]
    expected = DENSE_ORDERS[base_name]
    assert max(orders) > expected - 0.3, orders
    assert min(orders) > expected - 1.2, orders
    micro_step = t1 / (8 * num_micro_steps)
    assert errors_to_exact[-1] < 10 * t1 * micro_step ** base.order(term)


# Every base solver with both fixed-grid controllers on every problem. The full matrix
# is marked slow. The default run takes a fixed selection that covers both controllers
# and every nonlinear problem, and the linear test above covers every base solver.
_DEFAULT_CASES = {
    ("van_der_pol", "Tsit5", "constant"),
    ("lotka_volterra", "Dopri5", "constant"),
    ("arenstorf", "Dopri8", "constant"),
    ("van_der_pol", "Bosh3", "step_to"),
    ("lotka_volterra", "Heun", "step_to"),
    ("arenstorf", "Midpoint", "step_to"),
}
_MATRIX = [
    pytest.param(
        problem,
        base,
        controller,
        marks=() if (problem, base, controller) in _DEFAULT_CASES else pytest.mark.slow,
    )
    for problem in PROBLEMS
    for base in BASES
    for controller in ("constant", "step_to")
]


@pytest.mark.parametrize("problem_name,base_name,controller", _MATRIX)
def test_matches_sequential(problem_name, base_name, controller):
    term, y0, args, t1 = _problem(problem_name)
    base = BASES[base_name]()
    num_micro_steps = 16
    solver = ParallelNewtonSolver(base, num_micro_steps=num_micro_steps)
    # One window and several. With `StepTo`, one window is the same solve as with
    # `ConstantStepSize` and `dt0 = t1`, and each length of `ts` is a new compilation,
    # so it is tested with several windows only.
    window_counts = (1, 3) if controller == "constant" else (3,)

    for windows in window_counts:
        if controller == "constant":
            dt0 = t1 / windows
            saveat = dfx.SaveAt(t1=True)
            parallel = _solve(solver, term, y0, args, 0.0, t1, dt0, saveat=saveat)
            sequential = _solve(
                base, term, y0, args, 0.0, t1, dt0 / num_micro_steps, saveat=saveat
            )
        else:
            # Unequal windows: each end is moved by up to a quarter window.
            fractions = np.linspace(0.0, 1.0, windows + 1)
            fractions[1:-1] += 0.25 / windows * np.sin(np.arange(1, windows))
            window_ends = jnp.asarray(t1 * fractions)
            saveat = dfx.SaveAt(ts=window_ends)
            parallel = _solve(
                solver,
                term,
                y0,
                args,
                0.0,
                t1,
                None,
                saveat=saveat,
                stepsize_controller=dfx.StepTo(ts=window_ends),
            )
            grid = _window_grid(window_ends, num_micro_steps)
            sequential = _solve(
                base,
                term,
                y0,
                args,
                0.0,
                t1,
                None,
                saveat=saveat,
                stepsize_controller=dfx.StepTo(ts=grid),
                max_steps=len(grid),
            )
        assert parallel.stats["num_steps"] == windows
        assert bool(jnp.all(jnp.isfinite(parallel.ys)))
        assert max_relative_error(parallel.ys, sequential.ys) < 1e-10


_ROOT_FINDERS = [
    pytest.param(dp.QuasiDEER(), id="QuasiDEER"),
    pytest.param(dp.ELK(), id="ELK"),
    pytest.param(optx.Newton(rtol=1e-12, atol=1e-12), id="optx.Newton"),
    pytest.param(dp.QuasiELK(), id="QuasiELK", marks=pytest.mark.slow),
    pytest.param(dp.Picard(), id="Picard", marks=pytest.mark.slow),
    pytest.param(dp.Jacobi(), id="Jacobi", marks=pytest.mark.slow),
]


@pytest.mark.parametrize("root_finder", _ROOT_FINDERS)
def test_root_finders_match_sequential(root_finder):
    term, y0, args, t1 = _problem("van_der_pol")
    num_micro_steps = 8
    dt0 = t1 / 3
    solver = ParallelNewtonSolver(
        dfx.Tsit5(), num_micro_steps=num_micro_steps, root_finder=root_finder
    )
    saveat = dfx.SaveAt(ts=jnp.linspace(0.0, t1, 7))
    parallel = _solve(solver, term, y0, args, 0.0, t1, dt0, saveat=saveat)
    sequential = _solve(
        dfx.Tsit5(), term, y0, args, 0.0, t1, dt0 / num_micro_steps, saveat=saveat
    )
    assert max_relative_error(parallel.ys, sequential.ys) < 1e-10


def test_arenstorf_period_adaptive_windows():
    term, y0, args, _ = _problem("arenstorf")
    num_micro_steps = 4
    solver = ParallelNewtonSolver(dfx.Dopri8(), num_micro_steps=num_micro_steps)
    parallel = _solve(
        solver,
        term,
        y0,
        args,
        0.0,
        ARENSTORF_PERIOD,
        0.1,
        saveat=dfx.SaveAt(t1=True, dense=True),
        stepsize_controller=dfx.PIDController(rtol=1e-10, atol=1e-10),
        max_steps=500,
    )
    # The orbit is periodic: after one period the state returns to y0, to the accuracy
    # of the solve (a sequential Dopri8 solve with the same tolerance misses by 3e-7).
    assert max_relative_error(parallel.ys[-1], y0) < 1e-6

    # The micro-steps equal a sequential Dopri8 solve on the same (adaptive) grid.
    ts, ys = micro_steps(parallel)
    num_points = int(parallel.stats["num_accepted_steps"]) * num_micro_steps + 1
    assert bool(jnp.all(jnp.isinf(ts[num_points:])))
    ts, ys = ts[:num_points], ys[:num_points]
    sequential = _solve(
        dfx.Dopri8(),
        term,
        y0,
        args,
        0.0,
        ARENSTORF_PERIOD,
        None,
        saveat=dfx.SaveAt(steps=True),
        stepsize_controller=dfx.StepTo(ts=ts),
        max_steps=num_points - 1,
    )
    assert max_relative_error(ys[1:], sequential.ys) < 1e-10


def test_float32_ten_thousand_micro_steps():
    term, y0, args, _ = _problem("van_der_pol", dtype=jnp.float32)
    # 100 windows of 100 micro-steps: 1e4 micro-steps of length 1e-3.
    solver = ParallelNewtonSolver(dfx.Tsit5(), num_micro_steps=100)
    saveat = dfx.SaveAt(ts=jnp.linspace(0.0, 10.0, 11, dtype=jnp.float32))
    parallel = _solve(solver, term, y0, args, 0.0, 10.0, 0.1, saveat=saveat)
    sequential = _solve(
        dfx.Tsit5(), term, y0, args, 0.0, 10.0, 1e-3, saveat=saveat, max_steps=10_010
    )
    assert parallel.ys.dtype == jnp.float32
    assert max_relative_error(parallel.ys, sequential.ys) < 1e-4


# ---- Adaptive windows and Newton failure ---------------------------------------------


def test_pid_reaches_tolerance():
    term, y0, args, _ = _problem("van_der_pol")
    t1 = 10.0
    reference = _solve(
        dfx.Dopri8(),
        term,
        y0,
        args,
        0.0,
        t1,
        1e-3,
        stepsize_controller=dfx.PIDController(rtol=1e-13, atol=1e-13),
        max_steps=100_000,
    )
    solver = ParallelNewtonSolver(dfx.Tsit5(), num_micro_steps=8)
    errors = []
    for tolerance in (1e-5, 1e-8):
        # Tolerances as arrays share one compilation.
        tolerance = jnp.asarray(tolerance)
        controller = dfx.PIDController(rtol=tolerance, atol=tolerance)
        parallel = _solve(
            solver, term, y0, args, 0.0, t1, 0.5, stepsize_controller=controller
        )
        errors.append(max_relative_error(parallel.ys, reference.ys))
        assert errors[-1] < float(tolerance)
    # Tightening the tolerance by 1000 tightens the error by at least 100.
    assert errors[1] < errors[0] / 100


def test_newton_failure_rejects_windows():
    term, y0, args, _ = _problem("van_der_pol")
    t1 = 10.0
    controller = dfx.PIDController(rtol=1e-6, atol=1e-6)
    saveat = dfx.SaveAt(t1=True, dense=True)
    kwargs = dict(stepsize_controller=controller, saveat=saveat, max_steps=2000)
    # With these tolerances the default solver needs 3 or 4 Newton steps (plus the
    # polishing step) per window.
    ample = ParallelNewtonSolver(dfx.Tsit5(), num_micro_steps=8)
    limited = ParallelNewtonSolver(dfx.Tsit5(), num_micro_steps=8, max_newton_steps=3)
    sol_ample = _solve(ample, term, y0, args, 0.0, t1, 2.0, **kwargs)
    sol_limited = _solve(limited, term, y0, args, 0.0, t1, 2.0, **kwargs)

    # Windows whose root find needs more than 3 Newton steps are rejected and retried
    # shorter, so the limited solver rejects more windows and still gets it right.
    assert sol_limited.stats["num_rejected_steps"] > 0
    assert (
        sol_limited.stats["num_rejected_steps"] > sol_ample.stats["num_rejected_steps"]
    )
    assert sol_limited.result == dfx.RESULTS.successful
    assert max_relative_error(sol_limited.ys, sol_ample.ys) < 1e-5
    counts = num_newton_steps_per_window(sol_limited)
    num_windows = int(sol_limited.stats["num_accepted_steps"])
    assert bool(jnp.all(counts[:num_windows] >= 1))
    assert bool(jnp.all(counts[:num_windows] <= 3 + 1))


def test_newton_failure_constant_step_raises():
    term, y0, args, _ = _problem("van_der_pol")
    solver = ParallelNewtonSolver(dfx.Tsit5(), num_micro_steps=8, max_newton_steps=2)
    with pytest.raises(eqx.EquinoxRuntimeError, match="nonlinear solver"):
        _solve(solver, term, y0, args, 0.0, 3.0, 1.0)
    sol = _solve(solver, term, y0, args, 0.0, 3.0, 1.0, throw=False)
    assert sol.result == dfx.RESULTS.nonlinear_max_steps_reached


def test_clip_controller_with_jump():
    # y' = -y before t = 1 and y' = -3y after: the window ends on the jump.
    def vector_field(t, y, args):
        rate = jnp.where(t < 1.0, 1.0, 3.0)
        return -rate * y

    y0 = jnp.array([1.0, 2.0])
    solver = ParallelNewtonSolver(dfx.Tsit5(), num_micro_steps=4)
    controller = dfx.ClipStepSizeController(
        dfx.PIDController(rtol=1e-8, atol=1e-8), jump_ts=jnp.array([1.0])
    )
    sol = _solve(
        solver,
        dfx.ODETerm(vector_field),
        y0,
        None,
        0.0,
        2.0,
        0.3,
        stepsize_controller=controller,
        saveat=dfx.SaveAt(steps=True),
    )
    # The controller ends a window just before the jump and starts the next after.
    assert bool(jnp.any(jnp.abs(sol.ts - 1.0) < 1e-12))
    exact = y0 * math.exp(-1.0) * math.exp(-3.0)
    assert (
        max_relative_error(sol.ys[int(sol.stats["num_accepted_steps"]) - 1], exact)
        < 1e-7
    )


def test_dt0_none_first_window():
    term, y0, args, t1 = _problem("linear")
    solver = ParallelNewtonSolver(dfx.Heun(), num_micro_steps=4)
    sol = _solve(
        solver,
        term,
        y0,
        args,
        0.0,
        t1,
        None,
        stepsize_controller=dfx.PIDController(rtol=1e-6, atol=1e-6),
        saveat=dfx.SaveAt(steps=True),
    )
    # diffrax 0.7.2 proposes a first window of 0.01 for the terms it wraps; the
    # controller may shrink it before accepting it.
    assert 0.0 < float(sol.ts[0]) <= 0.01
    num_windows = int(sol.stats["num_accepted_steps"])
    rates = jnp.asarray(PROBLEMS["linear"][2])
    exact = y0 * jnp.exp(rates * t1)
    assert max_relative_error(sol.ys[num_windows - 1], exact) < 1e-5


def test_euler_with_pid_raises():
    term, y0, args, _ = _problem("linear")
    solver = ParallelNewtonSolver(dfx.Euler())
    with pytest.raises(RuntimeError, match="error estimates"):
        _solve(
            solver,
            term,
            y0,
            args,
            0.0,
            1.0,
            0.1,
            stepsize_controller=dfx.PIDController(rtol=1e-6, atol=1e-6),
        )


def test_root_finder_with_controller_tolerances():
    term, y0, args, t1 = _problem("van_der_pol")
    root_finder = dfx.with_stepsize_controller_tols(dp.DEER)()
    solver = ParallelNewtonSolver(
        dfx.Tsit5(), num_micro_steps=8, root_finder=root_finder
    )
    controller = dfx.PIDController(rtol=1e-8, atol=1e-8)
    sol = _solve(solver, term, y0, args, 0.0, t1, 0.5, stepsize_controller=controller)
    reference = _solve(
        dfx.Tsit5(),
        term,
        y0,
        args,
        0.0,
        t1,
        1e-3,
        stepsize_controller=dfx.PIDController(rtol=1e-12, atol=1e-12),
        max_steps=100_000,
    )
    assert max_relative_error(sol.ys, reference.ys) < 1e-7
    # diffrax 0.7.2 rejects such a root finder with a constant step size.
    with pytest.raises(ValueError, match="tolerances"):
        _solve(solver, term, y0, args, 0.0, t1, 0.5)


# ---- Gradients -----------------------------------------------------------------------


def test_gradient_wrt_y0():
    term, y0, args, t1 = _problem("van_der_pol")
    num_micro_steps = 8
    dt0 = t1 / 3

    def loss(y0, solver, dt0):
        sol = _solve(solver, term, y0, args, 0.0, t1, dt0)
        return jnp.sum(sol.ys[-1] ** 2)

    solver = ParallelNewtonSolver(dfx.Tsit5(), num_micro_steps=num_micro_steps)
    parallel = jax.grad(loss)(y0, solver, dt0)
    sequential = jax.grad(loss)(y0, dfx.Tsit5(), dt0 / num_micro_steps)
    assert max_relative_error(parallel, sequential) < 1e-8

    # Central finite differences, an independent check of the gradient itself.
    step = 1e-6
    for i in range(2):
        e = jnp.zeros(2).at[i].set(step)
        difference = (loss(y0 + e, solver, dt0) - loss(y0 - e, solver, dt0)) / (
            2 * step
        )
        assert abs(float(difference - parallel[i])) < 1e-6 * float(
            jnp.max(abs(parallel))
        )


def test_gradient_through_rejected_diverging_window():
    term, y0, args, _ = _problem("van_der_pol")
    t1 = 10.0
    num_micro_steps = 8
    solver = ParallelNewtonSolver(dfx.Tsit5(), num_micro_steps=num_micro_steps)
    # A first window of length 8 diverges to non-finite Newton iterates.
    failed = _solve(solver, term, y0, args, 0.0, t1, 8.0, throw=False)
    assert failed.result == dfx.RESULTS.nonlinear_divergence
    assert bool(jnp.all(jnp.isnan(failed.ys)))

    controller = dfx.PIDController(rtol=1e-6, atol=1e-6)

    def solve(y0, saveat):
        return _solve(
            solver,
            term,
            y0,
            args,
            0.0,
            t1,
            8.0,
            stepsize_controller=controller,
            saveat=saveat,
        )

    dense = solve(y0, dfx.SaveAt(t1=True, dense=True))
    assert dense.stats["num_rejected_steps"] > 0
    num_points = int(dense.stats["num_accepted_steps"]) * num_micro_steps + 1
    grid = micro_steps(dense)[0][:num_points]

    # diffrax stops gradients through step-size decisions, so the gradient of the
    # adaptive solve is that of a fixed-grid solve on the same micro-grid.
    def loss(y0):
        return jnp.sum(solve(y0, dfx.SaveAt(t1=True)).ys[-1] ** 2)

    def sequential_loss(y0):
        sol = _solve(
            dfx.Tsit5(),
            term,
            y0,
            args,
            0.0,
            t1,
            None,
            stepsize_controller=dfx.StepTo(ts=grid),
            max_steps=num_points - 1,
        )
        return jnp.sum(sol.ys[-1] ** 2)

    parallel = jax.grad(loss)(y0)
    sequential = jax.grad(sequential_loss)(y0)
    assert bool(jnp.all(jnp.isfinite(parallel)))
    assert max_relative_error(parallel, sequential) < 1e-8


class _NeuralVectorField(eqx.Module):
    weight: jax.Array
    bias: jax.Array

    def __call__(self, t, y, args):
        return jnp.tanh(self.weight @ y + self.bias) - 0.5 * y


def test_gradient_wrt_module_parameters():
    key_weight, key_bias = jr.split(jr.key(0))
    field = _NeuralVectorField(
        weight=jr.normal(key_weight, (3, 3)), bias=jr.normal(key_bias, (3,))
    )
    y0 = jnp.array([0.5, -1.0, 0.2])
    num_micro_steps = 8
    t1 = 2.0
    dt0 = t1 / 2

    @eqx.filter_grad
    def grad(field, solver, dt0):
        sol = _solve(solver, dfx.ODETerm(field), y0, None, 0.0, t1, dt0)
        return jnp.sum(sol.ys[-1] ** 2)

    solver = ParallelNewtonSolver(dfx.Dopri5(), num_micro_steps=num_micro_steps)
    parallel = grad(field, solver, dt0)
    sequential = grad(field, dfx.Dopri5(), dt0 / num_micro_steps)
    assert max_relative_error(parallel.weight, sequential.weight) < 1e-8
    assert max_relative_error(parallel.bias, sequential.bias) < 1e-8


# ---- Dense output, events and micro-steps --------------------------------------------


def test_dense_output_matches_sequential():
    term, y0, args, t1 = _problem("van_der_pol")
    num_micro_steps = 8
    dt0 = t1 / 3
    solver = ParallelNewtonSolver(dfx.Tsit5(), num_micro_steps=num_micro_steps)
    saveat = dfx.SaveAt(dense=True)
    parallel = _solve(solver, term, y0, args, 0.0, t1, dt0, saveat=saveat)
    sequential = _solve(
        dfx.Tsit5(), term, y0, args, 0.0, t1, dt0 / num_micro_steps, saveat=saveat
    )
    # Interior points, micro-step boundaries and a window boundary.
    times = jnp.array([0.0, 0.0371, 0.5, 1.0, 1.3, 2.9999, 3.0])
    for t in times:
        assert max_relative_error(parallel.evaluate(t), sequential.evaluate(t)) < 1e-10
        assert (
            max_relative_error(parallel.derivative(t), sequential.derivative(t)) < 1e-9
        )
    increment = parallel.evaluate(0.2, 1.7)
    expected = sequential.evaluate(1.7) - sequential.evaluate(0.2)
    assert max_relative_error(increment, expected) < 1e-10


def test_float_event_located():
    term, y0, args, _ = _problem("van_der_pol")
    num_micro_steps = 8
    dt0 = 0.5
    # The first zero of the position x(t), from x(0) = 2.
    event = dfx.Event(
        cond_fn=lambda t, y, args, **kwargs: y[0],
        root_finder=optx.Newton(rtol=1e-12, atol=1e-12),
    )
    solver = ParallelNewtonSolver(dfx.Tsit5(), num_micro_steps=num_micro_steps)
    parallel = _solve(solver, term, y0, args, 0.0, 10.0, dt0, event=event)
    sequential = _solve(
        dfx.Tsit5(), term, y0, args, 0.0, 10.0, dt0 / num_micro_steps, event=event
    )
    assert parallel.result == dfx.RESULTS.event_occurred
    assert 1.0 < float(parallel.ts[-1]) < 10.0
    assert abs(float(parallel.ts[-1] - sequential.ts[-1])) < 1e-8
    assert max_relative_error(parallel.ys[-1], sequential.ys[-1]) < 1e-8


def test_one_window_micro_steps_and_stats():
    term, y0, args, t1 = _problem("lotka_volterra")
    num_micro_steps = 64
    solver = ParallelNewtonSolver(dfx.Tsit5(), num_micro_steps=num_micro_steps)
    # `dt0 = t1 - t0` with `max_steps=1`: the whole interval is one window.
    parallel = _solve(
        solver,
        term,
        y0,
        args,
        0.0,
        t1,
        t1,
        saveat=dfx.SaveAt(steps=True, dense=True, solver_state=True),
        max_steps=1,
    )
    sequential = _solve(
        dfx.Tsit5(),
        term,
        y0,
        args,
        0.0,
        t1,
        t1 / num_micro_steps,
        saveat=dfx.SaveAt(t0=True, steps=True),
    )
    # `SaveAt(steps=True)` saves the window end only.
    assert parallel.ts.shape == (1,)
    ts, ys = micro_steps(parallel)
    assert ts.shape == (num_micro_steps + 1,)
    assert max_relative_error(ts, sequential.ts[: num_micro_steps + 1]) < 1e-14
    assert max_relative_error(ys, sequential.ys[: num_micro_steps + 1]) < 1e-10

    state = parallel.solver_state
    assert isinstance(state, ParallelNewtonState)
    counts = num_newton_steps_per_window(parallel)
    assert counts.shape == (1,)
    assert 2 <= int(counts[0]) <= num_micro_steps + 1
    assert int(state.num_newton_steps) == int(counts[0])
    assert int(state.num_newton_steps_last) == int(counts[0])


# ---- Transformations and structure ---------------------------------------------------


def test_vmap_over_y0_and_args():
    term, _, _, t1 = _problem("van_der_pol")
    num_micro_steps = 8
    dt0 = t1 / 3
    y0s = jnp.array([[2.0, 0.0], [1.0, 0.5], [-0.5, 1.0]])
    mus = jnp.array([1.0, 0.5, 2.0])
    solver = ParallelNewtonSolver(dfx.Tsit5(), num_micro_steps=num_micro_steps)

    def solve(y0, mu):
        return _solve(solver, term, y0, mu, 0.0, t1, dt0).ys[-1]

    batched = jax.vmap(solve)(y0s, mus)
    for y0, mu, result in zip(y0s, mus, batched):
        sequential = _solve(dfx.Tsit5(), term, y0, mu, 0.0, t1, dt0 / num_micro_steps)
        assert max_relative_error(result, sequential.ys[-1]) < 1e-10


def test_jit_traces_once_with_defaults():
    term, y0, args, t1 = _problem("van_der_pol")
    # All defaults: 32 micro-steps per window, DEER, tolerances from the dtype.
    solver = ParallelNewtonSolver(dfx.Tsit5())

    @eqx.filter_jit
    @eqx.debug.assert_max_traces(max_traces=1)
    def solve(y0):
        return _solve(solver, term, y0, args, 0.0, t1, 1.0).ys

    first = solve(y0)
    second = solve(y0 + 0.1)
    assert not bool(jnp.allclose(first, second))
    sequential = _solve(dfx.Tsit5(), term, y0 + 0.1, args, 0.0, t1, 1.0 / 32)
    assert max_relative_error(second, sequential.ys) < 1e-10


def test_pytree_state():
    def vector_field(t, y, args):
        return {"x": y["v"], "v": (1 - y["x"] ** 2) * y["v"] - y["x"]}

    term = dfx.ODETerm(vector_field)
    y0 = {"x": jnp.array(2.0), "v": jnp.array(0.0)}
    num_micro_steps = 8
    saveat = dfx.SaveAt(ts=jnp.array([0.7, 1.9, 3.0]))
    solver = ParallelNewtonSolver(dfx.Tsit5(), num_micro_steps=num_micro_steps)
    parallel = _solve(solver, term, y0, None, 0.0, 3.0, 1.0, saveat=saveat)
    sequential = _solve(
        dfx.Tsit5(), term, y0, None, 0.0, 3.0, 1.0 / num_micro_steps, saveat=saveat
    )
    assert set(parallel.ys) == {"x", "v"}
    assert max_relative_error(parallel.ys, sequential.ys) < 1e-10


def test_backward_in_time():
    term, y0, args, _ = _problem("van_der_pol")
    num_micro_steps = 8
    saveat = dfx.SaveAt(ts=jnp.array([1.5, 0.25, -1.0]))
    solver = ParallelNewtonSolver(dfx.Tsit5(), num_micro_steps=num_micro_steps)
    parallel = _solve(solver, term, y0, args, 2.0, -1.0, -1.0, saveat=saveat)
    sequential = _solve(
        dfx.Tsit5(),
        term,
        y0,
        args,
        2.0,
        -1.0,
        -1.0 / num_micro_steps,
        saveat=saveat,
    )
    assert max_relative_error(parallel.ys, sequential.ys) < 1e-10


# ---- Bad inputs ----------------------------------------------------------------------


@pytest.mark.parametrize(
    "base,match",
    [
        (dfx.Kvaerno5(), "implicit"),
        (dfx.ImplicitEuler(), "implicit"),
        (dfx.SRA1(), "explicit Runge--Kutta"),
        (dfx.ReversibleHeun(), "explicit Runge--Kutta"),
        (dfx.LeapfrogMidpoint(), "explicit Runge--Kutta"),
        (dfx.HalfSolver(dfx.Tsit5()), "HalfSolver"),
        ("Tsit5", "str"),
    ],
)
def test_unsupported_base_solver(base, match):
    with pytest.raises(TypeError, match=match):
        ParallelNewtonSolver(base)


def test_nested_solver_rejected():
    with pytest.raises(TypeError, match="ParallelNewtonSolver"):
        ParallelNewtonSolver(ParallelNewtonSolver(dfx.Tsit5()))


@pytest.mark.parametrize(
    "kwargs,error,match",
    [
        (dict(num_micro_steps=0), ValueError, "num_micro_steps"),
        (dict(num_micro_steps=-3), ValueError, "num_micro_steps"),
        (dict(num_micro_steps=2.5), TypeError, "num_micro_steps"),
        (dict(num_micro_steps=True), TypeError, "num_micro_steps"),
        (dict(max_newton_steps=0), ValueError, "max_newton_steps"),
        (dict(max_newton_steps=3.0), TypeError, "max_newton_steps"),
        (dict(root_finder="newton"), TypeError, "root_finder"),
        (dict(adjoint=optx.Newton(rtol=1e-8, atol=1e-8)), TypeError, "adjoint"),
    ],
)
def test_invalid_arguments(kwargs, error, match):
    with pytest.raises(error, match=match):
        ParallelNewtonSolver(dfx.Tsit5(), **kwargs)


def test_micro_steps_needs_dense_output():
    term, y0, args, t1 = _problem("linear")
    solver = ParallelNewtonSolver(dfx.Euler(), num_micro_steps=2)
    sol = _solve(solver, term, y0, args, 0.0, t1, 1.0)
    with pytest.raises(ValueError, match="dense=True"):
        micro_steps(sol)
    with pytest.raises(ValueError, match="dense=True"):
        num_newton_steps_per_window(sol)


@pytest.mark.parametrize(
    "guess,error,match",
    [
        (jnp.zeros((2, 4, 3)), ValueError, "structure of `y0`"),
        (jnp.zeros((2, 5, 2)), ValueError, "structure of `y0`"),
        (jnp.zeros((4, 2)), ValueError, "structure of `y0`"),
        ((jnp.zeros((2, 4, 2)), jnp.zeros((2, 4, 2))), ValueError, "structure"),
        (jnp.zeros((0, 4, 2)), ValueError, "at least one window"),
        ([[0.0, 0.0]] * 4, TypeError, "PyTree of arrays"),
    ],
)
def test_invalid_initial_guess(guess, error, match):
    solver = ParallelNewtonSolver(dfx.Tsit5(), num_micro_steps=4, initial_guess=guess)
    with pytest.raises(error, match=match):
        dfx.diffeqsolve(
            dfx.ODETerm(lambda t, y, args: -y),
            solver,
            t0=0.0,
            t1=1.0,
            dt0=0.5,
            y0=jnp.ones(2),
            stepsize_controller=dfx.ConstantStepSize(),
        )
