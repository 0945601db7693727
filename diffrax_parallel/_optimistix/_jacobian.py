"""Linearisation of a stacked residual and the Jacobian approximations of each method."""

from collections.abc import Callable
from typing import Literal, TypeAlias

import jax
import jax.numpy as jnp
import jax.random as jr
from jaxtyping import Array, PRNGKeyArray, PyTree

from .._lineax import (
    BlockBidiagonalOperator,
    diagonal_part,
    ravel_states,
    recover_block_diagonals,
    recover_blocks,
    StateStructure,
    unravel_states,
)


# How each method approximates the blocks `∂r_t/∂y_{t-1}` (and `∂r_t/∂y_t`):
# "full": exact dense blocks (DEER); "diagonal": the exact diagonal of each block
# (quasi-DEER); "hutchinson": a one-JVP random-sign estimate of that diagonal;
# "identity": `∂f_t/∂y = I`, that is lower blocks `-I` (Picard); "zero": no coupling
# between steps (Jacobi).
JacobianKind: TypeAlias = Literal["full", "diagonal", "hutchinson", "identity", "zero"]


def _hutchinson_diagonals(
    linear_fn: Callable, structure: StateStructure, key: PRNGKeyArray
) -> Array:
    """Estimates the diagonals of the lower blocks from one JVP, for unit diagonal blocks.

    With random signs `z_t`, output `t` of the Jacobian-vector product is
    `z_t + L_t z_{t-1}`, so `z_{t-1} * (output_t - z_t)` has expectation `diag(L_t)`
    (the signs satisfy `z_i^2 = 1` and `E[z_i z_j] = 0` for `i != j`).
    """
    shape = (structure.num_steps, structure.state_size)
    signs = jr.rademacher(key, shape, dtype=structure.dtype)
    output = ravel_states(linear_fn(unravel_states(signs, structure)), structure)
    return signs[:-1] * (output[1:] - signs[1:])


def linearise(
    fn: Callable[[PyTree], tuple[PyTree, PyTree]],
    y: PyTree,
    structure: StateStructure,
    kind: JacobianKind,
    *,
    unit_diagonal: bool,
    key: PRNGKeyArray | None = None,
    diagonal_bound: float | None = None,
) -> tuple[PyTree, PyTree, BlockBidiagonalOperator]:
    """Evaluates the residual at `y` and the approximate Jacobian of the method `kind`.

    **Arguments:**

    - `fn`: the stacked residual and auxiliary output, `y -> (r, aux)`, where `r_t`
        depends on `y_t` and `y_{t-1}` only.
    - `y`: the current iterate (stacked states).
    - `structure`: the structure of `y`.
    - `kind`: the Jacobian approximation.
    - `unit_diagonal`: whether `∂r_t/∂y_t` is known to be the identity.
    - `key`: random key for `kind="hutchinson"`.
    - `diagonal_bound`: for the diagonal kinds, clip the diagonals of the lower blocks
        to `[-diagonal_bound, diagonal_bound]`; `None` keeps them.

    **Returns:**

    The residual, the auxiliary output, and the (approximate) Jacobian as a
    `BlockBidiagonalOperator`.
    """
    num_steps, size, dtype = structure.num_steps, structure.state_size, structure.dtype
    if kind in ("identity", "zero"):
        residual, aux = fn(y)
        value = -1.0 if kind == "identity" else 0.0
        lower = jnp.full((num_steps - 1, size), value, dtype)
        return residual, aux, BlockBidiagonalOperator(lower, None, structure)
    residual, linear_fn, aux = jax.linearize(fn, y, has_aux=True)
    if kind == "full":
        lower, diagonal = recover_blocks(
            linear_fn, structure, unit_diagonal=unit_diagonal
        )
    elif kind == "diagonal":
        lower, diagonal = recover_block_diagonals(
            linear_fn, structure, unit_diagonal=unit_diagonal
        )
    elif kind == "hutchinson":
        if not unit_diagonal:
            raise ValueError(
                "The Hutchinson diagonal estimate needs identity diagonal blocks "
                "(`∂r_t/∂y_t = I`, as for explicit recurrences); pass "
                "`tags=frozenset({diffrax_parallel.unit_block_diagonal_tag})` to "
                "`optimistix.root_find`, or use `diagonal_estimate='exact'`."
            )
        assert key is not None
        lower = _hutchinson_diagonals(linear_fn, structure, key)
        diagonal = None
    else:
        raise ValueError(f"Unknown Jacobian approximation {kind!r}.")
    if kind in ("diagonal", "hutchinson") and diagonal_bound is not None:
        # |Ã_t| <= 1 elementwise keeps every product of transitions bounded, so the scan
        # cannot overflow; any Ã keeps the finite-termination property.
        lower = jnp.clip(lower, -diagonal_bound, diagonal_bound)
    return residual, aux, BlockBidiagonalOperator(lower, diagonal, structure)


def stabilised_jacobian(jacobian: BlockBidiagonalOperator) -> BlockBidiagonalOperator:
    """Keeps the diagonals of the blocks, with those of the lower blocks in `[-1, 1]`.

    For identity diagonal blocks, the transitions `Ã_t = -diag(L_t)` then satisfy
    `|Ã_t| <= 1`, so no product of them grows and the scan cannot overflow.
    """
    diagonal = diagonal_part(jacobian)
    lower = jnp.clip(diagonal.lower_blocks, -1, 1)
    return BlockBidiagonalOperator(lower, diagonal.diagonal_blocks, jacobian.structure)
