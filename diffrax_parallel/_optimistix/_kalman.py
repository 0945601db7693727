"""Levenberg–Marquardt steps of a linearised recurrence as Kalman smoothers.

At a Newton iterate `y = (y_1, ..., y_T)` of a recurrence, the linearisation
`x_t = A_t x_{t-1} + b_t` and a damping `lam >= 0` define the Levenberg–Marquardt
problem

    minimise over x:  sum_t ½ ||x_t - A_t x_{t-1} - b_t||^2
                      + (lam / 2) sum_t ||x_t - y_t||^2

with `x_0 = 0`. This is the negative log joint density of the linear-Gaussian
state-space model `x_t ~ N(A_t x_{t-1} + b_t, I)`, `y_t ~ N(x_t, I / lam)`, so its
minimiser is the posterior mean of `x` given `y`: a Kalman filter followed by a
Rauch–Tung–Striebel smoother. Both run here either sequentially (`lax.scan`) or in
O(log T) depth with `lax.associative_scan`, using the temporal parallelisation of

    S. Särkkä and Á. F. García-Fernández, "Temporal parallelization of Bayesian
    smoothers", IEEE Transactions on Automatic Control 66(1), 2021.

Every formula is written for the model of this problem (identity observation matrix,
unit process noise, observation precision `lam * I`) in a form that stays finite at
`lam = 0`, where the observations carry no information, so that case needs no branch.
"""

from typing import Literal, TypeAlias

import equinox as eqx
import jax
import jax.lax as lax
import jax.numpy as jnp
import jax.scipy.linalg as jsl
from jaxtyping import Array, ArrayLike, Float


SmootherMode: TypeAlias = Literal["associative", "sequential"]
_HIGHEST = lax.Precision.HIGHEST


# --------------------------------------------------------------------------------------
# Small linear-algebra helpers. All matrices below are single `(d, d)` blocks: the
# batched versions come from `jax.vmap`.
# --------------------------------------------------------------------------------------


def _matmul(a: Array, b: Array) -> Array:
    # HIGHEST precision, because float32 matmuls on recent NVIDIA GPUs default to TF32,
    # which keeps 10 of the 23 mantissa bits.
    return jnp.matmul(a, b, precision=_HIGHEST)


def _symmetrise(a: Array) -> Array:
    return 0.5 * (a + a.T)


def _spd_solve(matrix: Array, rhs: Array) -> Array:
    """Solves `matrix @ x = rhs` for a symmetric positive definite `matrix`."""
    factor = jsl.cho_factor(matrix, lower=True)
    return jsl.cho_solve(factor, rhs)


def _damping_weights(lam: Array) -> tuple[Array, Array]:
    # With unit process noise and observation precision `lam`, conditioning a state on
    # its observation averages prior mean and observation with weights 1/(1+lam) and
    # lam/(1+lam).
    prior_weight = 1 / (1 + lam)
    return prior_weight, lam * prior_weight


# --------------------------------------------------------------------------------------
# Smoothing gains, shared by both modes.
#
# The Rauch–Tung–Striebel step is the affine map `x_t = E_t x_{t+1} + g_t` from the
# smoothed mean at t+1 to the smoothed mean at t, with filtered mean m_t, covariance P_t
# and the next transition (A_{t+1}, b_{t+1}):
#     E_t = P_t A_{t+1}^T (A_{t+1} P_t A_{t+1}^T + I)^{-1}
#     g_t = m_t - E_t (A_{t+1} m_t + b_{t+1}).
# With (A_{T+1}, b_{T+1}) = (0, 0) this gives E_T = 0 and g_T = m_T, the last step.
# --------------------------------------------------------------------------------------


def _smoothing_gain_dense(
    mean: Array, covariance: Array, next_transition: Array, next_offset: Array
) -> tuple[Array, Array]:
    identity = jnp.eye(mean.shape[0], dtype=mean.dtype)
    transition_covariance = _matmul(next_transition, covariance)
    predicted = _symmetrise(
        _matmul(transition_covariance, next_transition.T) + identity
    )
    # E^T = (A P A^T + I)^{-1} A P, because P and A P A^T + I are symmetric.
    gain = _spd_solve(predicted, transition_covariance).T
    offset = mean - _matmul(gain, _matmul(next_transition, mean) + next_offset)
    return gain, offset


