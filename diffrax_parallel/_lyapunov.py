"""Largest Lyapunov exponent of a one-step map, and the window lengths it allows.

Parallel Newton methods solve all `T` steps of `s_t = f_t(s_{t-1})` at once. Their
linear systems are governed by products of the step Jacobians
`A_t = ∂f_t/∂s (s_{t-1})`, whose growth rate is the largest Lyapunov exponent (LLE)
`λ`. For `λ < 0` (contracting, predictable dynamics) Newton converges in a few
iterations whatever `T`. For `λ > 0` (chaotic dynamics) a perturbation grows like
`exp(λ T)` over the horizon, the iteration count approaches `T`, and only windows
shorter than about one Lyapunov time `1/λ` keep Newton fast.

The estimate is power iteration along the trajectory. Starting from random unit vectors
`v`, each step computes `w = A_t v`, records `log ||w||` and renormalises
`v = w / ||w||`. The mean of the recorded logarithms converges to `λ` per step.
Renormalising at every step keeps the vectors finite however fast the products grow or
decay.
"""

import math
from collections.abc import Callable
from typing import Any

import equinox as eqx
import jax
import jax.numpy as jnp
import jax.random as jr
import jax.tree_util as jtu
import numpy as np
from jax import lax
from jax.flatten_util import ravel_pytree
from jaxtyping import Array, ArrayLike, Bool, Float, Int, PRNGKeyArray, PyTree


# Default bound on the predicted growth `exp(λ K dt)` of a perturbation over a window
# of `K` steps. Measured with dense Newton (DEER, exact block solves) on Lorenz-63
# (σ=10, ρ=28, β=8/3; RK4, dt=0.01, float64; λ = 0.906), started from a constant
# initial guess at 40 points on the attractor. Windows with growth 1.7 (0.6 time units)
# converged at every start in 6-13 iterations. Windows with growth 2.0 (0.77 time
# units) diverged at 10 of the 40 starts, and growth 2.5 (1 time unit) at 12 of 20.
# From a guess within 1e-3 of the solution, growth 1.4e3 (8 time units) still converged
# in 3-5 iterations. The default keeps a margin below the cold-start limit.
# NOTE: measured on Lorenz-63 only. How far the first Newton iterates stray, and so the
# usable growth, depends on the dynamics and on the initial guess.
_DEFAULT_MAX_GROWTH = 1.5


class LyapunovEstimate(eqx.Module):
    """An estimate of the largest Lyapunov exponent along a trajectory.

    Each tangent vector gives its own estimate: the mean of its per-step log growths
    over the steps after the transient, divided by the step size when one is given. The
    reported exponent is the maximum over the vectors. The estimate of a vector started
    at `v` is `(1/T) log ||A_T ⋯ A_1 v||`. That is at most `(1/T) log ||A_T ⋯ A_1||`,
    and falls short of it by about `(1/T) log` of the component of `v` along the
    most-amplified direction. The maximum therefore suffers least from an unlucky start,
    and it errs towards the larger growth, the safe side when choosing window lengths.

    **Fields:**

    - `lyapunov_exponent`: the largest Lyapunov exponent, per step, or per unit time
        when a step size `dt` was given. `-inf` when, for every tangent vector, some
        step's Jacobian maps it to zero.
    - `lyapunov_exponent_per_vector`: the estimate of each tangent vector, in the same
        unit.
    - `per_step_log_growth`: `log ||A_t v_{t-1}||` for every step `t` and vector, the
        transient included, as a natural logarithm per step (never divided by `dt`).
    """

    lyapunov_exponent: Float[Array, ""]
    lyapunov_exponent_per_vector: Float[Array, " num_vectors"]
    per_step_log_growth: Float[Array, "num_steps num_vectors"]


# --------------------------------------------------------------------------------------
# Input checks
# --------------------------------------------------------------------------------------


def _check_count(name: str, value: Any, minimum: int) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        raise TypeError(
            f"`{name}` must be a Python int, got {value!r} of type "
            f"{type(value).__name__}."
        )
    if value < minimum:
        raise ValueError(f"`{name}` must be at least {minimum}, got {value}.")


def _check_num_transient(num_transient: Any, num_steps: int) -> None:
    _check_count("num_transient", num_transient, 0)
    if num_transient >= num_steps:
        raise ValueError(
            f"`num_transient={num_transient}` discards all {num_steps} steps. Pass a "
            f"value below {num_steps} or a longer trajectory."
        )


