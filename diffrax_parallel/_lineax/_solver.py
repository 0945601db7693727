"""`BlockBidiagonal`: a lineax solver for block-bidiagonal systems by scans."""

from typing import Any

import equinox as eqx
import jax.lax as lax
import jax.numpy as jnp
import lineax as lx
from jaxtyping import Array, Inexact, PyTree

from ._colouring import recover_blocks
from ._operator import BlockBidiagonalOperator
from ._scan import affine_recurrence, ScanMode
from ._structure import ravel_states, state_structure, unravel_states
from ._tags import (
    lower_block_bidiagonal_tag,
    unit_block_diagonal_tag,
    upper_block_bidiagonal_tag,
)


_HIGHEST = lax.Precision.HIGHEST


class _BlockBidiagonalState(eqx.Module):
    operator: BlockBidiagonalOperator
    # The transition blocks of the recurrence that solves the system (forward in time
    # for a lower operator, backward for an upper one); see `_transitions`.
    transitions: Inexact[Array, "num_steps-1 d d"] | Inexact[Array, "num_steps-1 d"]


def _solve_diagonal_blocks(diagonal_blocks: Array, rhs: Array) -> Array:
    """Solves `D_t z_t = rhs_t` for every t; `rhs` is `(T, d)` or `(T, d, d)`."""
    if diagonal_blocks.ndim == 2:
        if rhs.ndim == 3:
            return rhs / diagonal_blocks[:, :, None]
        return rhs / diagonal_blocks
    if rhs.ndim == 2:
        return jnp.linalg.solve(diagonal_blocks, rhs[:, :, None])[:, :, 0]
    return jnp.linalg.solve(diagonal_blocks, rhs)


def _as_dense(blocks: Array) -> Array:
    if blocks.ndim == 3:
        return blocks
    return jnp.eye(blocks.shape[-1], dtype=blocks.dtype)[None] * blocks[:, None, :]


def _transpose_blocks(blocks: Array | None) -> Array | None:
    if blocks is None or blocks.ndim == 2:
        return blocks
    return jnp.swapaxes(blocks, -1, -2)


def _transitions(operator: BlockBidiagonalOperator) -> Array:
    """The transitions of the recurrence that inverts the operator.

    Lower: `D_t x_t + L_t x_{t-1} = b_t` gives `x_t = -D_t^{-1} L_t x_{t-1} + D_t^{-1} b_t`.
    Upper (transposed): `D_t^T x_t + L_{t+1}^T x_{t+1} = b_t` gives
    `x_t = -D_t^{-T} L_{t+1}^T x_{t+1} + D_t^{-T} b_t`, a recurrence backwards in time.
    """
    lower = operator.lower_blocks
    diagonal = operator.diagonal_blocks
    if operator.transposed:
        lower = _transpose_blocks(lower)
        diagonal = None if diagonal is None else _transpose_blocks(diagonal)[:-1]
    elif diagonal is not None:
        diagonal = diagonal[1:]
    if diagonal is None:
        return -lower
    if diagonal.ndim == 3 and lower.ndim == 2:
        lower = _as_dense(lower)
    return -_solve_diagonal_blocks(diagonal, lower)


