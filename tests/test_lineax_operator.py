import jax
import jax.numpy as jnp
import jax.random as jr
import lineax as lx
import numpy as np
import pytest

import diffrax_parallel as dp
from diffrax_parallel._lineax import (
    recover_block_diagonals,
    recover_blocks,
    state_structure,
)

from .helpers import max_relative_error


def _random_bidiagonal_function(num_steps, size, *, unit_diagonal, seed=0):
    """A nonlinear function whose output `t` depends on inputs `t` and `t - 1`."""
    keys = jr.split(jr.key(seed), 3)
    weights = jr.normal(keys[0], (num_steps, size, size)) / np.sqrt(size)
    mixing = jr.normal(keys[1], (num_steps, size, size)) / np.sqrt(size)
    shift = jr.normal(keys[2], (size,))

    def fn(states):
        previous = jnp.concatenate([shift[None], states[:-1]])
        step = jnp.tanh(jnp.einsum("tij,tj->ti", weights, previous))
        if unit_diagonal:
            return states - step
        return jnp.sin(jnp.einsum("tij,tj->ti", mixing, states)) - step

    return fn


@pytest.mark.parametrize("unit_diagonal", [True, False])
@pytest.mark.parametrize("num_steps", [1, 2, 5, 8])
def test_colouring_matches_jacfwd(num_steps, unit_diagonal):
    size = 3
    fn = _random_bidiagonal_function(num_steps, size, unit_diagonal=unit_diagonal)
    states = jr.normal(jr.key(1), (num_steps, size))
    jacobian = jax.jacfwd(fn)(states)  # (T, d, T, d)
    _, mv = jax.linearize(fn, states)
    structure = state_structure(states)
    lower, diagonal = recover_blocks(mv, structure, unit_diagonal=unit_diagonal)
    for t in range(1, num_steps):
        assert jnp.allclose(lower[t - 1], jacobian[t, :, t - 1, :], atol=1e-13)
    expected_diagonal = jnp.stack([jacobian[t, :, t, :] for t in range(num_steps)])
    if unit_diagonal:
        assert diagonal is None
        assert jnp.allclose(expected_diagonal, jnp.eye(size)[None], atol=1e-13)
    else:
        assert jnp.allclose(diagonal, expected_diagonal, atol=1e-13)

    lower_diagonals, diagonal_diagonals = recover_block_diagonals(
        mv, structure, unit_diagonal=unit_diagonal
    )
    assert jnp.allclose(
        lower_diagonals, jnp.diagonal(lower, axis1=1, axis2=2), atol=1e-13
    )
    if not unit_diagonal:
        expected = jnp.diagonal(expected_diagonal, axis1=1, axis2=2)
        assert jnp.allclose(diagonal_diagonals, expected, atol=1e-13)


def test_colouring_of_transposed_operator():
    num_steps, size = 6, 2
    fn = _random_bidiagonal_function(num_steps, size, unit_diagonal=False)
    states = jr.normal(jr.key(2), (num_steps, size))
    operator = lx.JacobianLinearOperator(
        lambda y, _: fn(y), states, tags=dp.lower_block_bidiagonal_tag
    )
    transposed = operator.T
    assert dp.upper_block_bidiagonal_tag in transposed.tags
    vector = jr.normal(jr.key(3), (num_steps, size))
    matrix = operator.as_matrix()
    for op, dense in ((operator, matrix), (transposed, matrix.T)):
        for mode in ("associative", "sequential"):
            solution = lx.linear_solve(op, vector, dp.BlockBidiagonal(mode)).value
            reference = jnp.linalg.solve(dense, vector.reshape(-1)).reshape(
                vector.shape
            )
            assert max_relative_error(solution, reference) < 1e-10


def test_function_operator_with_pytree_states():
    num_steps = 4

    def fn(states):
        x, v = states["x"], states["v"]
        previous_x = jnp.concatenate([jnp.zeros((1, 2)), x[:-1]])
        previous_v = jnp.concatenate([jnp.zeros((1,)), v[:-1]])
        return {
            "x": x - jnp.tanh(previous_x + previous_v[:, None]),
            "v": v - jnp.sin(previous_x[:, 0] * previous_v),
        }

    states = {"x": jr.normal(jr.key(0), (num_steps, 2)), "v": jnp.ones(num_steps)}
    tags = frozenset({dp.lower_block_bidiagonal_tag, dp.unit_block_diagonal_tag})
    operator = lx.JacobianLinearOperator(lambda y, _: fn(y), states, tags=tags)
    vector = {"x": jnp.ones((num_steps, 2)), "v": jnp.arange(num_steps, dtype=float)}
    flat_vector, unflatten = jax.flatten_util.ravel_pytree(vector)
    reference = unflatten(jnp.linalg.solve(operator.as_matrix(), flat_vector))
    solution = lx.linear_solve(operator, vector, dp.BlockBidiagonal()).value
    assert max_relative_error(solution, reference) < 1e-12


