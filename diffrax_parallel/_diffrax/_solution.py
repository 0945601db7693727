"""Read micro-steps and Newton statistics from a `diffrax.Solution`."""

import diffrax as dfx
import jax
import jax.numpy as jnp
import jax.tree_util as jtu
from jaxtyping import Array, Int, PyTree, Real

from ._interpolation import micro_times, WindowInterpolationFactory


def _window_interpolation(sol: dfx.Solution) -> dfx.DenseInterpolation:
    interpolation = sol.interpolation
    if not isinstance(interpolation, dfx.DenseInterpolation) or not isinstance(
        interpolation.interpolation_cls, WindowInterpolationFactory
    ):
        raise ValueError(
            "This needs the dense output of a solve with ParallelNewtonSolver: pass "
            "`diffrax.diffeqsolve(..., solver=ParallelNewtonSolver(...), "
            "saveat=diffrax.SaveAt(dense=True))`."
        )
    return interpolation


def _window_mask(interpolation: dfx.DenseInterpolation) -> Array:
    """Return which of the `max_steps` dense-output slots contain a window."""
    max_steps = interpolation.ts.shape[0] - 1
    return jnp.arange(max_steps) < interpolation.ts_size - 1


def micro_steps(
    sol: dfx.Solution,
) -> tuple[Real[Array, " max_steps*K+1"], PyTree[Array]]:
    """Return the time and state at every micro-step of a parallel solve.

    `SaveAt(steps=True)` saves only window ends, because diffrax treats one window as
    one step. The micro-steps are stored in the dense output, so this needs
    `diffrax.diffeqsolve(..., saveat=diffrax.SaveAt(dense=True))`.

    **Arguments:**

    - `sol`: the solution returned by `diffrax.diffeqsolve` with a
        [`ParallelNewtonSolver`][] and `SaveAt(dense=True)`.

    **Returns:**

    A tuple `(ts, ys)`: `ts` has shape `(max_steps * num_micro_steps + 1,)` and starts
    at `t0`, and every leaf of `ys` has that leading axis. As with
    `SaveAt(steps=True)`, entries after the last micro-step are infinite.

    **Raises:**

    `ValueError` if `sol` has no dense output of a [`ParallelNewtonSolver`][].
    """
    interpolation = _window_interpolation(sol)
    window_ts = interpolation.ts
    ends = interpolation.infos["micro_infos"]["y1"]
    num_micro_steps = jtu.tree_leaves(ends)[0].shape[1]
    mask = _window_mask(interpolation)

    # Window ends are stored in the integration direction (`t * direction`), so the
    # times are rebuilt in that frame and mapped back afterwards.
    inner_ts = jax.vmap(lambda a, b: micro_times(a, b, num_micro_steps)[1:])(
        window_ts[:-1], window_ts[1:]
    )
    inner_ts = jnp.where(mask[:, None], inner_ts, jnp.inf)
    ts = jnp.concatenate([window_ts[:1], inner_ts.reshape(-1)])
    # Padding becomes `direction * inf`, as in diffrax's own `SaveAt` output.
    ts = ts * interpolation.direction

    def _flatten(y0, y1):
        mask_y = mask.reshape(mask.shape + (1,) * (y1.ndim - 1))
        y1 = jnp.where(mask_y, y1, jnp.inf)
        return jnp.concatenate([y0[None], y1.reshape((-1,) + y1.shape[2:])])

    ys = jtu.tree_map(_flatten, interpolation.y0_if_trivial, ends)
    return ts, ys


def num_newton_steps_per_window(sol: dfx.Solution) -> Int[Array, " max_steps"]:
    """Return the number of Newton steps of every accepted window.

    **Arguments:**

    - `sol`: the solution returned by `diffrax.diffeqsolve` with a
        [`ParallelNewtonSolver`][] and `SaveAt(dense=True)`.

    **Returns:**

    An integer array of shape `(max_steps,)`. Entry `i` belongs to the `i`-th window.
    Entries after the last window are zero, so the sum is the total over accepted
    windows. (The total is also `sol.solver_state.num_newton_steps` with
    `SaveAt(solver_state=True)`.)

    **Raises:**

    `ValueError` if `sol` has no dense output of a [`ParallelNewtonSolver`][].
    """
    interpolation = _window_interpolation(sol)
    counts = interpolation.infos["num_newton_steps"]
    counts = jnp.where(_window_mask(interpolation), counts, 0)
    return counts.astype(jnp.int32)


def window_states(sol: dfx.Solution) -> PyTree[Array]:
    """Return the state at every micro-step, grouped by window: a warm start.

    Pass the result as `ParallelNewtonSolver(..., initial_guess=window_states(sol))` to
    start the next solve (for example the next training step, whose parameters differ a
    little) from this trajectory, which saves Newton steps.

    **Arguments:**

    - `sol`: the solution returned by `diffrax.diffeqsolve` with a
        [`ParallelNewtonSolver`][] and `SaveAt(dense=True)`.

    **Returns:**

    The states, with leaves of shape `(max_steps, num_micro_steps, ...)`: entry
    `[i, k]` is the end of micro-step `k` of window `i`. Entries after the last window
    are infinite.

    **Raises:**

    `ValueError` if `sol` has no dense output of a [`ParallelNewtonSolver`][].
    """
    interpolation = _window_interpolation(sol)
    ends = interpolation.infos["micro_infos"]["y1"]
    mask = _window_mask(interpolation)

    def _mask(y1):
        return jnp.where(mask.reshape(mask.shape + (1,) * (y1.ndim - 1)), y1, jnp.inf)

    return jtu.tree_map(_mask, ends)


def lyapunov_exponent_per_window(sol: dfx.Solution) -> Real[Array, " max_steps"]:
    """Return the estimated largest Lyapunov exponent (per unit time) of every window.

    Needs `ParallelNewtonSolver(..., estimate_lyapunov=True)` and
    `diffrax.SaveAt(dense=True)`. Positive values mark windows over which perturbations
    grow; when `exp(λ H)` is large for a window of length `H`, Newton needs many
    iterations there, and shorter windows help.

    **Returns:**

    An array of shape `(max_steps,)`; entries after the last window are NaN.

    **Raises:**

    `ValueError` if `sol` has no such dense output.
    """
    interpolation = _window_interpolation(sol)
    if "lyapunov_exponent" not in interpolation.infos:
        raise ValueError(
            "The solve did not estimate Lyapunov exponents: pass "
            "`ParallelNewtonSolver(..., estimate_lyapunov=True)`."
        )
    values = interpolation.infos["lyapunov_exponent"]
    return jnp.where(_window_mask(interpolation), values, jnp.nan)