def _check_real_floating(name: str, dtype: Any) -> None:
    if not jnp.issubdtype(dtype, jnp.floating):
        raise TypeError(
            f"`{name}` must have a real floating-point dtype, got {dtype}. Convert it "
            "with `.astype(float)`. Complex states are not supported."
        )


def _is_python_scalar(value: Any) -> bool:
    return isinstance(value, (int, float, np.integer, np.floating)) and not isinstance(
        value, bool
    )


def _check_positive(name: str, value: Any) -> Array:
    """Return `value` as an array, raising if it is not positive everywhere."""
    if _is_python_scalar(value) and not value > 0:
        raise ValueError(f"`{name}` must be positive, got {value}.")
    value = jnp.asarray(value)
    if jnp.iscomplexobj(value):
        raise TypeError(f"`{name}` must be real, got dtype {value.dtype}.")
    return eqx.error_if(
        value,
        ~jnp.all(value > 0),
        f"`{name}` must be positive everywhere. For integration backwards in time, "
        "pass its absolute value.",
    )


def _step_sizes(
    dt: ArrayLike | None, num_steps: int, dtype: Any
) -> Float[Array, " num_steps"] | None:
    """Return the step sizes as a `(num_steps,)` array, or None when `dt` is None."""
    if dt is None:
        return None
    dt = _check_positive("dt", dt)
    if dt.shape not in ((), (num_steps,)):
        raise ValueError(
            f"`dt` must be a scalar or have shape ({num_steps},), one step size per "
            f"step, got shape {dt.shape}."
        )
    return jnp.broadcast_to(dt.astype(dtype), (num_steps,))


# --------------------------------------------------------------------------------------
# Power iteration
# --------------------------------------------------------------------------------------


def _random_unit_vectors(
    key: PRNGKeyArray | None, num_vectors: int, size: int, dtype: Any
) -> Float[Array, "num_vectors size"]:
    key = jr.key(0) if key is None else key
    vectors = jr.normal(key, (num_vectors, size), dtype)
    return vectors / jnp.linalg.norm(vectors, axis=1, keepdims=True)


def _power_iteration(
    apply_jacobian: Callable[[Array, Any], Array],
    vectors: Float[Array, "num_vectors size"],
    inputs: PyTree[Array],
) -> Float[Array, "num_steps num_vectors"]:
    """Compute `log ||A_t v_{t-1}||` per step and vector, renormalising every step.

    `apply_jacobian(vectors, input_t)` returns `A_t` applied to each row of `vectors`,
    and `inputs` is scanned over its leading axis.
    """

    def step(vectors, input_t):
        images = apply_jacobian(vectors, input_t)
        norms = jnp.linalg.norm(images, axis=1)
        # A singular `A_t` can map a vector exactly to zero. Its growth is then
        # log 0 = -inf, and the old vector is kept so that later steps stay finite.
        nonzero = norms > 0
        safe_norms = jnp.where(nonzero, norms, 1)
        vectors = jnp.where(nonzero[:, None], images / safe_norms[:, None], vectors)
        return vectors, jnp.log(norms)

    _, log_growth = lax.scan(step, vectors, inputs)
    return log_growth


def _summarise(
    log_growth: Float[Array, "num_steps num_vectors"],
    num_transient: int,
    dt: Float[Array, " num_steps"] | None,
    throw: bool,
) -> LyapunovEstimate:
    """Average the log growths after the transient and take the maximum over vectors."""
    total = jnp.sum(log_growth[num_transient:], axis=0)
    if dt is None:
        per_vector = total / (log_growth.shape[0] - num_transient)
    else:
        per_vector = total / jnp.sum(dt[num_transient:])
    estimate = LyapunovEstimate(
        lyapunov_exponent=jnp.max(per_vector),
        lyapunov_exponent_per_vector=per_vector,
        per_step_log_growth=log_growth,
    )
    if throw:
        # -inf is a valid log growth (a vector mapped to zero). NaN and +inf are not,
        # because they come from non-finite states or an overflowing product.
        invalid = jnp.any(jnp.isnan(log_growth) | (log_growth == jnp.inf))
        estimate = eqx.error_if(
            estimate,
            invalid,
            "The Lyapunov exponent estimate is not finite because a Jacobian-vector "
            "product along the trajectory is NaN or overflowed. Check the trajectory "
            "and the per-step inputs for non-finite values, or pass `throw=False` to "
            "get the NaN estimate.",
        )
    return estimate


