import math

import equinox as eqx
import jax
import jax.numpy as jnp
import jax.random as jr
import numpy as np
import pytest
from jax import lax

from diffrax_parallel._lyapunov import (
    estimate_lyapunov_exponent,
    estimate_lyapunov_exponent_from_jacobians,
    is_predictable,
    suggest_num_micro_steps,
)


# --------------------------------------------------------------------------------------
# Problems
# --------------------------------------------------------------------------------------


def _orthogonal(size, seed):
    q, _ = np.linalg.qr(np.random.default_rng(seed).normal(size=(size, size)))
    return q


def _rotation(angle):
    return np.array([[np.cos(angle), -np.sin(angle)], [np.sin(angle), np.cos(angle)]])


def _symmetric_matrix():
    # Normal (symmetric), with the dominant eigenvalue negative: spectral radius 1.2.
    q = _orthogonal(4, 0)
    return q @ np.diag([-1.2, 0.9, 0.5, -0.3]) @ q.T, 1.2


def _rotation_scaling_matrix():
    # Two rotation-times-scaling blocks conjugated by an orthogonal matrix: normal, with
    # complex eigenvalues of moduli 1.05 and 0.8.
    blocks = np.zeros((4, 4))
    blocks[:2, :2] = 1.05 * _rotation(0.3)
    blocks[2:, 2:] = 0.8 * _rotation(1.1)
    q = _orthogonal(4, 1)
    return q @ blocks @ q.T, 1.05


def _contracting_matrix():
    q = _orthogonal(3, 2)
    return q @ np.diag([0.7, -0.5, 0.2]) @ q.T, 0.7


MATRICES = {
    "symmetric": _symmetric_matrix,
    "rotation_scaling": _rotation_scaling_matrix,
    "contracting": _contracting_matrix,
}


def _linear_map(matrix):
    matrix = jnp.asarray(matrix)
    return lambda y, x, args: matrix @ y


def _trajectory(fn, y0, num_steps, xs=None, args=None):
    """Sequential reference trajectory, `ys[t] = fn(ys[t-1], xs[t], args)`."""

    def step(y, x):
        y = fn(y, x, args)
        return y, y

    _, ys = lax.scan(step, y0, xs, length=num_steps)
    return ys


def _tanh_rnn(scale, size=5, input_size=3, seed=0):
    """A tanh RNN cell `y -> tanh(W y + U x + b)` with `||W||_2 = scale`."""
    rng = np.random.default_rng(seed)
    weight = rng.normal(size=(size, size))
    weight = jnp.asarray(scale * weight / np.linalg.norm(weight, 2))
    input_weight = jnp.asarray(rng.normal(size=(size, input_size)))
    bias = jnp.asarray(rng.normal(size=size))

    def cell(y, x, args):
        return jnp.tanh(weight @ y + input_weight @ x + bias)

    return cell, size, input_size


def _lorenz_rk4_step(y, x, args):
    """One classical RK4 step of size 0.01 of Lorenz-63 (σ=10, ρ=28, β=8/3)."""

    def vector_field(y):
        return jnp.stack(
            [
                10.0 * (y[1] - y[0]),
                y[0] * (28.0 - y[2]) - y[1],
                y[0] * y[1] - (8.0 / 3.0) * y[2],
            ]
        )

    h = 0.01
    k1 = vector_field(y)
    k2 = vector_field(y + (h / 2) * k1)
    k3 = vector_field(y + (h / 2) * k2)
    k4 = vector_field(y + h * k3)
    return y + (h / 6) * (k1 + 2 * k2 + 2 * k3 + k4)


# --------------------------------------------------------------------------------------
# Estimates against closed forms and published values
# --------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", list(MATRICES))
def test_linear_map_step_fn(name):
    matrix, spectral_radius = MATRICES[name]()
    fn = _linear_map(matrix)
    y0 = jnp.ones(matrix.shape[0])
    ys = _trajectory(fn, y0, 2000)

    estimate = estimate_lyapunov_exponent(fn, y0, ys, num_transient=500)

    expected = math.log(spectral_radius)
    assert abs(float(estimate.lyapunov_exponent) - expected) < 1e-6
    assert np.allclose(estimate.lyapunov_exponent_per_vector, expected, atol=1e-6)
    assert estimate.per_step_log_growth.shape == (2000, 4)