def _queries(operator):
    return {
        "symmetric": lx.is_symmetric(operator),
        "diagonal": lx.is_diagonal(operator),
        "tridiagonal": lx.is_tridiagonal(operator),
        "unit_diagonal": lx.has_unit_diagonal(operator),
        "lower": lx.is_lower_triangular(operator),
        "upper": lx.is_upper_triangular(operator),
        "positive_semidefinite": lx.is_positive_semidefinite(operator),
        "negative_semidefinite": lx.is_negative_semidefinite(operator),
    }


def _operators():
    key_lower, key_diagonal = jr.split(jr.key(0))
    for num_steps in (1, 4):
        for size in (1, 3):
            lower_dense = jr.normal(key_lower, (num_steps - 1, size, size))
            lower_diagonal = jr.normal(key_lower, (num_steps - 1, size))
            diagonals = (
                None,
                jr.normal(key_diagonal, (num_steps, size)) + 3,
                jr.normal(key_diagonal, (num_steps, size, size)),
            )
            for lower in (lower_dense, lower_diagonal):
                for diagonal in diagonals:
                    operator = dp.BlockBidiagonalOperator(lower, diagonal)
                    yield operator
                    yield operator.T
    structure = {
        "a": jax.ShapeDtypeStruct((3, 2), jnp.float64),
        "b": jax.ShapeDtypeStruct((3,), jnp.float64),
    }
    operator = dp.BlockBidiagonalOperator(jnp.ones((2, 3)), None, structure)
    yield operator
    yield operator.T


@pytest.mark.parametrize("operator", list(_operators()))
def test_lineax_queries_are_true_of_matrix(operator):
    matrix = np.asarray(operator.as_matrix())
    answers = _queries(operator)
    if answers["symmetric"]:
        assert np.array_equal(matrix, matrix.T)
    if answers["diagonal"]:
        assert np.array_equal(matrix, np.diag(np.diag(matrix)))
    if answers["tridiagonal"]:
        assert np.array_equal(np.triu(matrix, 2), 0 * matrix)
        assert np.array_equal(np.tril(matrix, -2), 0 * matrix)
        diagonal, lower, upper = lx.tridiagonal(operator)
        assert np.array_equal(diagonal, np.diag(matrix))
        assert np.array_equal(lower, np.diag(matrix, -1))
        assert np.array_equal(upper, np.diag(matrix, 1))
    if answers["unit_diagonal"]:
        assert np.array_equal(np.diag(matrix), np.ones(matrix.shape[0]))
    if answers["lower"]:
        assert np.array_equal(matrix, np.tril(matrix))
    if answers["upper"]:
        assert np.array_equal(matrix, np.triu(matrix))
    if answers["positive_semidefinite"]:
        assert np.all(np.linalg.eigvalsh(matrix) >= 0)
    assert not answers["negative_semidefinite"]
    assert np.array_equal(lx.diagonal(operator), np.diag(matrix))
    assert lx.materialise(operator) is operator
    assert lx.linearise(operator) is operator
    conjugate = lx.conj(operator)
    assert np.array_equal(conjugate.as_matrix(), matrix)


@pytest.mark.parametrize("operator", list(_operators()))
def test_auto_linear_solver_gives_right_answer(operator):
    # A wrong structural answer makes `AutoLinearSolver` pick a solver that returns a
    # wrong solution; an incomplete registration raises.
    matrix = operator.as_matrix()
    vector = jax.tree.map(
        lambda s: jnp.linspace(1.0, 2.0, int(np.prod(s.shape))).reshape(s.shape),
        operator.in_structure(),
    )
    flat_vector, unflatten = jax.flatten_util.ravel_pytree(vector)
    reference = unflatten(jnp.linalg.solve(matrix, flat_vector))
    solution = lx.linear_solve(operator, vector, lx.AutoLinearSolver(well_posed=True))
    assert max_relative_error(solution.value, reference) < 1e-8
    ours = lx.linear_solve(operator, vector, dp.BlockBidiagonal()).value
    assert max_relative_error(ours, reference) < 1e-8


def test_auto_linear_solver_choices():
    lower = jnp.ones((4, 1))
    scalar_states = dp.BlockBidiagonalOperator(lower)
    assert isinstance(
        lx.AutoLinearSolver(well_posed=True).select_solver(scalar_states),
        lx.Tridiagonal,
    )
    identity_diagonal = dp.BlockBidiagonalOperator(jnp.ones((4, 2, 2)))
    assert isinstance(
        lx.AutoLinearSolver(well_posed=True).select_solver(identity_diagonal),
        lx.Triangular,
    )
    dense_diagonal = dp.BlockBidiagonalOperator(
        jnp.ones((4, 2, 2)), jnp.ones((5, 2, 2))
    )
    assert isinstance(
        lx.AutoLinearSolver(well_posed=True).select_solver(dense_diagonal), lx.LU
    )


def test_transpose_is_involution():
    operator = dp.BlockBidiagonalOperator(jnp.ones((3, 2, 2)), jnp.ones((4, 2)))
    assert operator.T.transposed
    assert not operator.T.T.transposed
    assert np.array_equal(operator.T.as_matrix(), operator.as_matrix().T)
