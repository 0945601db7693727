import diffrax as dfx
import jax.numpy as jnp
import numpy as np
import pytest

import diffrax_parallel as dp

from .helpers import max_relative_error


def _lorenz(t, y, args):
    sigma, rho, beta = 10.0, 28.0, 8.0 / 3.0
    return jnp.stack(
        [sigma * (y[1] - y[0]), y[0] * (rho - y[2]) - y[1], y[0] * y[1] - beta * y[2]]
    )


def _contracting(t, y, args):
    return -jnp.array([1.0, 2.0]) * y + 0.1 * jnp.sin(y[::-1])


def _solve(vector_field, y0, t1, window, **solver_kwargs):
    solver = dp.ParallelNewtonSolver(
        dfx.Tsit5(), num_micro_steps=25, estimate_lyapunov=True, **solver_kwargs
    )
    saveat = dfx.SaveAt(dense=True, solver_state=True, t1=True)
    return dfx.diffeqsolve(
        dfx.ODETerm(vector_field),
        solver,
        0.0,
        t1,
        window,
        y0,
        saveat=saveat,
        max_steps=int(t1 / window) + 1,
    )


def test_window_estimates_negative_for_contracting_system():
    sol = _solve(_contracting, jnp.array([1.0, -1.0]), 5.0, 0.5)
    estimates = dp.lyapunov_exponent_per_window(sol)
    finite = estimates[jnp.isfinite(estimates)]
    assert finite.shape == (10,)
    assert bool(jnp.all(finite < -0.5))
    assert float(sol.solver_state.lyapunov_exponent_max) < 0
    assert int(sol.solver_state.num_unpredictable_windows) == 0


def test_window_estimates_positive_for_lorenz():
    sol = _solve(_lorenz, jnp.array([1.0, 1.0, 20.0]), 20.0, 0.25, max_growth=1.5)
    estimates = dp.lyapunov_exponent_per_window(sol)
    finite = estimates[jnp.isfinite(estimates)]
    assert finite.shape == (80,)
    # Finite-time exponents fluctuate from window to window; their mean is positive,
    # as is the largest Lyapunov exponent of Lorenz-63 (about 0.906 per unit time).
    assert float(jnp.mean(finite)) > 0.3
    assert int(sol.solver_state.num_unpredictable_windows) > 0


def test_estimates_match_sequential_jacobian_product():
    # The window estimate is log |A_K ... A_1 v| / H along the converged micro-steps,
    # with v the normalised ones vector; compare with finite differences of the
    # sequential flow map of one window.
    y0 = jnp.array([1.0, 1.0, 20.0])
    window = 0.25
    sol = _solve(_lorenz, y0, window, window)
    estimate = float(dp.lyapunov_exponent_per_window(sol)[0])

    def flow(y):
        return dfx.diffeqsolve(
            dfx.ODETerm(_lorenz),
            dfx.Tsit5(),
            0.0,
            window,
            window / 25,
            y,
            stepsize_controller=dfx.ConstantStepSize(),
        ).ys[-1]

    vector = jnp.ones(3) / jnp.sqrt(3.0)
    epsilon = 1e-6
    difference = (flow(y0 + epsilon * vector) - flow(y0 - epsilon * vector)) / (
        2 * epsilon
    )
    expected = float(jnp.log(jnp.linalg.norm(difference)) / window)
    assert abs(estimate - expected) < 1e-5


def test_statistics_require_the_option():
    solver = dp.ParallelNewtonSolver(dfx.Tsit5(), num_micro_steps=10)
    sol = dfx.diffeqsolve(
        dfx.ODETerm(_contracting),
        solver,
        0.0,
        1.0,
        0.5,
        jnp.array([1.0, 0.0]),
        saveat=dfx.SaveAt(dense=True, solver_state=True),
    )
    with pytest.raises(ValueError, match="estimate_lyapunov=True"):
        dp.lyapunov_exponent_per_window(sol)
    assert bool(jnp.isnan(sol.solver_state.lyapunov_exponent_max))
    with pytest.raises(ValueError, match="max_growth"):
        dp.ParallelNewtonSolver(dfx.Tsit5(), estimate_lyapunov=True, max_growth=0.5)


def test_automatic_windows_from_lyapunov_exponent():
    solver, window = dp.ParallelNewtonSolver.from_lyapunov_exponent(
        dfx.Tsit5(), 0.906, 0.01, max_num_micro_steps=1000
    )
    # exp(0.906 K 0.01) <= 1.5 gives K = floor(log(1.5) / 0.00906) = 44.
    assert solver.num_micro_steps == int(np.floor(np.log(1.5) / 0.00906))
    assert window == pytest.approx(solver.num_micro_steps * 0.01)
    contracting, _ = dp.ParallelNewtonSolver.from_lyapunov_exponent(
        dfx.Tsit5(), -1.0, 0.01, max_num_micro_steps=200
    )
    assert contracting.num_micro_steps == 200

    # The chosen windows converge on Lorenz-63 and match the sequential solve. Ten
    # windows (4.4 time units) keep the chaotic growth of round-off near exp(4).
    y0 = jnp.array([1.0, 1.0, 20.0])
    t1 = 10 * window
    sol = dfx.diffeqsolve(
        dfx.ODETerm(_lorenz),
        solver,
        0.0,
        t1,
        window,
        y0,
        saveat=dfx.SaveAt(t1=True, solver_state=True),
        max_steps=11,
    )
    reference = dfx.diffeqsolve(
        dfx.ODETerm(_lorenz),
        dfx.Tsit5(),
        0.0,
        t1,
        0.01,
        y0,
        saveat=dfx.SaveAt(t1=True),
        max_steps=1000,
    )
    assert max_relative_error(sol.ys, reference.ys) < 1e-9
    assert int(sol.solver_state.num_windows) == 10
