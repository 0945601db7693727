import jax
import jax.numpy as jnp
import optimistix as optx
import pytest

import diffrax_parallel as dp

from .helpers import max_relative_error
from .problems import (
    gru_problem,
    oscillator_problem,
    scan_reference,
    tanh_rnn_problem,
    van_der_pol_rk4_step,
)


# Van der Pol, mu = 1, y(0) = (2, 0), t in [0, 10], 1000 RK4 steps, guess y(0) everywhere.
VDP_Y0 = jnp.array([2.0, 0.0])
VDP_ARGS = (0.01, 1.0)


def _van_der_pol(solver, **kwargs):
    return dp.solve_recurrence(
        van_der_pol_rk4_step,
        VDP_Y0,
        None,
        VDP_ARGS,
        num_steps=1000,
        solver=solver,
        **kwargs,
    )


def test_deer_failure_on_van_der_pol_is_reported():
    solution = _van_der_pol(dp.DEER(), throw=False)
    assert solution.result == dp.RESULTS.newton_nonfinite
    assert int(solution.num_newton_steps) <= 10
    assert bool(jnp.all(jnp.isfinite(solution.ys)))


@pytest.mark.parametrize(
    "solver, max_iterations",
    [
        (dp.ELK(rtol=1e-12, atol=1e-12, mode="sequential"), 40),
        (dp.ELK(rtol=1e-12, atol=1e-12, mode="associative"), 40),
        (dp.QuasiELK(rtol=1e-12, atol=1e-12, mode="sequential"), 300),
    ],
)
def test_trust_region_converges_on_van_der_pol(solver, max_iterations):
    reference = scan_reference(van_der_pol_rk4_step, VDP_Y0, None, VDP_ARGS, 1000)
    solution = _van_der_pol(solver, max_steps=1000)
    assert solution.result == dp.RESULTS.successful
    assert int(solution.num_newton_steps) <= max_iterations
    assert max_relative_error(solution.ys, reference) < 1e-10


def test_safeguarded_deer_recovers_on_van_der_pol():
    reference = scan_reference(van_der_pol_rk4_step, VDP_Y0, None, VDP_ARGS, 1000)
    solution = _van_der_pol(dp.DEER(recover_nonfinite=True))
    assert int(solution.stats["num_recovered_steps"]) >= 1
    assert int(solution.num_newton_steps) <= 60
    assert max_relative_error(solution.ys, reference) < 1e-10


def test_default_solver_converges_on_van_der_pol():
    reference = scan_reference(van_der_pol_rk4_step, VDP_Y0, None, VDP_ARGS, 1000)
    solution = dp.solve_recurrence(
        van_der_pol_rk4_step, VDP_Y0, None, VDP_ARGS, num_steps=1000
    )
    assert max_relative_error(solution.ys, reference) < 1e-10


def test_elk_converges_on_expanding_gru_where_deer_does_not():
    step_fn, _, xs, args = gru_problem(1000, scale=3.0, size=8)
    y0 = 0.5 * jnp.ones(8)
    reference = scan_reference(step_fn, y0, xs, args)
    # The dynamics are expanding: the largest singular value of the step Jacobian along
    # the trajectory exceeds one almost everywhere.
    previous = jnp.concatenate([y0[None], reference[:-1]])
    jacobians = jax.vmap(jax.jacfwd(step_fn), in_axes=(0, 0, None))(previous, xs, args)
    singular_values = jnp.linalg.norm(jacobians, ord=2, axis=(1, 2))
    assert float(jnp.mean(singular_values > 1)) > 0.95

    budget = dict(max_steps=150, throw=False)
    deer = dp.solve_recurrence(step_fn, y0, xs, args, solver=dp.DEER(), **budget)
    elk = dp.solve_recurrence(step_fn, y0, xs, args, solver=dp.ELK(), **budget)
    assert deer.result != dp.RESULTS.successful
    assert elk.result == dp.RESULTS.successful
    assert max_relative_error(elk.ys, reference) < 1e-10


@pytest.mark.parametrize(
    "problem",
    [oscillator_problem(2000), tanh_rnn_problem(2000)],
    ids=["oscillator", "tanh_rnn"],
)
def test_elk_costs_little_more_than_deer_when_deer_converges(problem):
    step_fn, y0, xs, args = problem
    reference = scan_reference(step_fn, y0, xs, args, 2000)
    deer = dp.solve_recurrence(step_fn, y0, xs, args, num_steps=2000, solver=dp.DEER())
    elk = dp.solve_recurrence(step_fn, y0, xs, args, num_steps=2000, solver=dp.ELK())
    assert int(elk.num_newton_steps) <= int(deer.num_newton_steps) + 3
    assert max_relative_error(elk.ys, reference) < 1e-10


@pytest.mark.parametrize("solver", [dp.ELK(), dp.QuasiELK()])
def test_local_minimum_without_root_is_a_failure(solver):
    # r(y)_t = y_t^2 + 1 + 0.1 y_{t-1} has no real root; the squared residual has a
    # local minimum with r != 0, which must not be reported as a solution.
    def fn(y, args):
        previous = jnp.concatenate([jnp.zeros(1), y[:-1]])
        return y**2 + 1 + 0.1 * previous

    solution = optx.root_find(fn, solver, jnp.ones(3), throw=False, max_steps=200)
    assert solution.result == optx.RESULTS.nonlinear_divergence
    with pytest.raises(Exception, match="Nonlinear solve diverged"):
        optx.root_find(fn, solver, jnp.ones(3), max_steps=200)


def test_trust_region_with_nonunit_diagonal_blocks():
    # An implicit map g(y_t, y_{t-1}) = y_t + 0.5 tanh(y_t) - 0.8 y_{t-1} - x_t: the
    # diagonal blocks are not the identity.
    xs = jnp.sin(jnp.arange(50.0))[:, None] * jnp.ones((50, 2))

    def fn(y, args):
        previous = jnp.concatenate([jnp.ones((1, 2)), y[:-1]])
        return y + 0.5 * jnp.tanh(y) - 0.8 * previous - xs

    reference = optx.root_find(fn, optx.Newton(1e-13, 1e-13), jnp.zeros((50, 2))).value
    for solver in (dp.ELK(), dp.QuasiELK(), dp.DEER(), dp.QuasiDEER()):
        solution = optx.root_find(
            fn, solver, jnp.zeros((50, 2)), adjoint=dp.ImplicitScanAdjoint()
        )
        assert max_relative_error(solution.value, reference) < 1e-10


@pytest.mark.parametrize("solver", [dp.ELK(), dp.QuasiELK()])
def test_trust_region_gradients_are_exact(solver):
    step_fn, y0, xs, args = tanh_rnn_problem(300)

    def loss(args, y0, parallel):
        if parallel:
            ys = dp.solve_recurrence(step_fn, y0, xs, args, solver=solver).ys
        else:
            ys = scan_reference(step_fn, y0, xs, args)
        return jnp.sum(jnp.sin(ys))

    grads = jax.grad(loss, argnums=(0, 1))(args, y0, True)
    expected = jax.grad(loss, argnums=(0, 1))(args, y0, False)
    assert max_relative_error(grads, expected) < 1e-8
