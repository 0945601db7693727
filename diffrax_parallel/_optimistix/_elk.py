"""ELK and QuasiELK: trust-region (Levenberg–Marquardt) parallel Newton methods.

Each iteration minimises the linearised residual plus a proximal penalty,

    sum_t ½ ||δ_t - A_t δ_{t-1} + r_t||^2 + (λ/2) sum_t ||δ_t||^2,

whose minimiser is the posterior mean of a linear-Gaussian state-space model: a Kalman
smoother, computed by a parallel scan. `λ = 0` is the Newton (DEER) step; a larger `λ`
is a smaller trust region, which stops products of expanding linearisations from
overflowing. `λ` adapts from the ratio of actual to predicted reduction of `½||r||^2`.
"""

from collections.abc import Callable
from typing import ClassVar

import equinox as eqx
import jax.lax as lax
import jax.numpy as jnp
import jax.random as jr
import jax.tree_util as jtu
import optimistix as optx
from jaxtyping import Array, Bool, Float, Int, PRNGKeyArray, PyTree, Scalar

from .._lineax import (
    BlockBidiagonalOperator,
    ravel_states,
    ScanMode,
    unravel_states,
)
from ._jacobian import JacobianKind
from ._kalman import levenberg_marquardt_step
from ._newton import (
    _check_problem,
    _raw_key,
    AbstractParallelNewton,
    scaled_norm,
    tree_all_finite,
)


class _TrustRegionState(eqx.Module):
    residual: PyTree[Array]
    jacobian: BlockBidiagonalOperator
    residual_size: Scalar
    converged: Bool[Array, ""]
    result: optx.RESULTS
    damping: Scalar
    # The merits `½||r̃||^2` of the last accepted iterates, newest first: the reference of
    # the nonmonotone acceptance test is their maximum.
    recent_merits: Float[Array, " memory"]
    num_rejected_steps: Int[Array, ""]
    key: PRNGKeyArray


def _transitions_and_residual(
    jacobian: BlockBidiagonalOperator, residual: PyTree[Array]
) -> tuple[Array, Array]:
    """The model `δ_t = A_t δ_{t-1} - r̃_t` of a Jacobian `D_t δ_t + L_t δ_{t-1}`.

    `A_t = -D_t^{-1} L_t` and `r̃_t = D_t^{-1} r_t`; with identity diagonal blocks (every
    explicit recurrence) these are `-L_t` and `r_t`. The returned transitions have `T`
    rows, the first being zero because `δ_0 = 0` is data.
    """
    flat_residual = ravel_states(residual, jacobian.structure)
    lower, diagonal = jacobian.lower_blocks, jacobian.diagonal_blocks
    if diagonal is not None:
        if diagonal.ndim == 3:
            if lower.ndim == 2:
                lower = (
                    jnp.eye(lower.shape[-1], dtype=lower.dtype)[None] * lower[:, None]
                )
            lower = jnp.linalg.solve(diagonal[1:], lower)
            flat_residual = jnp.linalg.solve(diagonal, flat_residual[..., None])[..., 0]
        else:
            lower = lower / (diagonal[1:] if lower.ndim == 2 else diagonal[1:, :, None])
            flat_residual = flat_residual / diagonal
    first = jnp.zeros((1,) + lower.shape[1:], lower.dtype)
    transitions = jnp.concatenate([first, -lower])
    return transitions, flat_residual


def _merit(jacobian: BlockBidiagonalOperator, residual: PyTree[Array]) -> Scalar:
    _, scaled_residual = _transitions_and_residual(jacobian, residual)
    return 0.5 * jnp.sum(scaled_residual**2)


def _apply_model(transitions: Array, step: Array) -> Array:
    """Returns `(J̃ δ)_t = δ_t - A_t δ_{t-1}` for the scaled model."""
    previous = jnp.concatenate([jnp.zeros_like(step[:1]), step[:-1]])
    if transitions.ndim == 3:
        coupled = jnp.einsum(
            "tij,tj->ti", transitions, previous, precision=lax.Precision.HIGHEST
        )
    else:
        coupled = transitions * previous
    return step - coupled