@pytest.mark.parametrize("name", list(MATRICES))
def test_linear_map_jacobians(name):
    matrix, spectral_radius = MATRICES[name]()
    jacobians = jnp.broadcast_to(jnp.asarray(matrix), (2000, *matrix.shape))

    estimate = estimate_lyapunov_exponent_from_jacobians(jacobians, num_transient=500)

    assert abs(float(estimate.lyapunov_exponent) - math.log(spectral_radius)) < 1e-6


def test_rotation_scaling_growth_per_step():
    # After the transient the vectors lie in the invariant plane of the 1.05-block,
    # where every vector grows by exactly 1.05 per step.
    matrix, _ = _rotation_scaling_matrix()
    fn = _linear_map(matrix)
    y0 = jnp.ones(4)
    estimate = estimate_lyapunov_exponent(fn, y0, _trajectory(fn, y0, 600))

    late_growth = estimate.per_step_log_growth[500:]
    assert np.allclose(late_growth, math.log(1.05), rtol=0, atol=1e-10)


def test_burn_in_removes_transient_bias():
    # Without a burn-in each vector's estimate is off by about log(component) / T, so
    # the vectors disagree. With one they agree with the exact value to round-off.
    matrix, spectral_radius = _symmetric_matrix()
    fn = _linear_map(matrix)
    y0 = jnp.ones(4)
    ys = _trajectory(fn, y0, 2000)

    without = estimate_lyapunov_exponent(fn, y0, ys).lyapunov_exponent_per_vector
    with_burn_in = estimate_lyapunov_exponent(
        fn, y0, ys, num_transient=500
    ).lyapunov_exponent_per_vector

    expected = math.log(spectral_radius)
    assert float(jnp.max(jnp.abs(without - expected))) > 1e-5
    assert float(jnp.max(jnp.abs(without - expected))) < 10 / 2000
    assert float(jnp.max(jnp.abs(with_burn_in - expected))) < 1e-12


def test_diagonal_jacobians_exact():
    rng = np.random.default_rng(3)
    jacobians = jnp.asarray(rng.uniform(-2.0, 2.0, size=(300, 6)))

    estimate = estimate_lyapunov_exponent_from_jacobians(jacobians, num_transient=20)

    per_component = np.mean(np.log(np.abs(np.asarray(jacobians)[20:])), axis=0)
    assert np.allclose(estimate.lyapunov_exponent_per_vector, per_component, atol=1e-12)
    assert abs(float(estimate.lyapunov_exponent) - per_component.max()) < 1e-12


def test_diagonal_equals_dense_diagonal():
    # A dense estimate of diagonal blocks converges to the largest component exponent.
    rng = np.random.default_rng(4)
    diagonal = rng.uniform(0.5, 1.5, size=(3000, 3)) * np.array([1.2, 1.0, 0.8])
    dense = jnp.asarray(np.einsum("ti,ij->tij", diagonal, np.eye(3)))

    exact = estimate_lyapunov_exponent_from_jacobians(
        jnp.asarray(diagonal), num_transient=500
    )
    estimate = estimate_lyapunov_exponent_from_jacobians(dense, num_transient=500)

    assert abs(float(estimate.lyapunov_exponent - exact.lyapunov_exponent)) < 1e-6


def test_contracting_tanh_rnn_negative():
    cell, size, input_size = _tanh_rnn(scale=0.5)
    xs = jr.normal(jr.key(1), (500, input_size))
    y0 = jnp.zeros(size)
    ys = _trajectory(cell, y0, 500, xs)

    estimate = estimate_lyapunov_exponent(cell, y0, ys, xs=xs, num_transient=50)

    # Each Jacobian is diag(1 - tanh^2) W, of norm at most ||W||_2 = 0.5.
    assert float(estimate.lyapunov_exponent) < 0
    assert float(estimate.lyapunov_exponent) <= math.log(0.5) + 1e-12


