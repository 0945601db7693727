"""Training neural ODEs with `ParallelNewtonSolver`: gradients, memory and warm starts.

The reference is a sequential `diffrax.diffeqsolve` with the same base solver on the
same micro-grid: `K` micro-steps per window of length `dt0` give the constant step
`dt0 / K`. Gradients cross windows with diffrax's default adjoint
(`RecursiveCheckpointAdjoint`) and the root find of each window with
`ImplicitScanAdjoint`.
"""

import functools

import diffrax as dfx
import equinox as eqx
import jax
import jax.numpy as jnp
import jax.random as jr
import numpy as np
import optimistix as optx
import pytest

import diffrax_parallel as dp

from .helpers import max_relative_error
from .test_recurrence_gradients import _largest_array


NUM_WINDOWS = 3
NUM_MICRO_STEPS = 8
WINDOW_LENGTH = 0.25
BATCH_SIZE = 3
WIDTH = 16

ROOT_FINDERS = {
    "DEER": dp.DEER,
    "QuasiDEER": dp.QuasiDEER,
    "ELK": dp.ELK,
}
# Relative tolerance of the gradient against the sequential solve, per dtype.
GRADIENT_RTOL = {"float64": 1e-8, "float32": 1e-4}


def _cast(tree, dtype):
    """Cast every floating-point array of a PyTree (an MLP, say) to `dtype`."""
    return jax.tree.map(
        lambda x: x.astype(dtype) if eqx.is_inexact_array(x) else x, tree
    )


def _mlp(size: int, dtype, key=jr.key(0)) -> eqx.nn.MLP:
    mlp = eqx.nn.MLP(size, size, WIDTH, 2, activation=jnp.tanh, key=key)
    return _cast(mlp, dtype)


def _vector_field(t, y, mlp):
    return mlp(y)


def _solve(mlp, y0, solver, dt0, saveat=None, t1=NUM_WINDOWS * WINDOW_LENGTH):
    """Solve `y' = mlp(y)` from 0 to `t1` with a constant step `dt0`."""
    dtype = y0.dtype
    if saveat is None:
        saveat = dfx.SaveAt(ts=jnp.linspace(0.0, t1, 7, dtype=dtype))
    return dfx.diffeqsolve(
        dfx.ODETerm(_vector_field),
        solver,
        # Times of the state's dtype: float64 times would promote a float32 state.
        t0=jnp.asarray(0.0, dtype=dtype),
        t1=jnp.asarray(t1, dtype=dtype),
        dt0=jnp.asarray(dt0, dtype=dtype),
        y0=y0,
        args=mlp,
        saveat=saveat,
        stepsize_controller=dfx.ConstantStepSize(),
        max_steps=256,
    )


def _batch_loss(mlp, y0s, solver, dt0):
    """Mean squared state at the saved times, over a vmapped batch of initial states."""
    ys = jax.vmap(lambda y0: _solve(mlp, y0, solver, dt0).ys)(y0s)
    return jnp.mean(ys**2)


_value_and_grad = eqx.filter_jit(eqx.filter_value_and_grad(_batch_loss))


def _problem(size: int, dtype_name: str):
    dtype = jnp.dtype(dtype_name)
    mlp = _mlp(size, dtype)
    y0s = jr.normal(jr.key(1), (BATCH_SIZE, size), dtype=dtype)
    return mlp, y0s


@functools.cache
def _sequential_gradient(size: int, dtype_name: str):
    mlp, y0s = _problem(size, dtype_name)
    step = WINDOW_LENGTH / NUM_MICRO_STEPS
    value, grad = _value_and_grad(mlp, y0s, dfx.Heun(), step)
    return float(value), eqx.filter(grad, eqx.is_inexact_array)


def _gradient_cases():
    # Every root finder, state size and dtype. The default run keeps two cheap cases
    # (both dtypes); `pytest -m slow` runs the others.
    fast = {
        ("QuasiDEER", 16, "float32"),
        ("ELK", 2, "float64"),
    }
    cases = []
    for name in ROOT_FINDERS:
        for size in (2, 16, 64):
            for dtype_name in ("float64", "float32"):
                key = (name, size, dtype_name)
                marks = () if key in fast else (pytest.mark.slow,)
                cases.append(
                    pytest.param(*key, marks=marks, id="-".join(map(str, key)))
                )
    return cases


