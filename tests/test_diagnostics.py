import math

import equinox as eqx
import jax
import jax.numpy as jnp
import jax.random as jr
import numpy as np
import pytest
from jax import lax

import diffrax_parallel as dp
from diffrax_parallel._diagnostics import estimate_lyapunov_exponent_from_solution

from .helpers import tree_allclose


# --------------------------------------------------------------------------------------
# Problems
# --------------------------------------------------------------------------------------


def _rnn_step(y, x, weight):
    return jnp.tanh(weight @ y + x)


def _contracting_rnn(num_steps=60, size=5, seed=0):
    """A tanh RNN whose weight has spectral norm 0.6.

    Every step Jacobian is `diag(1 - tanh^2) W`, of norm at most `||W||_2`, so the
    largest Lyapunov exponent is at most `log 0.6 ≈ -0.51` per step.
    """
    key_weight, key_inputs, key_y0 = jr.split(jr.key(seed), 3)
    weight = jr.normal(key_weight, (size, size))
    weight = 0.6 * weight / jnp.linalg.norm(weight, ord=2)
    xs = 0.5 * jr.normal(key_inputs, (num_steps, size))
    y0 = jr.normal(key_y0, (size,))
    return weight, xs, y0


def _scan(step_fn, y0, xs, args):
    def body(y, x):
        y_next = step_fn(y, x, args)
        return y_next, y_next

    return lax.scan(body, y0, xs)[1]


def _expanding_linear_map():
    # A normal matrix with eigenvalues of moduli 1.1 (a rotation pair) and 0.5, 0.3:
    # products grow exactly like 1.1^t, so the exponent is log 1.1 per step.
    angle = 0.4
    blocks = np.zeros((4, 4))
    blocks[:2, :2] = 1.1 * np.array(
        [[np.cos(angle), -np.sin(angle)], [np.sin(angle), np.cos(angle)]]
    )
    blocks[2, 2] = 0.5
    blocks[3, 3] = -0.3
    q, _ = np.linalg.qr(np.random.default_rng(3).normal(size=(4, 4)))
    return jnp.asarray(q @ blocks @ q.T)


def _linear_step(y, x, matrix):
    return matrix @ y + x


# --------------------------------------------------------------------------------------
# Agreement with the sequential estimate
# --------------------------------------------------------------------------------------


@pytest.mark.parametrize("solver", [dp.DEER(), dp.ELK()], ids=["DEER", "ELK"])
def test_matches_estimate_on_scan(solver):
    weight, xs, y0 = _contracting_rnn()
    solution = dp.solve_recurrence(_rnn_step, y0, xs, weight, solver=solver)
    key = jr.key(5)

    estimate = estimate_lyapunov_exponent_from_solution(
        _rnn_step, y0, solution, xs, weight, num_vectors=3, num_transient=5, key=key
    )
    sequential = dp.estimate_lyapunov_exponent(
        _rnn_step,
        y0,
        _scan(_rnn_step, y0, xs, weight),
        weight,
        xs=xs,
        num_vectors=3,
        num_transient=5,
        key=key,
    )

    assert estimate.per_step_log_growth.shape == (60, 3)
    assert tree_allclose(estimate, sequential, rtol=1e-10, atol=1e-12)


def test_contracting_rnn_negative():
    weight, xs, y0 = _contracting_rnn(num_steps=200)
    solution = dp.solve_recurrence(_rnn_step, y0, xs, weight, solver=dp.DEER())
    estimate = estimate_lyapunov_exponent_from_solution(
        _rnn_step, y0, solution, xs, weight
    )

    bound = math.log(0.6)
    assert estimate.lyapunov_exponent < 0
    # The product of the Jacobians is bounded by 0.6^T, so no vector grows faster.
    assert jnp.all(estimate.lyapunov_exponent_per_vector <= bound + 1e-12)
    # The derivative of tanh is near 1 only for small pre-activations, so the exponent
    # sits below the bound but within a few multiples of it.
    assert estimate.lyapunov_exponent > 4 * bound


def test_expanding_linear_recurrence():
    # DEER solves a linear recurrence in one Newton step however fast it grows (the
    # bound allows a second step against rounding). The exponent of
    # `y_t = M y_{t-1} + x_t` is the log of the spectral radius of M.
    matrix = _expanding_linear_map()
    xs = 0.1 * jr.normal(jr.key(1), (300, 4))
    y0 = jnp.ones(4)
    solution = dp.solve_recurrence(_linear_step, y0, xs, matrix, solver=dp.DEER())
    estimate = estimate_lyapunov_exponent_from_solution(
        _linear_step, y0, solution, xs, matrix, num_transient=50
    )

    assert solution.num_newton_steps <= 2
    assert estimate.lyapunov_exponent == pytest.approx(math.log(1.1), abs=2e-3)