def _smoothing_gain_diagonal(
    mean: Array, variance: Array, next_transition: Array, next_offset: Array
) -> tuple[Array, Array]:
    gain = variance * next_transition / (next_transition**2 * variance + 1)
    offset = mean - gain * (next_transition * mean + next_offset)
    return gain, offset


def _next_steps(transitions: Array, offsets: Array) -> tuple[Array, Array]:
    """Shifts `(A_t, b_t)` to `(A_{t+1}, b_{t+1})`, with zeros after the last step."""
    next_transitions = jnp.concatenate(
        [transitions[1:], jnp.zeros_like(transitions[:1])]
    )
    next_offsets = jnp.concatenate([offsets[1:], jnp.zeros_like(offsets[:1])])
    return next_transitions, next_offsets


# --------------------------------------------------------------------------------------
# Sequential mode: a Kalman filter scan forward, then an RTS smoother scan backward.
# --------------------------------------------------------------------------------------


def _filter_step_dense(carry, inputs, lam):
    mean, covariance = carry
    transition, offset, observation = inputs
    identity = jnp.eye(mean.shape[0], dtype=mean.dtype)
    # Prediction: m^- = A m + b, P^- = A P A^T + I.
    predicted_mean = _matmul(transition, mean) + offset
    predicted = _matmul(_matmul(transition, covariance), transition.T) + identity
    predicted = _symmetrise(predicted)
    # Update with observation precision lam: P = (I + lam P^-)^{-1} P^- and
    # m = m^- + (I + lam P^-)^{-1} lam P^- (y - m^-). Unlike the textbook gain
    # P^- (P^- + R)^{-1} with R = I / lam, this form stays finite at lam = 0.
    innovation = lam * _matmul(predicted, observation - predicted_mean)
    rhs = jnp.concatenate([predicted, innovation[:, None]], axis=1)
    solution = _spd_solve(identity + lam * predicted, rhs)
    covariance = _symmetrise(solution[:, :-1])
    mean = predicted_mean + solution[:, -1]
    return (mean, covariance), (mean, covariance)


def _filter_step_diagonal(carry, inputs, lam):
    mean, variance = carry
    transition, offset, observation = inputs
    predicted_mean = transition * mean + offset
    predicted = transition**2 * variance + 1
    denominator = 1 + lam * predicted
    variance = predicted / denominator
    mean = (
        predicted_mean + lam * predicted * (observation - predicted_mean) / denominator
    )
    return (mean, variance), (mean, variance)


def _sequential_smoother(
    transitions: Array, offsets: Array, observations: Array, lam: Array, diagonal: bool
) -> Array:
    dtype = offsets.dtype
    dim = offsets.shape[1]
    if diagonal:
        filter_step, smoothing_gain = _filter_step_diagonal, _smoothing_gain_diagonal
        prior = (jnp.zeros(dim, dtype), jnp.zeros(dim, dtype))
    else:
        filter_step, smoothing_gain = _filter_step_dense, _smoothing_gain_dense
        prior = (jnp.zeros(dim, dtype), jnp.zeros((dim, dim), dtype))

    def forward(carry, inputs):
        return filter_step(carry, inputs, lam)

    _, (means, covariances) = lax.scan(
        forward, prior, (transitions, offsets, observations)
    )

    def backward(smoothed_next, inputs):
        gain, offset = smoothing_gain(*inputs)
        if diagonal:
            smoothed = gain * smoothed_next + offset
        else:
            smoothed = _matmul(gain, smoothed_next) + offset
        return smoothed, smoothed

    next_transitions, next_offsets = _next_steps(transitions, offsets)
    # The carry starts at zero because E_T = 0, so the last step returns g_T = m_T.
    _, smoothed = lax.scan(
        backward,
        jnp.zeros(dim, dtype),
        (means, covariances, next_transitions, next_offsets),
        reverse=True,
    )
    return smoothed


