"""`solve_recurrence`: evaluate a recurrence `y_t = step_fn(y_{t-1}, x_t, args)` in parallel."""

from collections.abc import Callable
from typing import Any

import equinox as eqx
import jax
import jax.numpy as jnp
import jax.tree_util as jtu
import optimistix as optx
from jaxtyping import Array, Int, PyTree, Scalar

from .._lineax import lower_block_bidiagonal_tag, unit_block_diagonal_tag
from ._adjoint import ImplicitScanAdjoint
from ._newton import DEER
from ._results import promote_root_find_result, RESULTS


class RecurrenceSolution(eqx.Module):
    """The result of [`diffrax_parallel.solve_recurrence`][].

    **Attributes:**

    - `ys`: the states `y_1, ..., y_T`, stacked along a leading axis of length `T`
        (the layout of `jax.lax.scan`'s output).
    - `result`: a [`diffrax_parallel.RESULTS`][]; `RESULTS.successful` on success.
    - `num_newton_steps`: the number of iterations of the root finder.
    - `residual_size`: the final `norm(r / (atol + rtol |y|))`; below 1 on success.
    - `stats`: the statistics of the root finder (including `num_steps` and
        `max_steps`, and `num_rejected_steps` for trust-region methods).
    """

    ys: PyTree[Array]
    result: RESULTS
    num_newton_steps: Int[Array, ""]
    residual_size: Scalar
    stats: dict[str, Any]


def _stack_previous(y0: PyTree[Array], ys: PyTree[Array]) -> PyTree[Array]:
    """Returns `(y0, y_1, ..., y_{T-1})`: the state that each step reads."""
    return jtu.tree_map(
        lambda first, rest: jnp.concatenate([first[None], rest[:-1]]), y0, ys
    )


class _RecurrenceResidual(eqx.Module):
    step_fn: Callable

    def __call__(self, ys, problem):
        y0, xs, args = problem
        previous = _stack_previous(y0, ys)
        in_axes = (0, None if xs is None else 0, None)
        following = jax.vmap(self.step_fn, in_axes=in_axes)(previous, xs, args)
        return jtu.tree_map(jnp.subtract, ys, following)


def _num_steps_of(xs: PyTree | None, num_steps: int | None) -> int:
    if xs is None:
        if num_steps is None:
            raise ValueError(
                "Pass `xs` (per-step inputs) or `num_steps` (without inputs)."
            )
        return num_steps
    lengths = {jnp.shape(leaf)[0] for leaf in jtu.tree_leaves(xs)}
    if len(lengths) != 1:
        raise ValueError(
            "Every leaf of `xs` must have the same leading (time) length; got lengths "
            f"{sorted(lengths)}."
        )
    (length,) = lengths
    if num_steps is not None and num_steps != length:
        raise ValueError(
            f"`num_steps={num_steps}` does not match the length {length} of `xs`."
        )
    return length


@eqx.filter_jit
def solve_recurrence(
    step_fn: Callable[[PyTree, Any, PyTree], PyTree],
    y0: PyTree[Array],
    xs: PyTree[Array] | None = None,
    args: PyTree = None,
    *,
    num_steps: int | None = None,
    solver: optx.AbstractRootFinder | None = None,
    y_guess: PyTree[Array] | None = None,
    max_steps: int = 256,
    adjoint: optx.AbstractAdjoint = ImplicitScanAdjoint(),
    throw: bool = True,
) -> RecurrenceSolution:
    """Evaluates the recurrence `y_t = step_fn(y_{t-1}, x_t, args)` for all `t` at once.

    Equivalent to `jax.lax.scan(lambda y, x: (step_fn(y, x, args),) * 2, y0, xs)[1]`, but
    computed by a parallel root finder over the whole trajectory: the residuals
    `y_t - step_fn(y_{t-1}, x_t, args)` of all steps are driven to zero together, each
    iteration being one scan of depth O(log T) on a GPU.

    **Arguments:**

    - `step_fn`: the one-step map `(y, x, args) -> y_next` (an RNN cell, a discretised
        ODE step, a Markov kernel with its noise in `x`). `y_next` must have the
        structure of `y`.
    - `y0`: the initial state, a PyTree of floating-point arrays.
    - `xs`: per-step inputs with a leading axis of length `T`, or `None`.
    - `args`: any other arguments of `step_fn`, shared by all steps.
    - `num_steps`: the number of steps `T` when `xs` is `None`.
    - `solver`: the root finder; defaults to `DEER(recover_nonfinite=True)`, Newton's
        method that falls back to a clipped diagonal step when a Newton iterate
        overflows, so it converges without tuning where plain Newton fails.
    - `y_guess`: an initial guess for all states (a warm start, e.g. the trajectory of
        a previous training step); defaults to `y0` repeated `T` times.
    - `max_steps`: the maximum number of iterations of the root finder.
    - `adjoint`: how to differentiate; the default [`diffrax_parallel.ImplicitScanAdjoint`][]
        gives exact gradients by one reverse scan, whatever the forward solver.
    - `throw`: whether to raise on failure (non-convergence, non-finite iterate), or to
        return the failure in `result`.

    **Returns:**

    A [`diffrax_parallel.RecurrenceSolution`][].
    """
    length = _num_steps_of(xs, num_steps)
    if length < 1:
        raise ValueError(f"The recurrence needs at least one step; got {length}.")
    y0 = jtu.tree_map(jnp.asarray, y0)
    if solver is None:
        solver = DEER(recover_nonfinite=True)
    constant_guess = jtu.tree_map(
        lambda leaf: jnp.repeat(leaf[None], length, axis=0), y0
    )
    if y_guess is None:
        y_guess = constant_guess
    elif jax.eval_shape(lambda: y_guess) != jax.eval_shape(lambda: constant_guess):
        raise ValueError(
            "`y_guess` must be `y0` stacked `T` times (same structure, leading axis of "
            f"length {length}, same dtypes); got {jax.eval_shape(lambda: y_guess)}."
        )
    residual = _RecurrenceResidual(step_fn)
    in_axes = (0, None if xs is None else 0, None)
    out_struct = jax.eval_shape(jax.vmap(step_fn, in_axes=in_axes), y_guess, xs, args)
    if out_struct != jax.eval_shape(lambda: y_guess):
        raise ValueError(
            "`step_fn(y, x, args)` must return a state with the structure, shapes and "
            f"dtypes of `y0`; the stacked states are {jax.eval_shape(lambda: y_guess)} "
            f"but the stacked outputs are {out_struct}."
        )
    tags = frozenset({lower_block_bidiagonal_tag, unit_block_diagonal_tag})
    solution = optx.root_find(
        residual,
        solver,
        y_guess,
        (y0, xs, args),
        max_steps=max_steps,
        adjoint=adjoint,
        throw=False,
        tags=tags,
    )
    result = promote_root_find_result(solution.result)
    ys = solution.value
    if throw:
        ys = result.error_if(ys, result != RESULTS.successful)
    return RecurrenceSolution(
        ys=ys,
        result=result,
        num_newton_steps=solution.stats["num_steps"],
        residual_size=solution.stats["residual_size"],
        stats=solution.stats,
    )