class AbstractTrustRegionNewton(AbstractParallelNewton):
    """Shared implementation of ELK and QuasiELK.

    Accepts a step when the ratio of the actual to the predicted reduction of the merit
    `½ ||r̃||^2` exceeds `accept_ratio`; then `λ` shrinks (by `damping_factor` when the
    ratio exceeds `shrink_ratio`, to zero below `min_damping`), otherwise the step is
    rejected and `λ` grows by `damping_factor` (at least to `min_damping`). The test is
    nonmonotone: the actual reduction is measured from the largest merit of the last
    `nonmonotone_memory` accepted iterates (Toint, "Non-monotone trust-region algorithms
    for nonlinear optimization subject to convex constraints", Math. Programming 77,
    1997). Parallel Newton iterates converge front to back, so the merit can rise for a
    few steps while the early states settle; a monotone test rejects those steps and
    stalls. A non-finite trial point is
    rejected like any other. The iteration stops with success only when the residual
    itself is small, `norm(r / (atol + rtol |y|)) < 1`; when `λ` exceeds `max_damping`,
    the trust region has collapsed at a point that is not a root (for example a local
    minimum of `||r||^2`) and the solve fails with `optimistix.RESULTS.nonlinear_divergence`.
    """

    initial_damping: eqx.AbstractVar[float]
    min_damping: eqx.AbstractVar[float]
    max_damping: eqx.AbstractVar[float]
    damping_factor: eqx.AbstractVar[float]
    accept_ratio: eqx.AbstractVar[float]
    shrink_ratio: eqx.AbstractVar[float]
    nonmonotone_memory: eqx.AbstractVar[int]

    def init(self, fn, y, args, options, f_struct, aux_struct, tags):
        del aux_struct
        structure = _check_problem(y, f_struct)
        key = _raw_key(options.get("key", jr.PRNGKey(0)))
        residual, _, jacobian = self._linearise(fn, y, args, structure, tags, key)
        rtol, atol = self._tolerances(y)
        residual_size = scaled_norm(self.norm, residual, y, rtol, atol)
        dtype = structure.dtype
        return _TrustRegionState(
            residual=residual,
            jacobian=jacobian,
            residual_size=residual_size,
            converged=residual_size < 1,
            result=optx.RESULTS.successful,
            damping=jnp.asarray(self.initial_damping, dtype),
            recent_merits=jnp.full(
                (self.nonmonotone_memory,), _merit(jacobian, residual), dtype
            ),
            num_rejected_steps=jnp.array(0),
            key=key,
        )

    def _smoother_step(self, transitions: Array, residual: Array, damping: Scalar):
        step = lambda mode: (
            lambda a, r, lam: levenberg_marquardt_step(a, r, lam, mode=mode)
        )
        if self.mode == "auto":
            return lax.platform_dependent(
                transitions,
                residual,
                damping,
                cpu=step("sequential"),
                default=step("associative"),
            )
        return step(self.mode)(transitions, residual, damping)

    def step(self, fn, y, args, options, state, tags):
        del options
        structure = state.jacobian.structure
        transitions, scaled_residual = _transitions_and_residual(
            state.jacobian, state.residual
        )
        flat_step = self._smoother_step(transitions, scaled_residual, state.damping)
        model_residual = scaled_residual + _apply_model(transitions, flat_step)
        merit = 0.5 * jnp.sum(scaled_residual**2)
        predicted = merit - 0.5 * jnp.sum(model_residual**2)
        # Nonmonotone test: the trial is compared with the worst of the recent accepted
        # merits, so that the merit may rise for a few steps while the early states
        # converge and the later ones are still far off.
        reference = jnp.max(state.recent_merits)

        trial_y = jtu.tree_map(jnp.add, y, unravel_states(flat_step, structure))
        key = jr.split(state.key)[0]
        trial_residual, aux, trial_jacobian = self._linearise(
            fn, trial_y, args, structure, tags, key
        )
        # The actual reduction uses the scaling of the current point, so that it and
        # the prediction measure the same merit function.
        _, trial_scaled = _transitions_and_residual(state.jacobian, trial_residual)
        trial_merit = 0.5 * jnp.sum(trial_scaled**2)
        actual = reference - trial_merit
        finite = tree_all_finite((trial_y, trial_residual, trial_jacobian, actual))
        ratio = actual / jnp.where(predicted > 0, predicted, 1)
        accept = finite & (predicted > 0) & (ratio > self.accept_ratio)
        damping = self._update_damping(state.damping, accept, ratio)
        recent_merits = jnp.where(
            accept,
            jnp.roll(state.recent_merits, 1).at[0].set(trial_merit),
            state.recent_merits,
        )
        state = eqx.tree_at(lambda s: s.recent_merits, state, recent_merits)
        return self._finish_step(
            y, trial_y, trial_residual, trial_jacobian, aux, state, accept, damping, key
        )

    def _update_damping(self, damping: Scalar, accept, ratio) -> Scalar:
        grow = jnp.maximum(damping * self.damping_factor, self.min_damping)
        shrink = damping / self.damping_factor
        shrink = jnp.where(shrink < self.min_damping, 0.0, shrink)
        accepted = jnp.where(ratio > self.shrink_ratio, shrink, damping)
        return jnp.where(accept, accepted, grow).astype(damping.dtype)

    def _finish_step(
        self,
        y,
        trial_y,
        trial_residual,
        trial_jacobian,
        aux,
        state,
        accept,
        damping,
        key,
    ):
        rtol, atol = self._tolerances(y)
        keep = lambda new, old: jtu.tree_map(
            lambda a, b: jnp.where(accept, a, b), new, old
        )
        new_y = keep(trial_y, y)
        residual = keep(trial_residual, state.residual)
        residual_size = scaled_norm(self.norm, residual, new_y, rtol, atol)
        collapsed = damping > self.max_damping
        new_state = _TrustRegionState(
            residual=residual,
            jacobian=keep(trial_jacobian, state.jacobian),
            residual_size=residual_size,
            converged=residual_size < 1,
            result=optx.RESULTS.where(
                collapsed & (residual_size >= 1),
                optx.RESULTS.nonlinear_divergence,
                optx.RESULTS.successful,
            ),
            damping=damping,
            recent_merits=state.recent_merits,
            num_rejected_steps=state.num_rejected_steps + jnp.where(accept, 0, 1),
            key=key,
        )
        return new_y, new_state, aux

    def postprocess(self, fn, y, aux, args, options, state, tags, result):
        del fn, args, options, tags, result
        stats = {
            "residual_size": state.residual_size,
            "num_rejected_steps": state.num_rejected_steps,
            "damping": state.damping,
        }
        return y, aux, stats


