"""Diagnostics computed from the result of a parallel solve."""

from collections.abc import Callable
from typing import Any

import equinox as eqx
from jaxtyping import Array, ArrayLike, PRNGKeyArray, PyTree

from ._lyapunov import estimate_lyapunov_exponent, LyapunovEstimate
from ._optimistix import RecurrenceSolution, RESULTS


_UNSUCCESSFUL = (
    "`solution` is not a successful solve, so its `ys` are not the trajectory of the "
    "recurrence and their Lyapunov exponent would be meaningless. Solve again until "
    "`solution.result` is `RESULTS.successful`, or estimate the exponent on a "
    "sequential trajectory with `estimate_lyapunov_exponent`."
)


def _check_successful(solution: RecurrenceSolution) -> PyTree[Array]:
    """Return `solution.ys`, raising if `solution.result` is not successful."""
    result = solution.result
    if result.is_traced():
        # Under `jax.jit` the result is only known at run time, so the error is raised
        # there. Its message cannot include the solver's, which `solution.result` has.
        return eqx.error_if(solution.ys, result != RESULTS.successful, _UNSUCCESSFUL)
    if result != RESULTS.successful:
        raise ValueError(f"{_UNSUCCESSFUL} The solver reported: {RESULTS[result]}")
    return solution.ys


def estimate_lyapunov_exponent_from_solution(
    step_fn: Callable[[PyTree[Array], Any, Any], PyTree[Array]],
    y0: PyTree[ArrayLike],
    solution: RecurrenceSolution,
    xs: PyTree[Array] | None = None,
    args: Any = None,
    *,
    num_vectors: int = 4,
    num_transient: int = 0,
    dt: ArrayLike | None = None,
    key: PRNGKeyArray | None = None,
    throw: bool = True,
) -> LyapunovEstimate:
    """Estimate the largest Lyapunov exponent along the trajectory of a parallel solve.

    Takes the `step_fn`, `y0`, `xs` and `args` that were passed to
    `diffrax_parallel.solve_recurrence`, and the `RecurrenceSolution` it returned, and
    runs `estimate_lyapunov_exponent` on `solution.ys`. The estimate costs one
    sequential pass of Jacobian-vector products. Below zero (predictable dynamics),
    Newton-type solvers can converge in a few iterations whatever the length, although
    close to zero the count can still grow with it. A positive exponent (chaotic
    dynamics) makes the count grow with the length unless the windows are shorter than
    about one Lyapunov time `1/λ` (see `suggest_num_micro_steps`).

    **Arguments:**

    - `step_fn`: the one-step map `step_fn(y, x, args) -> y_next`.
    - `y0`: the initial state.
    - `solution`: the result of `solve_recurrence` on the same `step_fn`, `y0`, `xs`
        and `args`. It must be successful: a solution whose `result` is not
        `RESULTS.successful` raises an error, a `ValueError` when called outside
        `jax.jit` and an `equinox` runtime error inside it.
    - `xs`: the per-step inputs with a leading axis of length `T`, or None.
    - `args`: passed unchanged to every call of `step_fn`.
    - `num_vectors`, `num_transient`, `dt`, `key`, `throw`: as for
        `estimate_lyapunov_exponent`. Without `dt` the exponent is per step.

    **Returns:**

    A `LyapunovEstimate`, as returned by `estimate_lyapunov_exponent`.
    """
    if not isinstance(solution, RecurrenceSolution):
        raise TypeError(
            "`solution` must be the `RecurrenceSolution` returned by "
            f"`solve_recurrence`, got {type(solution).__name__}. To estimate the "
            "exponent along a trajectory array, call `estimate_lyapunov_exponent`."
        )
    ys = _check_successful(solution)
    return estimate_lyapunov_exponent(
        step_fn,
        y0,
        ys,
        args,
        xs=xs,
        num_vectors=num_vectors,
        num_transient=num_transient,
        dt=dt,
        key=key,
        throw=throw,
    )