# ---- Gradients against the sequential solve -------------------------------------------


@pytest.mark.parametrize("root_finder_name, size, dtype_name", _gradient_cases())
def test_mlp_gradient_matches_sequential(root_finder_name, size, dtype_name):
    mlp, y0s = _problem(size, dtype_name)
    solver = dp.ParallelNewtonSolver(
        dfx.Heun(),
        num_micro_steps=NUM_MICRO_STEPS,
        root_finder=ROOT_FINDERS[root_finder_name](),
    )
    value, grad = _value_and_grad(mlp, y0s, solver, WINDOW_LENGTH)
    grad = eqx.filter(grad, eqx.is_inexact_array)
    expected_value, expected_grad = _sequential_gradient(size, dtype_name)

    leaves = jax.tree.leaves(grad)
    assert all(leaf.dtype == jnp.dtype(dtype_name) for leaf in leaves)
    assert all(bool(jnp.all(jnp.isfinite(leaf))) for leaf in leaves)
    # A zero gradient would match a zero reference: make sure there is signal.
    assert max(float(jnp.max(jnp.abs(leaf))) for leaf in leaves) > 1e-3
    rtol = GRADIENT_RTOL[dtype_name]
    assert abs(float(value) - expected_value) <= rtol * abs(expected_value)
    assert max_relative_error(grad, expected_grad) < rtol


@pytest.mark.slow
def test_mlp_gradient_matches_finite_differences():
    # An independent check of the reference itself, along one random direction of the
    # parameters, in float64.
    mlp, y0s = _problem(2, "float64")
    solver = dp.ParallelNewtonSolver(dfx.Heun(), num_micro_steps=NUM_MICRO_STEPS)
    _, grad = _value_and_grad(mlp, y0s, solver, WINDOW_LENGTH)
    params, static = eqx.partition(mlp, eqx.is_inexact_array)
    leaves, treedef = jax.tree.flatten(params)
    keys = jr.split(jr.key(2), len(leaves))
    direction = jax.tree.unflatten(
        treedef, [jr.normal(k, x.shape, x.dtype) for k, x in zip(keys, leaves)]
    )
    loss = eqx.filter_jit(_batch_loss)

    def shifted(scale):
        moved = jax.tree.map(lambda p, v: p + scale * v, params, direction)
        return float(loss(eqx.combine(moved, static), y0s, solver, WINDOW_LENGTH))

    eps = 1e-5
    finite_difference = (shifted(eps) - shifted(-eps)) / (2 * eps)
    grad_params = eqx.filter(grad, eqx.is_inexact_array)
    directional = sum(
        float(jnp.vdot(g, v))
        for g, v in zip(jax.tree.leaves(grad_params), jax.tree.leaves(direction))
    )
    assert abs(directional - finite_difference) < 1e-6 * max(1.0, abs(directional))


# ---- Memory of the backward pass --------------------------------------------------------


MEMORY_SIZE = 64
MEMORY_NUM_STEPS = 2000


def _gradient_jaxpr(solver, num_windows: int, size: int = MEMORY_SIZE):
    """The jaxpr of the gradient of a loss over `num_windows` windows, with `jax.grad`."""
    mlp = _mlp(size, jnp.float64)
    params, static = eqx.partition(mlp, eqx.is_inexact_array)
    y0 = jnp.linspace(-1.0, 1.0, size)
    t1 = float(num_windows)

    def loss(params):
        sol = dfx.diffeqsolve(
            dfx.ODETerm(_vector_field),
            solver,
            t0=0.0,
            t1=t1,
            dt0=1.0,
            y0=y0,
            args=eqx.combine(params, static),
            stepsize_controller=dfx.ConstantStepSize(),
            max_steps=num_windows,
        )
        return jnp.sum(sol.ys**2)

    return jax.make_jaxpr(jax.grad(loss))(params).jaxpr


@pytest.mark.parametrize("num_windows", [1, 4])
def test_backward_has_no_dense_blocks_at_large_state(num_windows):
    # d = 64 > 32, so the default adjoint takes the matrix-free path. QuasiDEER keeps
    # the forward pass free of dense Jacobians too, so any (K, d, d) value would come
    # from the adjoint.
    num_micro_steps = MEMORY_NUM_STEPS // num_windows
    dense_blocks = num_micro_steps * MEMORY_SIZE * MEMORY_SIZE

    def solver(adjoint):
        return dp.ParallelNewtonSolver(
            dfx.Tsit5(),
            num_micro_steps=num_micro_steps,
            root_finder=dp.QuasiDEER(),
            adjoint=adjoint,
        )

    default = _largest_array(_gradient_jaxpr(solver(None), num_windows))
    dense = _largest_array(
        _gradient_jaxpr(solver(dp.ImplicitScanAdjoint(method="dense")), num_windows)
    )
    assert default < dense_blocks
    assert dense >= dense_blocks