# --------------------------------------------------------------------------------------
# Associative mode, filtering pass (Särkkä and García-Fernández 2021).
#
# Element t = (A, b, C, eta, J) stores p(x_t | x_{t-1}, y_t) = N(x_t; A x_{t-1} + b, C)
# and p(y_t | x_{t-1}) ∝ exp(-½ x_{t-1}^T J x_{t-1} + eta^T x_{t-1}). For the model
# x_t ~ N(F x_{t-1} + u, I), y_t ~ N(x_t, I / lam), with w = 1/(1+lam), k = lam/(1+lam):
#     A = w F,  b = w u + k y,  C = w I,  eta = k F^T (y - u),  J = k F^T F.
# The prior x_0 = 0 (zero covariance) makes element 1 the same formula with F = 0.
# Combining element i (earlier) with element j (later), where M = I + C_i J_j:
#     A_ij   = A_j M^{-1} A_i
#     b_ij   = A_j M^{-1} (b_i + C_i eta_j) + b_j
#     C_ij   = A_j M^{-1} C_i A_j^T + C_j
#     eta_ij = A_i^T M^{-T} (eta_j - J_j b_i) + eta_i
#     J_ij   = A_i^T M^{-T} J_j A_i + J_i
# using (I + J_j C_i)^{-1} = M^{-T} for symmetric C_i, J_j. The prefix combination of
# elements 1..t has b = filtered mean m_t and C = filtered covariance P_t.
# --------------------------------------------------------------------------------------


def _filtering_elements_dense(transitions, offsets, observations, lam):
    prior_weight, observation_weight = _damping_weights(lam)
    dim = offsets.shape[1]
    identity = jnp.eye(dim, dtype=offsets.dtype)
    residuals = observations - offsets
    return (
        prior_weight * transitions,
        prior_weight * offsets + observation_weight * observations,
        jnp.broadcast_to(prior_weight * identity, transitions.shape),
        observation_weight
        * jnp.einsum("tji,tj->ti", transitions, residuals, precision=_HIGHEST),
        observation_weight
        * jnp.einsum("tji,tjk->tik", transitions, transitions, precision=_HIGHEST),
    )


def _combine_filtering_dense(earlier, later):
    transition_i, offset_i, covariance_i, eta_i, information_i = earlier
    transition_j, offset_j, covariance_j, eta_j, information_j = later
    dim = offset_i.shape[0]
    coupling = jnp.eye(dim, dtype=offset_i.dtype) + _matmul(covariance_i, information_j)
    # One LU factorisation of M serves three solves: M^{-1} [A_i, b_i + C_i eta_j, C_i].
    shifted_offset = offset_i + _matmul(covariance_i, eta_j)
    rhs = jnp.concatenate([transition_i, shifted_offset[:, None], covariance_i], axis=1)
    solution = jnp.linalg.solve(coupling, rhs)
    # M^{-1} A_i, whose transpose is the factor A_i^T M^{-T} of eta_ij and J_ij.
    solved_transition = solution[:, :dim]
    solved_offset = solution[:, dim]
    solved_covariance = solution[:, dim + 1 :]

    transition = _matmul(transition_j, solved_transition)
    offset = _matmul(transition_j, solved_offset) + offset_j
    covariance = _matmul(_matmul(transition_j, solved_covariance), transition_j.T)
    covariance = _symmetrise(covariance + covariance_j)
    eta = _matmul(solved_transition.T, eta_j - _matmul(information_j, offset_i)) + eta_i
    information = _matmul(_matmul(solved_transition.T, information_j), transition_i)
    information = _symmetrise(information + information_i)
    return transition, offset, covariance, eta, information


def _filtering_elements_diagonal(transitions, offsets, observations, lam):
    prior_weight, observation_weight = _damping_weights(lam)
    return (
        prior_weight * transitions,
        prior_weight * offsets + observation_weight * observations,
        jnp.broadcast_to(prior_weight, transitions.shape),
        observation_weight * transitions * (observations - offsets),
        observation_weight * transitions**2,
    )


def _combine_filtering_diagonal(earlier, later):
    # The dense combination with every block a scalar per state component.
    transition_i, offset_i, variance_i, eta_i, information_i = earlier
    transition_j, offset_j, variance_j, eta_j, information_j = later
    coupling = 1 + variance_i * information_j
    solved_transition = transition_i / coupling
    transition = transition_j * solved_transition
    offset = transition_j * (offset_i + variance_i * eta_j) / coupling + offset_j
    variance = transition_j**2 * variance_i / coupling + variance_j
    eta = solved_transition * (eta_j - information_j * offset_i) + eta_i
    information = solved_transition * information_j * transition_i + information_i
    return transition, offset, variance, eta, information


# --------------------------------------------------------------------------------------
# Associative mode, smoothing pass (Särkkä and García-Fernández 2021).
#
# Element t is (E_t, g_t) from the smoothing gains above. The backward combination
# composes affine maps, so a reverse scan returns, at t, the map from x_{T+1} (any
# value, since E_T = 0) to the smoothed mean at t. The paper's third component L_t
# (smoothed covariances) never enters E or g, so it is not computed: only means are
# returned.
# --------------------------------------------------------------------------------------


