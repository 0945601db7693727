import functools as ft

import equinox as eqx
import jax
import jax.numpy as jnp
import jax.random as jr
import lineax as lx
import numpy as np
import pytest

import diffrax_parallel as dp

from .helpers import max_relative_error


def _blocks(num_steps, size, diagonal_kind, lower_kind, seed=0):
    """Random, well-conditioned blocks in float64."""
    key_lower, key_diagonal = jr.split(jr.key(seed))
    if lower_kind == "dense":
        lower = 0.9 * jr.normal(key_lower, (num_steps - 1, size, size)) / np.sqrt(size)
    else:
        lower = jr.uniform(key_lower, (num_steps - 1, size), minval=-1.2, maxval=1.2)
    if diagonal_kind == "identity":
        diagonal = None
    elif diagonal_kind == "dense":
        noise = 0.3 * jr.normal(key_diagonal, (num_steps, size, size)) / np.sqrt(size)
        diagonal = jnp.eye(size)[None] + noise
    else:
        diagonal = jr.uniform(key_diagonal, (num_steps, size), minval=0.8, maxval=1.5)
    return lower, diagonal


@ft.cache
def _dense_reference(num_steps, size, diagonal_kind, lower_kind):
    """Dense float64 solutions of the operator and its transpose."""
    lower, diagonal = _blocks(num_steps, size, diagonal_kind, lower_kind)
    operator = dp.BlockBidiagonalOperator(lower, diagonal)
    vector = jr.normal(jr.key(1), (num_steps, size))
    matrix = operator.as_matrix()
    flat = jnp.reshape(vector, (-1,))
    forward = jnp.linalg.solve(matrix, flat).reshape(num_steps, size)
    transposed = jnp.linalg.solve(matrix.T, flat).reshape(num_steps, size)
    return lower, diagonal, vector, forward, transposed


@eqx.filter_jit
def _solve_all(lower, diagonal, vector):
    operator = dp.BlockBidiagonalOperator(lower, diagonal)
    out = {}
    for mode in ("associative", "sequential"):
        solver = dp.BlockBidiagonal(mode)
        for name, op in (("forward", operator), ("transposed", operator.T)):
            out[mode, name] = lx.linear_solve(op, vector, solver).value
    return out


def _grid():
    # The dense reference at T = 1000, d = 8 is an 8000 x 8000 LU: slow on two cores.
    for num_steps in (1, 2, 3, 7, 64, 1000):
        for size in (1, 3, 8):
            marks = [pytest.mark.slow] if num_steps * size >= 8000 else []
            yield pytest.param(num_steps, size, marks=marks)


@pytest.mark.parametrize("dtype", [jnp.float64, jnp.float32])
@pytest.mark.parametrize("diagonal_kind", ["identity", "dense", "diagonal"])
@pytest.mark.parametrize("num_steps, size", list(_grid()))
def test_solve_matches_dense_solve(num_steps, size, diagonal_kind, dtype):
    lower, diagonal, vector, forward, transposed = _dense_reference(
        num_steps, size, diagonal_kind, "dense"
    )
    cast = lambda x: None if x is None else x.astype(dtype)
    solutions = _solve_all(cast(lower), cast(diagonal), cast(vector))
    tolerance = 1e-10 if dtype == jnp.float64 else 1e-4
    for (mode, name), solution in solutions.items():
        assert solution.dtype == dtype, (mode, name)
        reference = forward if name == "forward" else transposed
        error = max_relative_error(solution, reference)
        assert error < tolerance, (mode, name, error)


@pytest.mark.parametrize("diagonal_kind", ["identity", "dense", "diagonal"])
@pytest.mark.parametrize("num_steps", [1, 2, 7, 300])
def test_solve_with_diagonal_lower_blocks(num_steps, diagonal_kind):
    lower, diagonal, vector, forward, transposed = _dense_reference(
        num_steps, 3, diagonal_kind, "diagonal"
    )
    solutions = _solve_all(lower, diagonal, vector)
    for (mode, name), solution in solutions.items():
        reference = forward if name == "forward" else transposed
        assert max_relative_error(solution, reference) < 1e-10, (mode, name)