_elk_init_doc = """**Arguments:**

- `rtol`, `atol`: the iteration stops once the residual satisfies
    `norm(r / (atol + rtol |y|)) < 1`. Both default to `eps ** 0.75` of the states' dtype.
- `norm`: the norm of the scaled residual (default `optimistix.max_norm`).
- `mode`: `"associative"` (parallel Kalman filter and smoother, O(log T) depth),
    `"sequential"` (`jax.lax.scan`) or `"auto"` (sequential on CPU, associative on GPU
    and TPU).
- `initial_damping`: the first `λ`. The default `0` tries a full Newton step first, so
    on easy problems ELK costs what DEER costs.
- `min_damping`: below this `λ` is set to zero (a Newton step); a rejected step raises
    `λ` to at least this value.
- `max_damping`: above this the trust region has collapsed and the solve fails.
- `damping_factor`: the factor by which `λ` grows on rejection and shrinks after a very
    successful step.
- `accept_ratio`: the smallest ratio of actual to predicted reduction that accepts a
    step.
- `shrink_ratio`: the ratio above which an accepted step also shrinks `λ`.
- `nonmonotone_memory`: the number of recent accepted merits whose maximum is the
    reference of the acceptance test; `1` gives the classical monotone test.
"""


class ELK(AbstractTrustRegionNewton):
    """Trust-region Newton (ELK) over the whole trajectory, with full Jacobian blocks.

    The Levenberg–Marquardt step is a Kalman smoother over the linearised dynamics,
    computed in O(log T) depth (Särkkä and García-Fernández, "Temporal parallelization
    of Bayesian smoothers", IEEE TAC 2021). Converges from poor initial guesses where
    DEER overflows; near the solution `λ → 0` and it takes Newton steps.

    NOTE: on windows of 50 to 200 RK4 steps of the Hodgkin–Huxley model that contain a
    spike, ELK from a constant guess rejects about half of its steps and does not
    converge within `K + 2` iterations, where `DEER(recover_nonfinite=True)` converges
    in 4 to 27. The damping schedule (a factor 10 up and down) is the likely cause.

    ??? cite "Reference"

        ```bibtex
        @inproceedings{gonzalez2024towards,
            title={Towards Scalable and Stable Parallelization of Nonlinear RNNs},
            author={Gonzalez, Xavier and Warrington, Andrew and Smith, Jimmy T. H. and
                    Linderman, Scott W.},
            booktitle={Advances in Neural Information Processing Systems},
            year={2024}
        }
        ```
    """

    rtol: float | None = None
    atol: float | None = None
    norm: Callable[[PyTree], Scalar] = optx.max_norm
    mode: ScanMode = "auto"
    initial_damping: float = 0.0
    min_damping: float = 1e-6
    max_damping: float = 1e12
    damping_factor: float = 10.0
    accept_ratio: float = 1e-4
    shrink_ratio: float = 0.75
    nonmonotone_memory: int = 50

    jacobian_kind: ClassVar[JacobianKind] = "full"