def _combine_smoothing(later, earlier):
    # `associative_scan(reverse=True)` calls `fn(later block, earlier block)`. Applying
    # the later map first: x = E_e (E_l x + g_l) + g_e.
    gain_later, offset_later = later
    gain_earlier, offset_earlier = earlier
    if gain_earlier.ndim == offset_earlier.ndim:  # diagonal
        gain = gain_earlier * gain_later
        offset = gain_earlier * offset_later + offset_earlier
    else:
        gain = jnp.matmul(gain_earlier, gain_later, precision=_HIGHEST)
        offset = (
            jnp.einsum("tij,tj->ti", gain_earlier, offset_later, precision=_HIGHEST)
            + offset_earlier
        )
    return gain, offset


def _associative_smoother(
    transitions: Array, offsets: Array, observations: Array, lam: Array, diagonal: bool
) -> Array:
    if diagonal:
        elements = _filtering_elements_diagonal(transitions, offsets, observations, lam)
        combine = _combine_filtering_diagonal
        smoothing_gain = _smoothing_gain_diagonal
    else:
        elements = _filtering_elements_dense(transitions, offsets, observations, lam)
        combine = jax.vmap(_combine_filtering_dense)
        smoothing_gain = jax.vmap(_smoothing_gain_dense)
    _, means, covariances, _, _ = lax.associative_scan(combine, elements)

    next_transitions, next_offsets = _next_steps(transitions, offsets)
    gains = smoothing_gain(means, covariances, next_transitions, next_offsets)
    _, smoothed = lax.associative_scan(_combine_smoothing, gains, reverse=True)
    return smoothed


# --------------------------------------------------------------------------------------
# Public functions.
# --------------------------------------------------------------------------------------


def _check_inputs(
    transitions: ArrayLike,
    offsets: ArrayLike,
    observations: ArrayLike,
    lam: ArrayLike,
    mode: str,
) -> tuple[Array, Array, Array, Array]:
    if mode not in ("associative", "sequential"):
        raise ValueError(
            f"Invalid `mode={mode!r}`. Expected 'associative' or 'sequential'."
        )
    transitions = jnp.asarray(transitions)
    offsets = jnp.asarray(offsets)
    observations = jnp.asarray(observations)

    # Shapes: `offsets` fixes T and d, and the other arguments must match it.
    if offsets.ndim != 2 or offsets.shape[0] == 0:
        raise ValueError(
            "`offsets` must have shape (T, d) with T >= 1 steps, "
            f"but has shape {offsets.shape}."
        )
    num_steps, dim = offsets.shape
    if transitions.shape not in ((num_steps, dim, dim), (num_steps, dim)):
        raise ValueError(
            f"`transitions` must have shape {(num_steps, dim, dim)} (dense) or "
            f"{(num_steps, dim)} (diagonal) to match `offsets` of shape "
            f"{offsets.shape}, but has shape {transitions.shape}."
        )
    if observations.shape != offsets.shape:
        raise ValueError(
            f"`observations` must have the shape of `offsets`, {offsets.shape}, "
            f"but has shape {observations.shape}."
        )
    if jnp.ndim(lam) != 0:
        raise ValueError(f"`lam` must be a scalar, but has shape {jnp.shape(lam)}.")

    # Dtypes: one floating dtype for all outputs, and `lam` is cast to it.
    dtype = jnp.result_type(transitions, offsets, observations)
    if not jnp.issubdtype(dtype, jnp.floating):
        raise TypeError(
            "`transitions`, `offsets` and `observations` must be real floating point "
            f"arrays, but their dtype is {dtype}."
        )
    damping = jnp.asarray(lam, dtype=dtype)
    # `isfinite` is false for NaN and inf. An infinite damping would give 0 * inf = NaN
    # in the weights lam / (1 + lam).
    valid = jnp.isfinite(damping) & (damping >= 0)
    damping = eqx.error_if(damping, jnp.invert(valid), "`lam` must be finite and >= 0.")
    return (
        transitions.astype(dtype),
        offsets.astype(dtype),
        observations.astype(dtype),
        damping,
    )