def test_diagonal_blocks_stay_diagonal():
    # Diagonal blocks must not be expanded to d x d matrices anywhere in the solve.
    lower, diagonal = _blocks(100, 50, "diagonal", "diagonal")
    operator = dp.BlockBidiagonalOperator(lower, diagonal)
    vector = jnp.ones((100, 50))
    jaxpr = jax.make_jaxpr(
        lambda op, v: lx.linear_solve(op, v, dp.BlockBidiagonal("associative")).value
    )(operator, vector)
    largest = max(
        (np.prod(var.aval.shape) for eqn in jaxpr.eqns for var in eqn.outvars),
        default=0,
    )
    assert largest <= 100 * 50


def test_pytree_states():
    num_steps = 5
    structure = {
        "position": jax.ShapeDtypeStruct((num_steps, 2), jnp.float64),
        "speed": jax.ShapeDtypeStruct((num_steps,), jnp.float64),
    }
    lower, diagonal = _blocks(num_steps, 3, "dense", "dense", seed=3)
    operator = dp.BlockBidiagonalOperator(lower, diagonal, structure)
    vector = {
        "position": jr.normal(jr.key(4), (num_steps, 2)),
        "speed": jr.normal(jr.key(5), (num_steps,)),
    }
    flat_vector, unflatten = jax.flatten_util.ravel_pytree(vector)
    for op in (operator, operator.T):
        matrix = op.as_matrix()
        assert matrix.shape == (3 * num_steps, 3 * num_steps)
        # `as_matrix` must agree with `mv` in lineax's flat (leaf-by-leaf) order.
        mv = jax.flatten_util.ravel_pytree(op.mv(vector))[0]
        assert jnp.allclose(matrix @ flat_vector, mv, rtol=1e-12, atol=1e-12)
        reference = unflatten(jnp.linalg.solve(matrix, flat_vector))
        for mode in ("associative", "sequential"):
            solution = lx.linear_solve(op, vector, dp.BlockBidiagonal(mode)).value
            assert max_relative_error(solution, reference) < 1e-12


def test_vmap_over_vector_and_operator():
    lower, diagonal = _blocks(20, 3, "dense", "dense")
    vectors = jr.normal(jr.key(2), (4, 20, 3))
    solver = dp.BlockBidiagonal("associative")
    operator = dp.BlockBidiagonalOperator(lower, diagonal)

    solve = lambda op, v: lx.linear_solve(op, v, solver).value
    batched = jax.vmap(solve, in_axes=(None, 0))(operator, vectors)
    matrix = operator.as_matrix()
    for i in range(4):
        reference = jnp.linalg.solve(matrix, vectors[i].reshape(-1)).reshape(20, 3)
        assert max_relative_error(batched[i], reference) < 1e-12

    lowers = jnp.stack([lower, 0.5 * lower, -lower])
    operators = jax.vmap(lambda low: dp.BlockBidiagonalOperator(low, diagonal))(lowers)
    batched = jax.vmap(solve, in_axes=(0, None))(operators, vectors[0])
    for i in range(3):
        matrix = dp.BlockBidiagonalOperator(lowers[i], diagonal).as_matrix()
        reference = jnp.linalg.solve(matrix, vectors[0].reshape(-1)).reshape(20, 3)
        assert max_relative_error(batched[i], reference) < 1e-12


def test_jit_does_not_retrace():
    solver = dp.BlockBidiagonal("sequential")

    @jax.jit
    @eqx.debug.assert_max_traces(max_traces=1)
    def solve(lower, vector):
        return lx.linear_solve(dp.BlockBidiagonalOperator(lower), vector, solver).value

    lower, _ = _blocks(10, 2, "identity", "dense")
    solve(lower, jnp.ones((10, 2)))
    solve(2 * lower, jnp.zeros((10, 2)))