@pytest.mark.parametrize("num_windows", [1, 4])
def test_default_configuration_has_no_dense_blocks(num_windows):
    # The default solver at d = 64 > 32: QuasiDEER in the forward pass and the
    # matrix-free adjoint. No value of the gradient program may hold (K, d, d) numbers;
    # DEER, which recovers dense blocks, does.
    num_micro_steps = MEMORY_NUM_STEPS // num_windows
    dense_blocks = num_micro_steps * MEMORY_SIZE * MEMORY_SIZE
    default = dp.ParallelNewtonSolver(dfx.Tsit5(), num_micro_steps=num_micro_steps)
    deer = dp.ParallelNewtonSolver(
        dfx.Tsit5(), num_micro_steps=num_micro_steps, root_finder=dp.DEER()
    )
    assert _largest_array(_gradient_jaxpr(default, num_windows)) < dense_blocks
    assert _largest_array(_gradient_jaxpr(deer, num_windows)) >= dense_blocks


def test_default_memory_independent_of_num_windows():
    # DEER with windows of 500 micro-steps at d = 64 recovers the Jacobian blocks of
    # one window at a time (d tangents through every Tsit5 stage: 7 K d^2 numbers), and
    # the checkpointed loop over windows recomputes them in the backward pass. Nothing
    # may keep values for all windows at once: the largest value must not grow with
    # the number of windows.
    num_micro_steps = MEMORY_NUM_STEPS // 4
    solver = dp.ParallelNewtonSolver(
        dfx.Tsit5(), num_micro_steps=num_micro_steps, root_finder=dp.DEER()
    )
    four = _largest_array(_gradient_jaxpr(solver, num_windows=4))
    eight = _largest_array(_gradient_jaxpr(solver, num_windows=8))
    assert four == eight
    assert four <= 7 * num_micro_steps * MEMORY_SIZE * MEMORY_SIZE


def _count_equations(jaxpr) -> int:
    """The number of equations of a jaxpr, sub-jaxprs included."""
    count = len(jaxpr.eqns)
    for eqn in jaxpr.eqns:
        for param in eqn.params.values():
            for sub in param if isinstance(param, (tuple, list)) else (param,):
                if isinstance(sub, jax.extend.core.ClosedJaxpr):
                    count += _count_equations(sub.jaxpr)
                elif isinstance(sub, jax.extend.core.Jaxpr):
                    count += _count_equations(sub)
    return count


def test_gradient_memory_independent_of_newton_steps():
    # The implicit adjoint differentiates the root, not the Newton iterations, so the
    # gradient program is the same whatever the iteration limit. Differentiating
    # through the iterations stores iterates per step instead: with one checkpoint per
    # iteration its largest value grows with the limit, which the control checks.
    num_micro_steps = 200

    def jaxpr(max_newton_steps, adjoint=None):
        solver = dp.ParallelNewtonSolver(
            dfx.Tsit5(),
            num_micro_steps=num_micro_steps,
            root_finder=dp.QuasiDEER(),
            max_newton_steps=max_newton_steps,
            adjoint=adjoint,
        )
        return _gradient_jaxpr(solver, num_windows=2, size=4)

    few, many = jaxpr(4), jaxpr(400)
    assert _largest_array(few) == _largest_array(many)
    assert _count_equations(few) == _count_equations(many)

    through_iterations = [
        _largest_array(jaxpr(n, optx.RecursiveCheckpointAdjoint(checkpoints=n)))
        for n in (4, 400)
    ]
    assert through_iterations[1] > through_iterations[0]


# ---- Warm starts ----------------------------------------------------------------------