def test_step_fn_matches_jacobians_with_inputs():
    # An expanding RNN (||W||_2 = 3) driven by inputs: the JVP path and the dense path
    # see the same Jacobians and the same random vectors.
    cell, size, input_size = _tanh_rnn(scale=3.0)
    xs = jr.normal(jr.key(2), (400, input_size))
    y0 = jnp.zeros(size)
    ys = _trajectory(cell, y0, 400, xs)
    points = jnp.concatenate([y0[None], ys[:-1]])
    jacobians = jax.vmap(jax.jacfwd(lambda y, x: cell(y, x, None)))(points, xs)

    key = jr.key(7)
    from_fn = estimate_lyapunov_exponent(cell, y0, ys, xs=xs, key=key, num_vectors=3)
    from_jacobians = estimate_lyapunov_exponent_from_jacobians(
        jacobians, key=key, num_vectors=3
    )

    assert np.allclose(
        from_fn.per_step_log_growth, from_jacobians.per_step_log_growth, atol=1e-10
    )
    assert (
        abs(float(from_fn.lyapunov_exponent - from_jacobians.lyapunov_exponent)) < 1e-10
    )


def test_pytree_state_matches_flat_state():
    matrix, spectral_radius = _symmetric_matrix()
    matrix = jnp.asarray(matrix)

    def pytree_fn(y, x, args):
        flat = matrix @ jnp.concatenate([y["a"], y["b"].reshape(-1)])
        return {"a": flat[:1], "b": flat[1:].reshape(1, 3)}

    y0 = {"a": jnp.ones(1), "b": jnp.ones((1, 3))}
    ys = _trajectory(pytree_fn, y0, 1000)
    flat_fn = _linear_map(matrix)
    flat_ys = _trajectory(flat_fn, jnp.ones(4), 1000)

    tree_estimate = estimate_lyapunov_exponent(pytree_fn, y0, ys, num_transient=300)
    flat_estimate = estimate_lyapunov_exponent(
        flat_fn, jnp.ones(4), flat_ys, num_transient=300
    )

    assert np.allclose(
        tree_estimate.per_step_log_growth, flat_estimate.per_step_log_growth, atol=1e-12
    )
    assert (
        abs(float(tree_estimate.lyapunov_exponent) - math.log(spectral_radius)) < 1e-6
    )


def _flow_problem():
    # The flow of y' = M y with M = Q diag(mu) Q^T normal. One step of size h is
    # Q diag(exp(mu h)) Q^T, so the exponent per unit time is max(mu) = 0.3 for any
    # step sizes.
    q = jnp.asarray(_orthogonal(3, 5))
    rates = jnp.array([0.3, -0.2, -1.0])

    def flow_step(y, h, args):
        return q @ (jnp.exp(rates * h) * (q.T @ y))

    def jacobian(h):
        return q @ (jnp.exp(rates * h)[:, None] * q.T)

    return flow_step, jacobian, 0.3


def test_rate_per_unit_time_scalar_dt():
    flow_step, _, rate = _flow_problem()
    dt = 0.05
    xs = jnp.full(1000, dt)
    y0 = jnp.ones(3)
    ys = _trajectory(flow_step, y0, 1000, xs)

    per_time = estimate_lyapunov_exponent(
        flow_step, y0, ys, xs=xs, dt=dt, num_transient=300
    )
    per_step = estimate_lyapunov_exponent(flow_step, y0, ys, xs=xs, num_transient=300)

    assert abs(float(per_time.lyapunov_exponent) - rate) < 1e-9
    assert abs(float(per_step.lyapunov_exponent) - rate * dt) < 1e-9


def test_rate_per_unit_time_varying_dt():
    flow_step, jacobian, rate = _flow_problem()
    step_sizes = jnp.asarray(np.random.default_rng(6).uniform(0.01, 0.2, size=1000))
    y0 = jnp.ones(3)
    ys = _trajectory(flow_step, y0, 1000, step_sizes)

    from_fn = estimate_lyapunov_exponent(
        flow_step, y0, ys, xs=step_sizes, dt=step_sizes, num_transient=300
    )
    from_jacobians = estimate_lyapunov_exponent_from_jacobians(
        jax.vmap(jacobian)(step_sizes), dt=step_sizes, num_transient=300
    )

    assert abs(float(from_fn.lyapunov_exponent) - rate) < 1e-9
    assert abs(float(from_jacobians.lyapunov_exponent) - rate) < 1e-9