# --------------------------------------------------------------------------------------
# Public estimators
# --------------------------------------------------------------------------------------


def _leading_length(name: str, tree: PyTree[Array]) -> int:
    """Return the common leading length of the leaves of `tree`."""
    leaves = jtu.tree_leaves(tree)
    if not leaves:
        raise ValueError(f"`{name}` must contain at least one array, got {tree!r}.")
    if any(jnp.ndim(leaf) == 0 for leaf in leaves):
        raise ValueError(
            f"Every leaf of `{name}` must have a leading (time) axis, got a scalar "
            "leaf."
        )
    lengths = {jnp.shape(leaf)[0] for leaf in leaves}
    if len(lengths) != 1:
        raise ValueError(
            f"Every leaf of `{name}` must have the same leading (time) axis, got "
            f"leading lengths {sorted(lengths)}."
        )
    (length,) = lengths
    return length


def _check_trajectory(
    fn: Callable,
    y0: PyTree[Array],
    ys: PyTree[Array],
    xs: PyTree[Array] | None,
    args: Any,
) -> int:
    """Check the shapes of `y0`, `ys`, `xs` and the output of `fn`, and return `T`."""
    if jtu.tree_structure(ys) != jtu.tree_structure(y0):
        raise ValueError(
            "`ys` must have the PyTree structure of `y0` with a leading time axis, got "
            f"{jtu.tree_structure(ys)} and {jtu.tree_structure(y0)}."
        )
    num_steps = _leading_length("ys", ys)
    if num_steps == 0:
        raise ValueError(
            "`ys` must contain at least one step, got a time axis of length 0."
        )
    for y0_leaf, ys_leaf in zip(jtu.tree_leaves(y0), jtu.tree_leaves(ys)):
        if jnp.shape(ys_leaf)[1:] != jnp.shape(y0_leaf) or jnp.result_type(
            ys_leaf
        ) != jnp.result_type(y0_leaf):
            raise ValueError(
                "Each leaf of `ys` must be the matching leaf of `y0` stacked along a "
                f"leading time axis: got shape {jnp.shape(ys_leaf)} and dtype "
                f"{jnp.result_type(ys_leaf)} for a leaf of `y0` with shape "
                f"{jnp.shape(y0_leaf)} and dtype {jnp.result_type(y0_leaf)}."
            )
    x0 = None
    if xs is not None:
        num_inputs = _leading_length("xs", xs)
        if num_inputs != num_steps:
            raise ValueError(
                f"`xs` must have one input per step: its leading axis has length "
                f"{num_inputs} but `ys` has {num_steps} steps."
            )
        x0 = jtu.tree_map(lambda x: jax.ShapeDtypeStruct(x.shape[1:], x.dtype), xs)
    y0_shape = jax.eval_shape(lambda: y0)
    out_shape = jax.eval_shape(lambda y, x: fn(y, x, args), y0_shape, x0)
    out_leaves, out_structure = jtu.tree_flatten(out_shape)
    if out_structure != jtu.tree_structure(y0_shape) or any(
        (out.shape, out.dtype) != (y.shape, y.dtype)
        for out, y in zip(out_leaves, jtu.tree_leaves(y0_shape))
    ):
        raise ValueError(
            "`fn(y, x, args)` must return a state with the structure, shapes and "
            f"dtypes of `y0`: got {out_shape} for `y0` of {y0_shape}."
        )
    return num_steps