class BlockBidiagonal(lx.AbstractLinearSolver[_BlockBidiagonalState]):
    """Solves block-bidiagonal linear systems by an affine scan over time.

    A block lower-bidiagonal system `D_t x_t + L_t x_{t-1} = b_t` is the affine recurrence
    `x_t = -D_t^{-1} L_t x_{t-1} + D_t^{-1} b_t`. Affine maps compose associatively, so
    `jax.lax.associative_scan` solves it in O(log T) depth; its transpose (block
    upper-bidiagonal) is the same recurrence run backwards in time. Dense blocks cost
    O(T d^3) work and diagonal blocks O(T d).

    Accepts a [`diffrax_parallel.BlockBidiagonalOperator`][], or any lineax operator that
    carries `lower_block_bidiagonal_tag` or `upper_block_bidiagonal_tag` (for example the
    Jacobian that `optimistix.Newton` or `optimistix.ImplicitAdjoint` pass to their linear
    solver). The blocks of the latter are recovered from `2 d` Jacobian-vector products
    (`d` if it also carries `unit_block_diagonal_tag`) by a colouring of the time axis.

    A non-finite solution is reported as `lineax.RESULTS.singular` (or
    `lineax.RESULTS.nonfinite_input` when the right-hand side is not finite).
    """

    mode: ScanMode = "auto"

    def __check_init__(self):
        if self.mode not in ("associative", "sequential", "auto"):
            raise ValueError(
                f"Invalid `mode={self.mode!r}`; expected 'associative', 'sequential' "
                "or 'auto'."
            )

    def init(
        self, operator: lx.AbstractLinearOperator, options: dict[str, Any]
    ) -> _BlockBidiagonalState:
        del options
        operator = as_block_bidiagonal_operator(operator)
        return _BlockBidiagonalState(operator, _transitions(operator))

    def compute(
        self,
        state: _BlockBidiagonalState,
        vector: PyTree[Array],
        options: dict[str, Any],
    ) -> tuple[PyTree[Array], lx.RESULTS, dict[str, Any]]:
        del options
        operator = state.operator
        structure = operator.structure
        rhs = ravel_states(vector, structure).astype(structure.dtype)
        diagonal = operator.diagonal_blocks
        if diagonal is not None:
            if operator.transposed:
                diagonal = _transpose_blocks(diagonal)
            rhs = _solve_diagonal_blocks(diagonal, rhs)
        solution = affine_recurrence(
            state.transitions, rhs, mode=self.mode, reverse=operator.transposed
        )
        finite_input = jnp.all(jnp.isfinite(rhs))
        finite_output = jnp.all(jnp.isfinite(solution))
        result = lx.RESULTS.where(
            finite_output, lx.RESULTS.successful, lx.RESULTS.singular
        )
        result = lx.RESULTS.where(finite_input, result, lx.RESULTS.nonfinite_input)
        return unravel_states(solution, structure), result, {}

    def transpose(
        self, state: _BlockBidiagonalState, options: dict[str, Any]
    ) -> tuple[_BlockBidiagonalState, dict[str, Any]]:
        operator = state.operator.transpose()
        return _BlockBidiagonalState(operator, _transitions(operator)), options

    def conj(
        self, state: _BlockBidiagonalState, options: dict[str, Any]
    ) -> tuple[_BlockBidiagonalState, dict[str, Any]]:
        operator = lx.conj(state.operator)
        return _BlockBidiagonalState(operator, state.transitions.conj()), options

    def assume_full_rank(self) -> bool:
        return True


BlockBidiagonal.__init__.__doc__ = """**Arguments:**

- `mode`: how the recurrence is evaluated. `"associative"` uses
    `jax.lax.associative_scan` (O(log T) depth, the fast choice on GPU and TPU);
    `"sequential"` uses `jax.lax.scan` (the same answer, less work, the fast choice on
    CPU); `"auto"` (the default) picks sequential on CPU and associative elsewhere, when
    the computation is lowered for its device.
"""


def as_block_bidiagonal_operator(
    operator: lx.AbstractLinearOperator,
) -> BlockBidiagonalOperator:
    """Converts a block-bidiagonal lineax operator to a `BlockBidiagonalOperator`.

    **Arguments:**

    - `operator`: a `BlockBidiagonalOperator` (returned unchanged), or any lineax operator
        tagged with `lower_block_bidiagonal_tag` or `upper_block_bidiagonal_tag`, whose
        input and output are PyTrees of the same structure with a leading time axis.

    **Returns:**

    A `BlockBidiagonalOperator` with dense blocks recovered by colouring.
    """
    if isinstance(operator, BlockBidiagonalOperator):
        return operator
    tags = getattr(operator, "tags", frozenset())
    lower = lower_block_bidiagonal_tag in tags
    upper = upper_block_bidiagonal_tag in tags
    if not (lower or upper):
        raise ValueError(
            "`BlockBidiagonal` can only solve a `BlockBidiagonalOperator` or an operator "
            "tagged with `lower_block_bidiagonal_tag` or `upper_block_bidiagonal_tag`; "
            f"got {type(operator).__name__} with tags {set(tags)}."
        )
    if lower and upper:
        raise ValueError(
            "An operator tagged both lower and upper block-bidiagonal is block diagonal; "
            "use a solver for block-diagonal systems instead of `BlockBidiagonal`."
        )
    structure = state_structure(operator.in_structure())
    if state_structure(operator.out_structure()) != structure:
        raise ValueError(
            "A block-bidiagonal operator must have the same input and output structure; "
            f"got {operator.in_structure()} and {operator.out_structure()}."
        )
    unit_diagonal = unit_block_diagonal_tag in tags
    linearised = lx.linearise(operator)
    lower_blocks, diagonal_blocks = recover_blocks(
        linearised.mv, structure, unit_diagonal=unit_diagonal, transposed=upper
    )
    return BlockBidiagonalOperator(
        lower_blocks, diagonal_blocks, structure, transposed=upper
    )
