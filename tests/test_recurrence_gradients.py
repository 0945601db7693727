import jax
import jax.numpy as jnp
import numpy as np
import pytest

import diffrax_parallel as dp

from .helpers import max_relative_error
from .problems import gru_problem, scan_reference, tanh_rnn_problem


SOLVERS = [dp.DEER(), dp.QuasiDEER(rtol=1e-12, atol=1e-12)]
ADJOINTS = [
    dp.ImplicitScanAdjoint(method="dense"),
    dp.ImplicitScanAdjoint(method="matrix_free"),
]


def _loss(step_fn, xs, solver, adjoint):
    def loss(args, y0):
        if solver is None:
            ys = scan_reference(step_fn, y0, xs, args)
        else:
            ys = dp.solve_recurrence(
                step_fn, y0, xs, args, solver=solver, adjoint=adjoint
            ).ys
        weights = jnp.arange(ys.shape[0], dtype=ys.dtype)[:, None]
        return jnp.sum(jnp.sin(ys) * weights)

    return loss


@pytest.mark.parametrize("adjoint", ADJOINTS, ids=["dense", "matrix_free"])
@pytest.mark.parametrize("solver", SOLVERS, ids=["DEER", "QuasiDEER"])
def test_gradients_match_sequential_scan(solver, adjoint):
    step_fn, y0, xs, args = gru_problem(400)
    grad = jax.jit(jax.grad(_loss(step_fn, xs, solver, adjoint), argnums=(0, 1)))
    expected = jax.grad(_loss(step_fn, xs, None, None), argnums=(0, 1))(args, y0)
    assert max_relative_error(grad(args, y0), expected) < 1e-8


@pytest.mark.parametrize("solver", SOLVERS, ids=["DEER", "QuasiDEER"])
def test_vmap_of_grad_and_grad_of_vmap(solver):
    step_fn, y0, xs, args = tanh_rnn_problem(200)
    y0s = jnp.stack([y0, y0 + 0.3, y0 - 0.2])
    parallel = _loss(step_fn, xs, solver, dp.ImplicitScanAdjoint())
    sequential = _loss(step_fn, xs, None, None)

    vmap_of_grad = jax.vmap(jax.grad(parallel, argnums=(0, 1)), in_axes=(None, 0))
    expected = jax.vmap(jax.grad(sequential, argnums=(0, 1)), in_axes=(None, 0))
    assert max_relative_error(vmap_of_grad(args, y0s), expected(args, y0s)) < 1e-8

    def batch_loss(loss):
        return lambda args, y0s: jnp.sum(jax.vmap(loss, in_axes=(None, 0))(args, y0s))

    grad_of_vmap = jax.grad(batch_loss(parallel), argnums=(0, 1))(args, y0s)
    expected = jax.grad(batch_loss(sequential), argnums=(0, 1))(args, y0s)
    assert max_relative_error(grad_of_vmap, expected) < 1e-8


@pytest.mark.parametrize("solver", SOLVERS, ids=["DEER", "QuasiDEER"])
def test_jvp_matches_sequential_scan(solver):
    step_fn, y0, xs, args = tanh_rnn_problem(200)
    tangents = jax.tree.map(
        lambda a: jnp.cos(jnp.arange(a.size, dtype=a.dtype)).reshape(a.shape), args
    )
    y0_tangent = jnp.linspace(-1.0, 1.0, y0.size)
    parallel = _loss(step_fn, xs, solver, dp.ImplicitScanAdjoint())
    sequential = _loss(step_fn, xs, None, None)
    _, jvp = jax.jvp(parallel, (args, y0), (tangents, y0_tangent))
    _, expected = jax.jvp(sequential, (args, y0), (tangents, y0_tangent))
    assert max_relative_error(jvp, expected) < 1e-8


def _largest_array(jaxpr) -> int:
    """The largest number of elements of any value in a jaxpr, sub-jaxprs included."""
    largest = 0
    for eqn in jaxpr.eqns:
        for var in list(eqn.outvars) + list(eqn.invars):
            shape = getattr(getattr(var, "aval", None), "shape", ())
            largest = max(largest, int(np.prod(shape)))
        for param in eqn.params.values():
            for sub in param if isinstance(param, (tuple, list)) else (param,):
                if isinstance(sub, jax.extend.core.ClosedJaxpr):
                    largest = max(largest, _largest_array(sub.jaxpr))
                elif isinstance(sub, jax.extend.core.Jaxpr):
                    largest = max(largest, _largest_array(sub))
    return largest


@pytest.mark.parametrize("solver", SOLVERS, ids=["DEER", "QuasiDEER"])
def test_no_dense_matrix_at_long_horizon(solver):
    num_steps, size = 100_000, 4
    step_fn, y0, xs, args = tanh_rnn_problem(num_steps, size=size)
    loss = _loss(step_fn, xs, solver, dp.ImplicitScanAdjoint())
    forward = jax.make_jaxpr(loss)(args, y0)
    backward = jax.make_jaxpr(jax.grad(loss, argnums=(0, 1)))(args, y0)
    # Dense blocks take T d^2 numbers and the colouring 2 d tangents of T d each; a
    # dense (T d) x (T d) matrix would take 1.6e11.
    bound = 2 * num_steps * size * size
    assert _largest_array(forward.jaxpr) <= bound
    assert _largest_array(backward.jaxpr) <= bound


def test_matrix_free_adjoint_keeps_memory_linear_in_state_size():
    num_steps, size = 1000, 64
    step_fn, y0, xs, args = tanh_rnn_problem(num_steps, size=size)
    adjoint = dp.ImplicitScanAdjoint(method="matrix_free")
    loss = _loss(step_fn, xs, dp.QuasiDEER(), adjoint)
    backward = jax.make_jaxpr(jax.grad(loss, argnums=(0, 1)))(args, y0)
    # No (T, d, d) array: the largest values are (T, d) trajectories and d x d weights.
    assert _largest_array(backward.jaxpr) < num_steps * size * size