def kalman_smoother(
    transitions: Float[Array, "num_steps state state"]
    | Float[Array, "num_steps state"],
    offsets: Float[Array, "num_steps state"],
    observations: Float[Array, "num_steps state"],
    lam: Float[ArrayLike, ""],
    *,
    mode: SmootherMode = "associative",
) -> Float[Array, "num_steps state"]:
    """Minimises the damped least-squares problem of a linear recurrence by smoothing.

    Returns the minimiser `x = (x_1, ..., x_T)` of

        sum_t ½ ||x_t - A_t x_{t-1} - b_t||^2 + (lam / 2) sum_t ||x_t - y_t||^2

    with `x_0 = 0`, which is the posterior mean of the linear-Gaussian state-space model
    `x_t ~ N(A_t x_{t-1} + b_t, I)`, `y_t ~ N(x_t, I / lam)`. Because `x_0 = 0`, the
    first transition `A_1` multiplies zero and is ignored, so NaN there does not
    propagate. To start from a known state `s_0`, pass `b_1 = A_1 s_0 + b_1`.

    With `lam = 0` the result is the recurrence `x_1 = b_1`, `x_t = A_t x_{t-1} + b_t`.
    As `lam` grows the result tends to `y`.

    **Arguments:**

    - `transitions`: the blocks `A_t`, dense of shape `(T, d, d)` or diagonal of shape
        `(T, d)`. The diagonal case runs `d` independent scalar smoothers, in O(T d)
        work.
    - `offsets`: the offsets `b_t`, of shape `(T, d)`.
    - `observations`: the observations `y_t` (the current iterate), of shape `(T, d)`.
    - `lam`: the damping, a finite scalar `>= 0`, which may be traced. A negative,
        infinite or NaN value raises an error at run time.
    - `mode`: `"associative"` runs filter and smoother as `lax.associative_scan`s, in
        O(log T) depth (Särkkä and García-Fernández, "Temporal parallelization of
        Bayesian smoothers", IEEE Trans. Automatic Control 66(1), 2021).
        `"sequential"` runs them as `lax.scan`s, in O(T) depth with less work.

    **Returns:**

    The smoothed means, of shape `(T, d)` and the dtype of the inputs.

    **Raises:**

    `ValueError` for mismatched shapes or an unknown `mode`, `TypeError` for
    non-floating-point inputs.
    """
    transitions, offsets, observations, lam = _check_inputs(
        transitions, offsets, observations, lam, mode
    )
    diagonal = transitions.ndim == 2
    # x_0 = 0 with zero covariance, so A_1 has no effect. Zeroing it keeps NaN or inf in
    # it from reaching x_1.
    transitions = transitions.at[0].set(0)
    if mode == "associative":
        return _associative_smoother(transitions, offsets, observations, lam, diagonal)
    return _sequential_smoother(transitions, offsets, observations, lam, diagonal)


def levenberg_marquardt_step(
    transitions: Float[Array, "num_steps state state"]
    | Float[Array, "num_steps state"],
    residuals: Float[Array, "num_steps state"],
    lam: Float[ArrayLike, ""],
    *,
    mode: SmootherMode = "associative",
) -> Float[Array, "num_steps state"]:
    """Computes the damped Newton step `delta` for the residual of a recurrence.

    For the residual `r_t = s_t - f_t(s_{t-1})` of an iterate `s` (with `s_0` known) and
    the Jacobian approximations `A_t ≈ ∂f_t/∂s_{t-1}`, returns the minimiser of

        sum_t ½ ||delta_t - A_t delta_{t-1} + r_t||^2 + (lam / 2) sum_t ||delta_t||^2

    with `delta_0 = 0`, because `s_0` is data. Then `s + delta` equals
    `kalman_smoother(transitions, b, s, lam)` with `b_t = f_t(s_{t-1}) - A_t s_{t-1}`
    (and `b_1 = f_1(s_0)`), but computing the step directly loses less precision near
    convergence, where `delta` is small. `lam = 0` gives the Newton (DEER) step.

    **Arguments:**

    - `transitions`: the blocks `A_t`, dense `(T, d, d)` or diagonal `(T, d)`. `A_1` is
        ignored, because it multiplies `delta_0 = 0`.
    - `residuals`: the residuals `r_t`, of shape `(T, d)`.
    - `lam`: the damping, a finite scalar `>= 0`, which may be traced.
    - `mode`: `"associative"` or `"sequential"`, as in `kalman_smoother`.

    **Returns:**

    The step `delta`, of shape `(T, d)` and the dtype of the inputs.
    """
    residuals = jnp.asarray(residuals)
    return kalman_smoother(
        transitions, -residuals, jnp.zeros_like(residuals), lam, mode=mode
    )
