"""Recovery of the blocks of a block-bidiagonal operator from Jacobian-vector products.

Output `t` of a block lower-bidiagonal operator depends on inputs `t` and `t - 1` only.
A tangent that is the unit vector `e_j` at every even time index (and zero elsewhere)
therefore returns column `j` of `D_t` at even `t` and column `j` of `L_t` at odd `t`,
without interference; the odd time indices give the rest. This is a distance-2 graph
colouring of the time axis with two colours, so `2 d` products recover every block, and
`d` suffice when the diagonal blocks are known to be the identity.
"""

from collections.abc import Callable

import jax
import jax.lax as lax
import jax.numpy as jnp
from jaxtyping import Array, Inexact

from ._structure import ravel_states, StateStructure, unravel_states


def _flat_mv(mv: Callable, structure: StateStructure) -> Callable[[Array], Array]:
    def flat_mv(flat_vector: Array) -> Array:
        return ravel_states(mv(unravel_states(flat_vector, structure)), structure)

    return flat_mv


def _parity_tangents(structure: StateStructure, parity: int) -> Array:
    """Tangents `(d, T, d)`: tangent `j` is `e_j` at time indices of this parity."""
    num_steps, size = structure.num_steps, structure.state_size
    mask = (jnp.arange(num_steps) % 2 == parity).astype(structure.dtype)
    identity = jnp.eye(size, dtype=structure.dtype)
    return mask[None, :, None] * identity[:, None, :]


def recover_blocks(
    mv: Callable,
    structure: StateStructure,
    *,
    unit_diagonal: bool,
    transposed: bool = False,
) -> tuple[Inexact[Array, "num_steps-1 d d"], Inexact[Array, "num_steps d d"] | None]:
    """Recovers all dense blocks of a block-bidiagonal operator from its `mv`.

    **Arguments:**

    - `mv`: the operator's matrix-vector product on PyTree states of `structure`.
    - `structure`: the structure of the stacked states.
    - `unit_diagonal`: whether the diagonal blocks are known to be identity matrices.
    - `transposed`: whether the operator is block upper-bidiagonal (the transpose of a
        lower one). The blocks returned are then those of the lower operator.

    **Returns:**

    A pair `(lower_blocks, diagonal_blocks)` of shapes `(T - 1, d, d)` and `(T, d, d)`,
    with `diagonal_blocks=None` when `unit_diagonal` is true.
    """
    flat_mv = _flat_mv(mv, structure)
    size = structure.state_size
    if unit_diagonal:
        # Unit vector e_j at every step: output t is e_j + L_t e_j (lower) or
        # e_j + L_{t+1}^T e_j (upper).
        tangents = jnp.broadcast_to(
            jnp.eye(size, dtype=structure.dtype)[:, None, :],
            (size, structure.num_steps, size),
        )
        # outputs[j, t, i] = entry (i, j) of the block.
        outputs = jax.vmap(flat_mv)(tangents) - tangents
        columns = jnp.moveaxis(outputs, 0, -1)
        if transposed:
            return jnp.swapaxes(columns[:-1], -1, -2), None
        return columns[1:], None
    even = jnp.moveaxis(jax.vmap(flat_mv)(_parity_tangents(structure, 0)), 0, -1)
    odd = jnp.moveaxis(jax.vmap(flat_mv)(_parity_tangents(structure, 1)), 0, -1)
    time = jnp.arange(structure.num_steps)
    same_parity = jnp.where((time % 2 == 0)[:, None, None], even, odd)
    other_parity = jnp.where((time % 2 == 0)[:, None, None], odd, even)
    if transposed:
        # Output t is D_t^T x_t + L_{t+1}^T x_{t+1}.
        diagonal = jnp.swapaxes(same_parity, -1, -2)
        lower = jnp.swapaxes(other_parity[:-1], -1, -2)
    else:
        diagonal = same_parity
        lower = other_parity[1:]
    return lower, diagonal


def recover_block_diagonals(
    mv: Callable,
    structure: StateStructure,
    *,
    unit_diagonal: bool,
    transposed: bool = False,
) -> tuple[Inexact[Array, "num_steps-1 d"], Inexact[Array, "num_steps d"] | None]:
    """Recovers the diagonals of the blocks of a block-bidiagonal operator.

    Uses the same colouring as `recover_blocks`, but loops over the `d` unit vectors so
    that memory stays at O(T d) rather than O(T d^2). With `transposed=True` the
    operator is block upper-bidiagonal; transposing a block keeps its diagonal, so the
    diagonals returned are those of the blocks of the lower operator in both cases.

    **Returns:**

    A pair `(lower_diagonals, diagonal_diagonals)` of shapes `(T - 1, d)` and `(T, d)`:
    the diagonals of `L_t` and of `D_t` (`None` when `unit_diagonal` is true).
    """
    flat_mv = _flat_mv(mv, structure)
    num_steps, size = structure.num_steps, structure.state_size
    time = jnp.arange(num_steps)
    even_mask = (time % 2 == 0).astype(structure.dtype)

    def entries_for(j: Array) -> tuple[Array, Array]:
        unit = (jnp.arange(size) == j).astype(structure.dtype)
        if unit_diagonal:
            output = flat_mv(jnp.broadcast_to(unit, (num_steps, size)))
            return output[:, j] - 1, jnp.ones((num_steps,), structure.dtype)
        even = flat_mv(even_mask[:, None] * unit[None, :])[:, j]
        odd = flat_mv((1 - even_mask)[:, None] * unit[None, :])[:, j]
        same_parity = jnp.where(time % 2 == 0, even, odd)
        other_parity = jnp.where(time % 2 == 0, odd, even)
        return other_parity, same_parity

    lower_entries, diagonal_entries = lax.map(entries_for, jnp.arange(size))
    # Lower: output t couples to input t - 1 through L_t. Upper: output t couples to
    # input t + 1 through L_{t+1}^T.
    lower_entries = jnp.transpose(lower_entries)
    lower = lower_entries[:-1] if transposed else lower_entries[1:]
    if unit_diagonal:
        return lower, None
    return lower, jnp.transpose(diagonal_entries)