def test_lorenz63_published_value():
    # Largest exponent of Lorenz-63 (σ=10, ρ=28, β=8/3): 0.906 per time unit, computed
    # by J. C. Sprott with RK4 (step 0.001) over more than 1e6 time units
    # (https://sprott.physics.wisc.edu/chaos/lorenzle.htm).
    on_attractor = _trajectory(_lorenz_rk4_step, jnp.array([1.0, 1.0, 1.0]), 1000)[-1]
    num_steps = 30_000  # 300 time units at dt = 0.01
    ys = _trajectory(_lorenz_rk4_step, on_attractor, num_steps)

    estimate = estimate_lyapunov_exponent(
        _lorenz_rk4_step, on_attractor, ys, dt=0.01, num_transient=1000
    )

    assert abs(float(estimate.lyapunov_exponent) - 0.906) < 0.05


def test_zero_jacobian_gives_minus_infinity():
    jacobians = jnp.broadcast_to(2.0 * jnp.eye(2), (10, 2, 2))
    jacobians = jacobians.at[4].set(0.0)

    estimate = estimate_lyapunov_exponent_from_jacobians(jacobians)

    assert float(estimate.lyapunov_exponent) == -np.inf
    assert np.all(estimate.per_step_log_growth[4] == -np.inf)
    # The steps after the zero block are unaffected: no NaN from 0 / 0.
    assert np.allclose(estimate.per_step_log_growth[5:], math.log(2.0))


def test_float32():
    matrix, spectral_radius = _rotation_scaling_matrix()
    jacobians = jnp.broadcast_to(jnp.asarray(matrix, jnp.float32), (2000, 4, 4))

    estimate = estimate_lyapunov_exponent_from_jacobians(jacobians, num_transient=500)

    assert estimate.lyapunov_exponent.dtype == jnp.float32
    assert abs(float(estimate.lyapunov_exponent) - math.log(spectral_radius)) < 1e-5


# --------------------------------------------------------------------------------------
# Transformations
# --------------------------------------------------------------------------------------


def test_jit_traces_once():
    cell, size, input_size = _tanh_rnn(scale=2.0)

    @jax.jit
    @eqx.debug.assert_max_traces(max_traces=1)
    def lyapunov_exponent(y0, ys, xs):
        return estimate_lyapunov_exponent(cell, y0, ys, xs=xs, dt=0.1).lyapunov_exponent

    for seed in (0, 1):
        xs = jr.normal(jr.key(seed), (200, input_size))
        y0 = jnp.zeros(size)
        ys = _trajectory(cell, y0, 200, xs)
        eager = estimate_lyapunov_exponent(cell, y0, ys, xs=xs, dt=0.1)
        assert (
            abs(float(lyapunov_exponent(y0, ys, xs) - eager.lyapunov_exponent)) < 1e-12
        )


def test_vmap_over_trajectories():
    cell, size, input_size = _tanh_rnn(scale=2.0)
    xs = jr.normal(jr.key(3), (2, 100, input_size))
    y0 = jnp.zeros(size)
    ys = jax.vmap(lambda x: _trajectory(cell, y0, 100, x))(xs)

    batched = jax.vmap(
        lambda y, x: estimate_lyapunov_exponent(cell, y0, y, xs=x).lyapunov_exponent
    )(ys, xs)

    for i in range(2):
        single = estimate_lyapunov_exponent(cell, y0, ys[i], xs=xs[i])
        assert abs(float(batched[i] - single.lyapunov_exponent)) < 1e-12


# --------------------------------------------------------------------------------------
# Window-length policy
# --------------------------------------------------------------------------------------


def test_suggest_non_positive_exponent_gives_max():
    assert suggest_num_micro_steps(-0.5, 0.01, max_num_micro_steps=300) == 300
    assert suggest_num_micro_steps(0.0, 0.01, max_num_micro_steps=300) == 300
    assert suggest_num_micro_steps(-np.inf, 0.01, max_num_micro_steps=300) == 300


