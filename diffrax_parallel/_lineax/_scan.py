"""Affine recurrences `x_t = A_t x_{t-1} + b_t` by associative or sequential scans."""

from typing import Literal, TypeAlias

import jax.lax as lax
import jax.numpy as jnp
from jaxtyping import Array, Inexact


ScanMode: TypeAlias = Literal["associative", "sequential", "auto"]
_HIGHEST = lax.Precision.HIGHEST


def _check_mode(mode: str) -> None:
    if mode not in ("associative", "sequential", "auto"):
        raise ValueError(
            f"Invalid scan mode {mode!r}; expected 'associative', 'sequential' or 'auto'."
        )


def _apply(transition: Array, x: Array) -> Array:
    """Multiplies a dense `(..., d, d)` or diagonal `(..., d)` transition with `x`."""
    if transition.ndim == x.ndim + 1:
        return jnp.einsum("...ij,...j->...i", transition, x, precision=_HIGHEST)
    return transition * x


def _compose(transition2: Array, transition1: Array) -> Array:
    """Returns the transition `A2 A1` (first `A1`, then `A2`)."""
    if transition2.ndim == 3:
        return jnp.matmul(transition2, transition1, precision=_HIGHEST)
    return transition2 * transition1


def _combine(earlier, later):
    # Composition of affine maps: first (A1, b1), then (A2, b2), is (A2 A1, A2 b1 + b2).
    # This operation is associative, which is what `associative_scan` needs.
    transition1, offset1 = earlier
    transition2, offset2 = later
    return _compose(transition2, transition1), _apply(transition2, offset1) + offset2


def _associative(transitions: Array, offsets: Array) -> Array:
    # The first element's transition is zero because `x_{-1} = 0`: folding the known
    # start into the offsets makes every prefix composition's offset the solution.
    first = jnp.zeros_like(transitions[:1])
    elements = (jnp.concatenate([first, transitions]), offsets)
    _, states = lax.associative_scan(_combine, elements)
    return states


def _sequential(transitions: Array, offsets: Array) -> Array:
    def body(x, inputs):
        transition, offset = inputs
        x = _apply(transition, x) + offset
        return x, x

    _, rest = lax.scan(body, offsets[0], (transitions, offsets[1:]))
    return jnp.concatenate([offsets[:1], rest])


def affine_recurrence(
    transitions: Inexact[Array, "num_steps-1 d d"] | Inexact[Array, "num_steps-1 d"],
    offsets: Inexact[Array, "num_steps d"],
    *,
    mode: ScanMode = "auto",
    reverse: bool = False,
) -> Inexact[Array, "num_steps d"]:
    """Solves the affine recurrence `x_0 = b_0`, `x_t = A_t x_{t-1} + b_t`.

    `transitions[t - 1]` is `A_t`, the map from step `t - 1` to step `t`. With
    `reverse=True` the recurrence runs backwards: `x_{T-1} = b_{T-1}` and
    `x_t = A_t x_{t+1} + b_t`, where `transitions[t]` is the map from step `t + 1` to
    step `t`.

    **Arguments:**

    - `transitions`: dense blocks of shape `(T - 1, d, d)` or diagonal blocks of shape
        `(T - 1, d)`, of the same dtype as `offsets`.
    - `offsets`: an array of shape `(T, d)`.
    - `mode`: `"associative"` (`jax.lax.associative_scan`, depth O(log T)),
        `"sequential"` (`jax.lax.scan`, depth T) or `"auto"` (sequential on CPU and
        associative on GPU and TPU, chosen when the computation is lowered).
    - `reverse`: whether the recurrence runs from the last step to the first.

    **Returns:**

    The states `x` as an array of shape `(T, d)`.
    """
    _check_mode(mode)
    if offsets.ndim != 2:
        raise ValueError(f"`offsets` must have shape (T, d); got {offsets.shape}.")
    num_steps, size = offsets.shape
    if transitions.shape not in ((num_steps - 1, size, size), (num_steps - 1, size)):
        raise ValueError(
            f"`transitions` must have shape {(num_steps - 1, size, size)} (dense) or "
            f"{(num_steps - 1, size)} (diagonal) to match offsets of shape "
            f"{offsets.shape}; got {transitions.shape}."
        )
    if transitions.dtype != offsets.dtype:
        raise ValueError(
            f"`transitions` ({transitions.dtype}) and `offsets` ({offsets.dtype}) must "
            "have the same dtype."
        )
    if num_steps == 1:
        return offsets
    if reverse:
        # Running backwards is running forwards on the time-reversed arrays.
        states = affine_recurrence(
            jnp.flip(transitions, axis=0), jnp.flip(offsets, axis=0), mode=mode
        )
        return jnp.flip(states, axis=0)
    if mode == "associative":
        return _associative(transitions, offsets)
    if mode == "sequential":
        return _sequential(transitions, offsets)
    return lax.platform_dependent(
        transitions,
        offsets,
        cpu=_sequential,
        default=_associative,
    )