class QuasiELK(AbstractTrustRegionNewton):
    """Trust-region quasi-Newton (quasi-ELK): ELK with the diagonal of each block.

    The Kalman filter and smoother are elementwise scalar ones, O(T d) work and memory.

    NOTE: the acceptance test compares merits of the whole trajectory. Where the
    diagonal model misses a strong coupling between state components over a long
    horizon (for example a damped oscillator over 10^4 RK4 steps), an undamped
    quasi-Newton step raises the merit a hundredfold even though the early states
    converge, and QuasiELK stalls with `RESULTS.trust_region_stalled`. QuasiDEER, whose
    clipped diagonal already prevents overflow, or ELK converge there.
    The diagonals are clipped to `[-diagonal_bound, diagonal_bound]` (default 1), as in
    [`diffrax_parallel.QuasiDEER`][].
    """

    rtol: float | None = None
    atol: float | None = None
    norm: Callable[[PyTree], Scalar] = optx.max_norm
    mode: ScanMode = "auto"
    initial_damping: float = 0.0
    min_damping: float = 1e-6
    max_damping: float = 1e12
    damping_factor: float = 10.0
    accept_ratio: float = 1e-4
    shrink_ratio: float = 0.75
    nonmonotone_memory: int = 50
    diagonal_bound: float | None = 1.0

    jacobian_kind: ClassVar[JacobianKind] = "diagonal"

    def _diagonal_bound(self) -> float | None:
        return self.diagonal_bound


ELK.__init__.__doc__ = _elk_init_doc
QuasiELK.__init__.__doc__ = (
    _elk_init_doc
    + """- `diagonal_bound`: the bound on the magnitude of the diagonal Jacobian entries, or
    `None` to keep them unclipped.
"""
)