@eqx.filter_jit
def estimate_lyapunov_exponent(
    fn: Callable[[PyTree[Array], Any, Any], PyTree[Array]],
    y0: PyTree[ArrayLike],
    ys: PyTree[Array],
    args: Any = None,
    *,
    xs: PyTree[Array] | None = None,
    num_vectors: int = 4,
    num_transient: int = 0,
    dt: ArrayLike | None = None,
    key: PRNGKeyArray | None = None,
    throw: bool = True,
) -> LyapunovEstimate:
    """Estimate the largest Lyapunov exponent of a one-step map along a trajectory.

    The trajectory follows the convention of `jax.lax.scan`: for `t = 0, ..., T-1`,

        ys[t] = fn(ys[t-1], xs[t], args),   with ys[-1] meaning y0,

    so `ys` contains the `T` states after each step and not `y0`. The Jacobian of step
    `t` is taken at the state it reads: `y0` for `t = 0`, then `ys[t-1]`. The values of
    the last state `ys[T-1]` are not used. Only Jacobian-vector products of `fn` are
    evaluated (one `jax.linearize` per step, applied to `num_vectors` tangent vectors),
    and no Jacobian is materialised. The scan over time is sequential.

    The function is compiled with `equinox.filter_jit`. Python numbers among its
    arguments (such as a float `dt`) are static, so each new value compiles again.

    **Arguments:**

    - `fn`: the one-step map `fn(y, x, args) -> y_next`, where `y` has the structure of
        `y0` and `x` is the per-step input `xs[t]` (None when `xs` is None). An RNN cell
        `cell(y, x)` is passed as `lambda y, x, args: cell(y, x)`. A time-dependent map,
        such as one step of an ODE solver, takes its step's times through `xs`, e.g.
        `xs=(ts[:-1], ts[1:])`.
    - `y0`: the initial state, a PyTree of real floating-point arrays.
    - `ys`: the trajectory, a PyTree like `y0` with a leading time axis of length `T`.
    - `args`: passed unchanged to every call of `fn`.
    - `xs`: per-step inputs, a PyTree whose leaves have leading axis `T`, or None.
    - `num_vectors`: the number of random tangent vectors.
    - `num_transient`: the number of initial steps left out of the average. The vectors
        need some steps to align with the most-amplified direction. Without this burn-in
        the error of the estimate decays like `1/T`. With it, the error also decays
        exponentially in `num_transient`, at the rate of the gap between the two
        largest exponents.
    - `dt`: the step size, a scalar or one per step with shape `(T,)`. When given, the
        result is a rate per unit time: the summed log growth divided by the summed step
        sizes over the same steps. When None, the result is per step.
    - `key`: the random key for the initial tangent vectors, or None for a fixed key.
    - `throw`: whether to raise an error when a log growth is NaN or `+inf`
        (non-finite states, or an overflowing Jacobian-vector product). With
        `throw=False` the result contains the NaN instead.

    **Returns:**

    A `LyapunovEstimate`. Its `lyapunov_exponent` is the maximum over the tangent
    vectors of their estimates (see `LyapunovEstimate` for why the maximum).
    """
    y0 = jtu.tree_map(jnp.asarray, y0)
    _check_count("num_vectors", num_vectors, 1)
    for leaf in jtu.tree_leaves(y0):
        _check_real_floating("y0", leaf.dtype)
    num_steps = _check_trajectory(fn, y0, ys, xs, args)
    _check_num_transient(num_transient, num_steps)
    flat_y0, unravel = ravel_pytree(y0)
    if flat_y0.size == 0:
        raise ValueError("`y0` must contain at least one element, got an empty state.")
    step_sizes = _step_sizes(dt, num_steps, flat_y0.dtype)

    # The state each step reads: y0, then ys[0], ..., ys[T-2], as a (T, state) array.
    flat_ys = jax.vmap(lambda y: ravel_pytree(y)[0])(ys)
    linearisation_points = jnp.concatenate([flat_y0[None], flat_ys[:-1]], axis=0)

    def flat_fn(flat_y, x):
        return ravel_pytree(fn(unravel(flat_y), x, args))[0]

    def apply_jacobian(vectors, point_and_input):
        point, x = point_and_input
        _, jvp_fn = jax.linearize(lambda flat_y: flat_fn(flat_y, x), point)
        return jax.vmap(jvp_fn)(vectors)

    vectors = _random_unit_vectors(key, num_vectors, flat_y0.size, flat_y0.dtype)
    log_growth = _power_iteration(apply_jacobian, vectors, (linearisation_points, xs))
    return _summarise(log_growth, num_transient, step_sizes, throw)