def test_suggest_closed_form():
    # floor(log(1.5) / (0.906 * 0.01)) = floor(44.75...) = 44.
    num_steps = suggest_num_micro_steps(0.906, 0.01, max_num_micro_steps=1000)
    assert num_steps == 44
    assert isinstance(num_steps, int)
    custom = suggest_num_micro_steps(
        0.906, 0.01, max_num_micro_steps=10_000, max_growth=1e3
    )
    assert custom == math.floor(math.log(1e3) / 0.00906)


def test_suggest_decreases_with_exponent():
    exponents = [0.01, 0.1, 0.5, 0.906, 2.0, 10.0, 50.0]
    windows = [
        suggest_num_micro_steps(e, 0.01, max_num_micro_steps=10_000) for e in exponents
    ]
    assert all(a >= b for a, b in zip(windows, windows[1:]))
    assert windows[0] > windows[-1]
    # Tiny positive exponents are clipped to the maximum, huge ones to one step.
    assert suggest_num_micro_steps(1e-30, 0.01, max_num_micro_steps=77) == 77
    assert suggest_num_micro_steps(1e6, 0.01, max_num_micro_steps=77) == 1


def test_suggest_traced_matches_python():
    exponents = jnp.array([-1.0, 0.0, 1e-30, 0.3, 0.906, 4.0, 1e6])

    @jax.jit
    def suggest(exponent, dt):
        return suggest_num_micro_steps(exponent, dt, max_num_micro_steps=500)

    traced = suggest(exponents, 0.01)

    assert jnp.issubdtype(traced.dtype, jnp.integer)
    expected = [
        suggest_num_micro_steps(float(e), 0.01, max_num_micro_steps=500)
        for e in exponents
    ]
    assert traced.tolist() == expected


def test_suggest_consistent_with_is_predictable():
    dt = 0.01
    for exponent in (0.3, 0.906, 4.0):
        num_steps = suggest_num_micro_steps(exponent, dt, max_num_micro_steps=10_000)
        assert is_predictable(exponent, num_steps * dt)
        assert not is_predictable(exponent, (num_steps + 1) * dt)


def test_is_predictable():
    assert is_predictable(-3.0, 1e6)
    assert is_predictable(0.0, 1e6)
    assert is_predictable(0.906, 0.4)
    assert not is_predictable(0.906, 0.5)
    assert is_predictable(0.906, 0.5, max_growth=2.0)
    traced = jax.jit(is_predictable)(jnp.array([-1.0, 0.906, 0.906]), jnp.array(0.5))
    assert traced.tolist() == [True, False, False]


# --------------------------------------------------------------------------------------
# Invalid inputs
# --------------------------------------------------------------------------------------


def _small_problem():
    fn = _linear_map(np.eye(2))
    y0 = jnp.ones(2)
    return fn, y0, _trajectory(fn, y0, 10)


def test_mismatched_ys_and_xs():
    fn, y0, ys = _small_problem()
    with pytest.raises(ValueError, match="`xs` must have one input per step"):
        estimate_lyapunov_exponent(fn, y0, ys, xs=jnp.zeros((9, 1)))


def test_inconsistent_leading_axes():
    fn = lambda y, x, args: y
    y0 = (jnp.ones(2), jnp.ones(3))
    ys = (jnp.ones((10, 2)), jnp.ones((9, 3)))
    with pytest.raises(ValueError, match="same leading"):
        estimate_lyapunov_exponent(fn, y0, ys)


def test_invalid_num_vectors():
    fn, y0, ys = _small_problem()
    with pytest.raises(ValueError, match="`num_vectors` must be at least 1"):
        estimate_lyapunov_exponent(fn, y0, ys, num_vectors=0)
    with pytest.raises(TypeError, match="`num_vectors` must be a Python int"):
        estimate_lyapunov_exponent(
            fn,
            y0,
            ys,
            num_vectors=2.0,  # pyright: ignore[reportArgumentType] (the invalid input under test)
        )
    with pytest.raises(ValueError, match="`num_vectors` must be at least 1"):
        estimate_lyapunov_exponent_from_jacobians(jnp.ones((3, 2)), num_vectors=0)