def test_warm_start_saves_newton_steps():
    size = 4
    mlp = _mlp(size, jnp.float64)
    y0 = jnp.linspace(-1.0, 1.0, size)
    saveat = dfx.SaveAt(
        ts=jnp.linspace(0.0, 8.0, 7),
        dense=True,
        solver_state=True,
    )
    solve = eqx.filter_jit(_solve)

    def solver(initial_guess=None):
        return dp.ParallelNewtonSolver(
            dfx.Tsit5(),
            num_micro_steps=64,
            initial_guess=initial_guess,
        )

    # One window of 64 micro-steps over [0, 8]: long enough that Newton's method
    # needs several steps from a constant guess (short windows converge in two steps
    # plus polishing, and a warm start cannot do better).
    window_length = 8.0
    first = solve(mlp, y0, solver(), window_length, saveat, 8.0)
    # A training step later: the parameters moved a little.
    perturbed = jax.tree.map(lambda x: x * 1.001 if eqx.is_inexact_array(x) else x, mlp)
    cold = solve(perturbed, y0, solver(), window_length, saveat, 8.0)
    warm = solve(
        perturbed, y0, solver(dp.window_states(first)), window_length, saveat, 8.0
    )

    cold_steps = int(cold.solver_state.num_newton_steps)
    warm_steps = int(warm.solver_state.num_newton_steps)
    assert warm_steps < cold_steps
    assert max_relative_error(warm.ys, cold.ys) < 1e-10
    # The warm start changed the trajectory it started from: the new parameters give
    # different states, so the test is not comparing two copies of the first solve.
    assert max_relative_error(first.ys, cold.ys) > 1e-6

    sequential = solve(perturbed, y0, dfx.Tsit5(), window_length / 64, None, 8.0)
    assert max_relative_error(warm.ys, sequential.ys) < 1e-10
    assert np.all(np.isfinite(np.asarray(warm.ys)))


def test_stale_warm_start_not_worse():
    # `y' = rate * (target - y)` reaches its equilibrium within the first of four
    # windows. From then on the constant guess (the window's initial state) is
    # exact, while the trajectory of the previous parameters sits at the previous
    # equilibrium. The solver must start each window from the better of the two.
    def vector_field(t, y, args):
        rate, target = args
        return rate * (target - y)

    saveat = dfx.SaveAt(ts=jnp.linspace(0.0, 40.0, 9), dense=True, solver_state=True)

    def solve(target, initial_guess=None):
        solver = dp.ParallelNewtonSolver(
            dfx.Tsit5(), num_micro_steps=100, initial_guess=initial_guess
        )
        return dfx.diffeqsolve(
            dfx.ODETerm(vector_field),
            solver,
            t0=0.0,
            t1=40.0,
            dt0=10.0,
            y0=jnp.zeros(3),
            args=(jnp.array(2.0), target),
            saveat=saveat,
            stepsize_controller=dfx.ConstantStepSize(),
            max_steps=4,
        )

    target = jnp.array([1.0, -0.5, 2.0])
    first = solve(target)
    # A training step later: the equilibrium moved.
    moved = target + 1e-3
    cold = solve(moved)
    warm = solve(moved, dp.window_states(first))

    cold_steps = int(cold.solver_state.num_newton_steps)
    warm_steps = int(warm.solver_state.num_newton_steps)
    assert warm_steps <= cold_steps
    assert max_relative_error(warm.ys, cold.ys) < 1e-12
    # Independent references: sequential Tsit5 on the same micro-grid, and the
    # closed form `target + (y0 - target) exp(-rate t)`.
    sequential = dfx.diffeqsolve(
        dfx.ODETerm(vector_field),
        dfx.Tsit5(),
        t0=0.0,
        t1=40.0,
        dt0=0.1,
        y0=jnp.zeros(3),
        args=(jnp.array(2.0), moved),
        saveat=dfx.SaveAt(ts=saveat.subs.ts),
        stepsize_controller=dfx.ConstantStepSize(),
        max_steps=400,
    )
    assert max_relative_error(warm.ys, sequential.ys) < 1e-12
    exact_ys = moved[None, :] * (1.0 - jnp.exp(-2.0 * saveat.subs.ts)[:, None])
    assert max_relative_error(warm.ys, exact_ys) < 1e-6
    # The guess of the last window is stale: it sits at the old equilibrium. (Started
    # from the guess instead of the better constant, the warm solve takes 8 Newton
    # steps against 6 cold.)
    stale = dp.window_states(first)[3]
    exact = jnp.broadcast_to(cold.ys[-1], stale.shape)
    assert float(jnp.max(jnp.abs(stale - exact))) > 1e-4