@eqx.filter_jit
def estimate_lyapunov_exponent_from_jacobians(
    jacobians: Float[Array, "num_steps state state"] | Float[Array, "num_steps state"],
    *,
    num_vectors: int = 4,
    num_transient: int = 0,
    dt: ArrayLike | None = None,
    key: PRNGKeyArray | None = None,
    throw: bool = True,
) -> LyapunovEstimate:
    """Estimate the largest Lyapunov exponent from the Jacobians of the steps.

    `jacobians[t]` is `A_t`, the Jacobian of step `t` at the state it reads (the same
    convention as `estimate_lyapunov_exponent`), either dense with shape `(T, d, d)` or
    diagonal with shape `(T, d)`, as a quasi-Newton method stores it.

    For dense Jacobians the estimate is the power iteration of
    `estimate_lyapunov_exponent` with `num_vectors` random unit vectors. For diagonal
    Jacobians it is exact: the coordinate axes are invariant, so the tangent vectors are
    the `d` axes, the exponent of component `j` is the mean of `log |A_t[j]|`, and the
    result is the largest of them. `num_vectors` and `key` are then not used.

    **Arguments:**

    - `jacobians`: real floating-point array of shape `(T, d, d)` or `(T, d)`.
    - `num_vectors`, `num_transient`, `dt`, `key`, `throw`: as for
        `estimate_lyapunov_exponent`.

    **Returns:**

    A `LyapunovEstimate`. For diagonal Jacobians its per-vector fields have one entry
    per component (length `d`).
    """
    # NOTE: a lineax operator (such as the block-bidiagonal Newton operator) is not
    # accepted yet; pass its stacked blocks.
    jacobians = jnp.asarray(jacobians)
    _check_count("num_vectors", num_vectors, 1)
    _check_real_floating("jacobians", jacobians.dtype)
    if jacobians.ndim not in (2, 3) or (
        jacobians.ndim == 3 and jacobians.shape[1] != jacobians.shape[2]
    ):
        raise ValueError(
            "`jacobians` must have shape (T, d, d) for dense Jacobians or (T, d) for "
            f"diagonal ones, got shape {jacobians.shape}."
        )
    num_steps, size = jacobians.shape[:2]
    if num_steps == 0 or size == 0:
        raise ValueError(
            f"`jacobians` must have at least one step and one component, got shape "
            f"{jacobians.shape}."
        )
    _check_num_transient(num_transient, num_steps)
    step_sizes = _step_sizes(dt, num_steps, jacobians.dtype)

    if jacobians.ndim == 2:
        log_growth = jnp.log(jnp.abs(jacobians))
    else:

        def apply_jacobian(vectors, jacobian):
            # HIGHEST precision: on GPUs the default TF32 matmul would perturb the
            # growths at the 1e-3 level in float32.
            return jnp.einsum(
                "ij,mj->mi", jacobian, vectors, precision=lax.Precision.HIGHEST
            )

        vectors = _random_unit_vectors(key, num_vectors, size, jacobians.dtype)
        log_growth = _power_iteration(apply_jacobian, vectors, jacobians)
    return _summarise(log_growth, num_transient, step_sizes, throw)


# --------------------------------------------------------------------------------------
# Window-length policy
# --------------------------------------------------------------------------------------


def _as_float(name: str, value: Any) -> Array:
    if _is_python_scalar(value) and math.isnan(value):
        raise ValueError(f"`{name}` must not be NaN.")
    value = jnp.asarray(value, dtype=float)
    return eqx.error_if(value, jnp.isnan(value), f"`{name}` must not be NaN.")


def _log_max_growth(max_growth: Any) -> Array:
    if _is_python_scalar(max_growth) and not max_growth > 1:
        raise ValueError(
            "`max_growth` must be greater than 1, because a growth of 1 allows no "
            f"step at all. Got {max_growth}."
        )
    max_growth = _as_float("max_growth", max_growth)
    max_growth = eqx.error_if(
        max_growth, ~jnp.all(max_growth > 1), "`max_growth` must be greater than 1."
    )
    return jnp.log(max_growth)