def test_invalid_num_transient():
    fn, y0, ys = _small_problem()
    with pytest.raises(ValueError, match="discards all 10 steps"):
        estimate_lyapunov_exponent(fn, y0, ys, num_transient=10)
    with pytest.raises(ValueError, match="`num_transient` must be at least 0"):
        estimate_lyapunov_exponent(fn, y0, ys, num_transient=-1)


def test_trajectory_not_matching_y0():
    fn, y0, _ = _small_problem()
    with pytest.raises(ValueError, match="matching leaf of `y0`"):
        estimate_lyapunov_exponent(fn, y0, jnp.ones((10, 3)))
    with pytest.raises(ValueError, match="PyTree structure of `y0`"):
        estimate_lyapunov_exponent(fn, y0, (jnp.ones((10, 2)),))
    with pytest.raises(ValueError, match="at least one step"):
        estimate_lyapunov_exponent(fn, y0, jnp.ones((0, 2)))


def test_fn_output_not_matching_y0():
    y0 = jnp.ones(2)
    with pytest.raises(ValueError, match="must return a state"):
        estimate_lyapunov_exponent(
            lambda y, x, args: jnp.ones(3), y0, jnp.ones((10, 2))
        )


def test_integer_state():
    with pytest.raises(TypeError, match="real floating-point dtype"):
        estimate_lyapunov_exponent(
            lambda y, x, args: y, jnp.ones(2, int), jnp.ones((5, 2), int)
        )


def test_invalid_jacobians():
    with pytest.raises(ValueError, match=r"shape \(T, d, d\)"):
        estimate_lyapunov_exponent_from_jacobians(jnp.ones((5, 2, 3)))
    with pytest.raises(ValueError, match=r"shape \(T, d, d\)"):
        estimate_lyapunov_exponent_from_jacobians(jnp.ones(5))
    with pytest.raises(ValueError, match="at least one step"):
        estimate_lyapunov_exponent_from_jacobians(jnp.ones((0, 2)))


def test_invalid_dt():
    fn, y0, ys = _small_problem()
    with pytest.raises(ValueError, match="`dt` must be a scalar or have shape"):
        estimate_lyapunov_exponent(fn, y0, ys, dt=jnp.ones(9))
    with pytest.raises(ValueError, match="`dt` must be positive"):
        estimate_lyapunov_exponent(fn, y0, ys, dt=-0.1)
    with pytest.raises(eqx.EquinoxRuntimeError, match="`dt` must be positive"):
        estimate_lyapunov_exponent(fn, y0, ys, dt=jnp.full(10, -0.1))


def test_non_finite_trajectory():
    fn, y0, ys = _small_problem()
    # The trajectory stays at y = 1, where sqrt(y - 2) and its derivative are NaN.
    bad_fn = lambda y, x, args: y * jnp.sqrt(y - 2.0)
    with pytest.raises(eqx.EquinoxRuntimeError, match="not finite"):
        estimate_lyapunov_exponent(bad_fn, y0, ys)
    estimate = estimate_lyapunov_exponent(bad_fn, y0, ys, throw=False)
    assert np.isnan(float(estimate.lyapunov_exponent))


def test_invalid_policy_arguments():
    with pytest.raises(ValueError, match="`max_growth` must be greater than 1"):
        suggest_num_micro_steps(1.0, 0.01, max_num_micro_steps=10, max_growth=1.0)
    with pytest.raises(ValueError, match="`max_num_micro_steps` must be at least 1"):
        suggest_num_micro_steps(1.0, 0.01, max_num_micro_steps=0)
    with pytest.raises(ValueError, match="`lyapunov_exponent` must not be NaN"):
        suggest_num_micro_steps(float("nan"), 0.01, max_num_micro_steps=10)
    with pytest.raises(ValueError, match="`dt` must be positive"):
        suggest_num_micro_steps(1.0, 0.0, max_num_micro_steps=10)
    # Under `jax.jit` equinox reports the traced check through XLA's runtime error.
    with pytest.raises(jax.errors.JaxRuntimeError, match="must not be NaN"):
        jax.jit(lambda e: suggest_num_micro_steps(e, 0.01, max_num_micro_steps=10))(
            jnp.array(jnp.nan)
        )
    with pytest.raises(ValueError, match="`window_length` must be positive"):
        is_predictable(1.0, -1.0)