@pytest.mark.parametrize("diagonal_kind", ["identity", "dense", "diagonal"])
@pytest.mark.parametrize("mode", ["associative", "sequential"])
def test_jvp_and_grad_match_dense_solve(diagonal_kind, mode):
    lower, diagonal, vector, _, _ = _dense_reference(6, 3, diagonal_kind, "dense")
    solver = dp.BlockBidiagonal(mode)

    def scan_solve(lower, diagonal, vector):
        operator = dp.BlockBidiagonalOperator(lower, diagonal)
        return lx.linear_solve(operator, vector, solver).value

    def dense_solve(lower, diagonal, vector):
        matrix = dp.BlockBidiagonalOperator(lower, diagonal).as_matrix()
        return jnp.linalg.solve(matrix, vector.reshape(-1)).reshape(vector.shape)

    tangents = jax.tree.map(
        lambda x: jr.normal(jr.key(7), x.shape), (lower, diagonal, vector)
    )
    _, jvp = jax.jvp(scan_solve, (lower, diagonal, vector), tangents)
    _, jvp_reference = jax.jvp(dense_solve, (lower, diagonal, vector), tangents)
    assert max_relative_error(jvp, jvp_reference) < 1e-10

    loss = lambda solve: lambda *a: jnp.sum(jnp.sin(solve(*a)))
    argnums = (0, 2) if diagonal is None else (0, 1, 2)
    grads = jax.grad(loss(scan_solve), argnums)(lower, diagonal, vector)
    grads_reference = jax.grad(loss(dense_solve), argnums)(lower, diagonal, vector)
    assert max_relative_error(grads, grads_reference) < 1e-10


def test_nonfinite_solution_is_reported():
    lower = jnp.full((4, 2, 2), jnp.nan)
    operator = dp.BlockBidiagonalOperator(lower)
    solver = dp.BlockBidiagonal("associative")
    solution = lx.linear_solve(operator, jnp.ones((5, 2)), solver, throw=False)
    assert solution.result == lx.RESULTS.singular
    with pytest.raises(Exception, match="non-finite"):
        lx.linear_solve(operator, jnp.ones((5, 2)), solver, throw=True)
    vector = jnp.ones((5, 2)).at[2, 0].set(jnp.inf)
    solution = lx.linear_solve(
        dp.BlockBidiagonalOperator(jnp.zeros((4, 2))), vector, solver, throw=False
    )
    assert solution.result == lx.RESULTS.nonfinite_input


def test_affine_recurrence_reverse_matches_loop():
    transitions = jr.normal(jr.key(0), (9, 2, 2))
    offsets = jr.normal(jr.key(1), (10, 2))
    expected = [offsets[-1]]
    for t in range(8, -1, -1):
        expected.insert(0, transitions[t] @ expected[0] + offsets[t])
    for mode in ("associative", "sequential"):
        states = dp.affine_recurrence(transitions, offsets, mode=mode, reverse=True)
        assert max_relative_error(states, jnp.stack(expected)) < 1e-12


def test_invalid_inputs_raise():
    with pytest.raises(ValueError, match="mode"):
        dp.BlockBidiagonal("parallel")  # pyright: ignore[reportArgumentType]
    with pytest.raises(ValueError, match="lower_blocks"):
        dp.BlockBidiagonalOperator(jnp.zeros((3,)))
    with pytest.raises(ValueError, match="diagonal_blocks"):
        dp.BlockBidiagonalOperator(jnp.zeros((3, 2, 2)), jnp.ones((3, 2)))
    with pytest.raises(ValueError, match="same dtype"):
        dp.BlockBidiagonalOperator(
            jnp.zeros((3, 2)), jnp.ones((4, 2), dtype=jnp.float32)
        )
    with pytest.raises(ValueError, match="structure"):
        dp.BlockBidiagonalOperator(
            jnp.zeros((3, 2)), structure=jax.ShapeDtypeStruct((4, 3), jnp.float64)
        )
    with pytest.raises(ValueError, match="transitions"):
        dp.affine_recurrence(jnp.zeros((3, 2)), jnp.zeros((3, 2)))
    untagged = lx.MatrixLinearOperator(jnp.eye(4))
    with pytest.raises(ValueError, match="tagged"):
        lx.linear_solve(untagged, jnp.ones(4), dp.BlockBidiagonal())