def suggest_num_micro_steps(
    lyapunov_exponent: ArrayLike,
    dt: ArrayLike,
    *,
    max_num_micro_steps: int,
    max_growth: ArrayLike = _DEFAULT_MAX_GROWTH,
) -> Int[Array, "..."] | int:
    """Choose the number of steps per window from the largest Lyapunov exponent.

    A perturbation of the start of a window of `K` steps of size `dt` grows by about
    `exp(λ K dt)` by its end, and so do the errors that Newton's linearised steps must
    correct. This returns the largest `K` with `exp(λ K dt) <= max_growth`, that is
    `floor(log(max_growth) / (λ dt))`, clipped to `[1, max_num_micro_steps]`. When
    `λ <= 0` perturbations do not grow and `max_num_micro_steps` is returned.

    The default `max_growth = 1.5` limits a window to about 0.4 Lyapunov times
    (`λ K dt <= log 1.5`). It comes from dense Newton (DEER) on Lorenz-63 (RK4,
    dt=0.01, `λ = 0.906`) started from a constant initial guess at 40 points on the
    attractor. Windows of growth 1.7 converged in 6-13 iterations at every start, and
    windows of growth 2.0 diverged at a quarter of them. The first iterate from a
    constant guess follows the linearisation at the initial state, which on Lorenz-63
    can grow much faster than `λ` (up to about 8 per time unit at those starts). From a
    guess within 1e-3 of the solution, growth 1.4e3 still converged in 3-5 iterations,
    so a solver with a good initial guess can pass a much larger `max_growth`.

    Works on Python numbers and on JAX arrays, including traced values under `jax.jit`.

    **Arguments:**

    - `lyapunov_exponent`: `λ`, per unit time (e.g. `LyapunovEstimate.lyapunov_exponent`
        computed with `dt`), or per step with `dt=1`.
    - `dt`: the step size, positive.
    - `max_num_micro_steps`: the upper bound on `K`, returned for non-positive `λ`. It
        comes from memory and the horizon, which the exponent does not determine.
    - `max_growth`: the bound on `exp(λ K dt)`, greater than 1.

    **Returns:**

    `K`, a Python int when `lyapunov_exponent`, `dt` and `max_growth` are Python or
    NumPy scalars, otherwise an integer JAX array of their broadcast shape.
    """
    _check_count("max_num_micro_steps", max_num_micro_steps, 1)
    python_inputs = all(
        _is_python_scalar(value) for value in (lyapunov_exponent, dt, max_growth)
    )
    log_max_growth = _log_max_growth(max_growth)
    exponent = _as_float("lyapunov_exponent", lyapunov_exponent)
    dt = _as_float("dt", _check_positive("dt", dt))

    # `log_growth_per_step` is λ dt, the predicted log growth of one step.
    log_growth_per_step = exponent * dt
    grows = log_growth_per_step > 0
    safe_log_growth = jnp.where(grows, log_growth_per_step, 1)
    # Clip while still floating point, because a tiny positive λ dt gives a quotient too
    # large for an integer.
    num_steps = jnp.clip(
        jnp.floor(log_max_growth / safe_log_growth), 1, max_num_micro_steps
    )
    num_steps = jnp.where(grows, num_steps, max_num_micro_steps).astype(int)
    return int(num_steps) if python_inputs else num_steps


def is_predictable(
    lyapunov_exponent: ArrayLike,
    window_length: ArrayLike,
    *,
    max_growth: ArrayLike = _DEFAULT_MAX_GROWTH,
) -> Bool[Array, "..."] | bool:
    """Predict whether Newton converges in a few iterations on a window.

    True when the predicted growth of a perturbation over the window,
    `exp(lyapunov_exponent * window_length)`, is at most `max_growth`, and so always
    True when the exponent is not positive. Above the threshold the iteration count
    grows with the window, towards one iteration per step. A shorter window (see
    `suggest_num_micro_steps`, which uses the same threshold) or a trust-region method
    is then needed. The default threshold and its measurement are described in
    `suggest_num_micro_steps`.

    **Arguments:**

    - `lyapunov_exponent`: `λ`, per unit time (or per step).
    - `window_length`: the length of the window in the same time unit (or in steps),
        positive.
    - `max_growth`: the bound on the predicted growth, greater than 1.

    **Returns:**

    A Python bool when all inputs are Python or NumPy scalars, otherwise a boolean JAX
    array of their broadcast shape.
    """
    python_inputs = all(
        _is_python_scalar(value)
        for value in (lyapunov_exponent, window_length, max_growth)
    )
    log_max_growth = _log_max_growth(max_growth)
    exponent = _as_float("lyapunov_exponent", lyapunov_exponent)
    window_length = _as_float(
        "window_length", _check_positive("window_length", window_length)
    )
    predictable = exponent * window_length <= log_max_growth
    return bool(predictable) if python_inputs else predictable