def test_pytree_state_without_inputs():
    # A two-leaf state and no per-step inputs: `xs=None` reaches `step_fn` as None.
    def step(y, x, args):
        assert x is None
        position, velocity = y
        return (position + 0.1 * velocity, 0.8 * velocity - 0.1 * jnp.sin(position))

    y0 = (jnp.array([0.3, -0.2]), jnp.array([0.1, 0.4]))
    solution = dp.solve_recurrence(step, y0, num_steps=40, solver=dp.DEER())
    estimate = estimate_lyapunov_exponent_from_solution(step, y0, solution)

    def body(y, _):
        y_next = step(y, None, None)
        return y_next, y_next

    sequential = lax.scan(body, y0, length=40)[1]
    expected = dp.estimate_lyapunov_exponent(step, y0, sequential)
    assert jnp.isfinite(estimate.lyapunov_exponent)
    assert tree_allclose(estimate, expected, rtol=1e-10, atol=1e-12)


def test_step_size_gives_rate_per_unit_time():
    weight, xs, y0 = _contracting_rnn()
    solution = dp.solve_recurrence(_rnn_step, y0, xs, weight, solver=dp.DEER())
    per_step = estimate_lyapunov_exponent_from_solution(
        _rnn_step, y0, solution, xs, weight
    )
    per_time = estimate_lyapunov_exponent_from_solution(
        _rnn_step, y0, solution, xs, weight, dt=0.25
    )

    expected = float(per_step.lyapunov_exponent) / 0.25
    assert float(per_time.lyapunov_exponent) == pytest.approx(expected, rel=1e-12)


# --------------------------------------------------------------------------------------
# Rejected inputs
# --------------------------------------------------------------------------------------


def _unconverged_solution():
    weight, xs, y0 = _contracting_rnn()
    solution = dp.solve_recurrence(
        _rnn_step, y0, xs, weight, solver=dp.DEER(), max_steps=1, throw=False
    )
    assert solution.result == dp.RESULTS.newton_max_steps_reached
    return weight, xs, y0, solution


def test_unsuccessful_solution_rejected():
    weight, xs, y0, solution = _unconverged_solution()
    with pytest.raises(ValueError, match="not a successful solve") as error:
        estimate_lyapunov_exponent_from_solution(_rnn_step, y0, solution, xs, weight)
    assert "did not converge within `max_steps`" in str(error.value)


def test_unsuccessful_solution_rejected_under_jit():
    weight, xs, y0, solution = _unconverged_solution()

    @eqx.filter_jit
    def estimate(solution):
        return estimate_lyapunov_exponent_from_solution(
            _rnn_step, y0, solution, xs, weight
        ).lyapunov_exponent

    with pytest.raises(eqx.EquinoxRuntimeError, match="not a successful solve"):
        jax.block_until_ready(estimate(solution))


def test_solution_under_jit():
    weight, xs, y0 = _contracting_rnn()

    @eqx.filter_jit
    def solve_and_estimate(weight):
        solution = dp.solve_recurrence(_rnn_step, y0, xs, weight, solver=dp.DEER())
        return estimate_lyapunov_exponent_from_solution(
            _rnn_step, y0, solution, xs, weight
        ).lyapunov_exponent

    sequential = dp.estimate_lyapunov_exponent(
        _rnn_step, y0, _scan(_rnn_step, y0, xs, weight), weight, xs=xs
    ).lyapunov_exponent
    assert float(solve_and_estimate(weight)) == pytest.approx(
        float(sequential), rel=1e-10
    )


def test_trajectory_array_rejected():
    weight, xs, y0 = _contracting_rnn()
    ys = _scan(_rnn_step, y0, xs, weight)
    with pytest.raises(TypeError, match="estimate_lyapunov_exponent"):
        estimate_lyapunov_exponent_from_solution(
            _rnn_step,
            y0,
            ys,  # pyright: ignore[reportArgumentType] (the invalid input under test)
            xs,
            weight,
        )


def test_mismatched_inputs_rejected():
    weight, xs, y0 = _contracting_rnn()
    solution = dp.solve_recurrence(_rnn_step, y0, xs, weight, solver=dp.DEER())
    with pytest.raises(ValueError, match="one input per step"):
        estimate_lyapunov_exponent_from_solution(
            _rnn_step, y0, solution, xs[:-1], weight
        )
