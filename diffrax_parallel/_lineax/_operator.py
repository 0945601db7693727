"""`BlockBidiagonalOperator`: a lineax operator for block lower-bidiagonal systems."""

import equinox as eqx
import jax
import jax.flatten_util as jfu
import jax.lax as lax
import jax.numpy as jnp
import lineax as lx
from jaxtyping import Array, Inexact, PyTree

from ._structure import (
    ravel_states,
    state_structure,
    StateStructure,
    unravel_states,
)


_HIGHEST = lax.Precision.HIGHEST


def _block_mv(blocks: Array, x: Array) -> Array:
    """Applies dense `(T, d, d)` or diagonal `(T, d)` blocks to `x` of shape `(T, d)`."""
    if blocks.ndim == 3:
        return jnp.einsum("tij,tj->ti", blocks, x, precision=_HIGHEST)
    return blocks * x


def _block_transpose(blocks: Array) -> Array:
    if blocks.ndim == 3:
        return jnp.swapaxes(blocks, -1, -2)
    return blocks


class BlockBidiagonalOperator(lx.AbstractLinearOperator):
    """A block lower-bidiagonal linear operator over a trajectory of `T` states.

    Acting on stacked states `x = (x_0, ..., x_{T-1})`, where each `x_t` is a PyTree of
    arrays (flattened to size `d`), the operator computes

        y_0 = D_0 x_0,    y_t = D_t x_t + L_t x_{t-1}   (t = 1, ..., T - 1).

    This is the Jacobian of a stacked residual `r_t = g_t(x_t, x_{t-1})` of a recurrence:
    for an explicit recurrence `x_t = f_t(x_{t-1})`, `D_t = I` and `L_t = -∂f_t/∂x`.

    Its transpose (`operator.T`) is block upper-bidiagonal and is represented by the same
    class, with the same blocks.
    """

    lower_blocks: Inexact[Array, "num_steps-1 d d"] | Inexact[Array, "num_steps-1 d"]
    diagonal_blocks: (
        Inexact[Array, "num_steps d d"] | Inexact[Array, "num_steps d"] | None
    )
    structure: StateStructure
    transposed: bool = eqx.field(static=True)

    def __init__(
        self,
        lower_blocks: Inexact[Array, "num_steps-1 d d"]
        | Inexact[Array, "num_steps-1 d"],
        diagonal_blocks: (
            Inexact[Array, "num_steps d d"] | Inexact[Array, "num_steps d"] | None
        ) = None,
        structure: PyTree[jax.ShapeDtypeStruct] | None = None,
        *,
        transposed: bool = False,
    ):
        """**Arguments:**

        - `lower_blocks`: the sub-diagonal blocks `L_1, ..., L_{T-1}`, either dense with
            shape `(T - 1, d, d)` or diagonal with shape `(T - 1, d)`.
        - `diagonal_blocks`: the diagonal blocks `D_0, ..., D_{T-1}`: `None` for identity
            blocks, dense with shape `(T, d, d)` or diagonal with shape `(T, d)`.
        - `structure`: the structure of the stacked states, a PyTree of
            `jax.ShapeDtypeStruct`s (or of arrays) whose leaves have a leading axis of
            length `T` and together hold `d` numbers per step. Defaults to a single
            array of shape `(T, d)`.
        - `transposed`: if `True`, the operator is the transpose of the one described
            above (block upper-bidiagonal). Usually obtained with `operator.T`.
        """
        lower_blocks = jnp.asarray(lower_blocks)
        if lower_blocks.ndim not in (2, 3):
            raise ValueError(
                "`lower_blocks` must have shape (T - 1, d, d) (dense) or (T - 1, d) "
                f"(diagonal); got {lower_blocks.shape}."
            )
        if not jnp.issubdtype(lower_blocks.dtype, jnp.inexact):
            raise ValueError(
                f"`lower_blocks` must be floating point; got {lower_blocks.dtype}."
            )
        num_steps = lower_blocks.shape[0] + 1
        size = lower_blocks.shape[1]
        if lower_blocks.ndim == 3 and lower_blocks.shape[2] != size:
            raise ValueError(
                f"Dense `lower_blocks` must be square; got shape {lower_blocks.shape}."
            )
        if diagonal_blocks is not None:
            diagonal_blocks = jnp.asarray(diagonal_blocks)
            allowed = ((num_steps, size, size), (num_steps, size))
            if diagonal_blocks.shape not in allowed:
                raise ValueError(
                    f"`diagonal_blocks` must have shape {allowed[0]} (dense) or "
                    f"{allowed[1]} (diagonal) to match `lower_blocks` of shape "
                    f"{lower_blocks.shape}; got {diagonal_blocks.shape}."
                )
            if diagonal_blocks.dtype != lower_blocks.dtype:
                raise ValueError(
                    f"`diagonal_blocks` ({diagonal_blocks.dtype}) and `lower_blocks` "
                    f"({lower_blocks.dtype}) must have the same dtype."
                )
        if structure is None:
            structure = jax.ShapeDtypeStruct((num_steps, size), lower_blocks.dtype)
        if isinstance(structure, StateStructure):
            parsed = structure
        else:
            parsed = state_structure(structure)
        if parsed.num_steps != num_steps or parsed.state_size != size:
            raise ValueError(
                f"`structure` describes {parsed.num_steps} steps of size "
                f"{parsed.state_size}, but the blocks describe {num_steps} steps of size "
                f"{size}."
            )
        if parsed.dtype != lower_blocks.dtype:
            raise ValueError(
                f"`structure` has dtype {parsed.dtype} but the blocks have dtype "
                f"{lower_blocks.dtype}."
            )
        self.lower_blocks = lower_blocks
        self.diagonal_blocks = diagonal_blocks
        self.structure = parsed
        self.transposed = transposed

    @property
    def num_steps(self) -> int:
        return self.structure.num_steps

    @property
    def state_size(self) -> int:
        return self.structure.state_size

    @property
    def has_dense_blocks(self) -> bool:
        """Whether any block is stored as a dense matrix (rather than its diagonal)."""
        diagonal_dense = (
            self.diagonal_blocks is not None and self.diagonal_blocks.ndim == 3
        )
        return self.lower_blocks.ndim == 3 or diagonal_dense

    def mv(self, vector: PyTree[Array]) -> PyTree[Array]:
        x = ravel_states(vector, self.structure)
        if self.transposed:
            y = _diagonal_mv(self.diagonal_blocks, x, transpose=True)
            upper = _block_mv(_block_transpose(self.lower_blocks), x[1:])
            y = y.at[:-1].add(upper)
        else:
            y = _diagonal_mv(self.diagonal_blocks, x, transpose=False)
            y = y.at[1:].add(_block_mv(self.lower_blocks, x[:-1]))
        return unravel_states(y, self.structure)

    def as_matrix(self) -> Inexact[Array, "a b"]:
        # The flat order of lineax is leaf by leaf, which differs from the time-major
        # order of the blocks when a state has several leaves, so build columns by `mv`.
        zeros = self.structure.as_shape_dtype()
        zeros = jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype), zeros)
        flat, unflatten = jfu.ravel_pytree(zeros)

        def column(basis_vector):
            return jfu.ravel_pytree(self.mv(unflatten(basis_vector)))[0]

        identity = jnp.eye(flat.size, dtype=flat.dtype)
        return jax.vmap(column, out_axes=1)(identity)

    def transpose(self) -> "BlockBidiagonalOperator":
        return BlockBidiagonalOperator(
            self.lower_blocks,
            self.diagonal_blocks,
            self.structure,
            transposed=not self.transposed,
        )

    def in_structure(self) -> PyTree[jax.ShapeDtypeStruct]:
        return self.structure.as_shape_dtype()

    def out_structure(self) -> PyTree[jax.ShapeDtypeStruct]:
        return self.structure.as_shape_dtype()


def _diagonal_mv(diagonal_blocks: Array | None, x: Array, *, transpose: bool) -> Array:
    if diagonal_blocks is None:
        return x
    if transpose:
        diagonal_blocks = _block_transpose(diagonal_blocks)
    return _block_mv(diagonal_blocks, x)


# Lineax queries. Each `True` means "known to hold": `False` means "not known", which makes
# `lineax.AutoLinearSolver` fall back to a general solver, whereas a wrong `True` would
# make it pick a solver that returns a wrong solution.


def _single_leaf(operator: BlockBidiagonalOperator) -> bool:
    return len(operator.structure.leaf_shapes) == 1


def _diagonal_blocks_are_diagonal(operator: BlockBidiagonalOperator) -> bool:
    blocks = operator.diagonal_blocks
    return blocks is None or blocks.ndim == 2 or operator.state_size == 1


def _is_block_diagonal_only(operator: BlockBidiagonalOperator) -> bool:
    # With a single step there are no off-diagonal blocks.
    return operator.num_steps == 1


@lx.linearise.register(BlockBidiagonalOperator)
def _(operator):
    return operator


@lx.materialise.register(BlockBidiagonalOperator)
def _(operator):
    # The blocks are already stored explicitly.
    return operator


@lx.diagonal.register(BlockBidiagonalOperator)
def _(operator):
    blocks = operator.diagonal_blocks
    structure = operator.structure
    if blocks is None:
        diagonal = jnp.ones(
            (structure.num_steps, structure.state_size), structure.dtype
        )
    elif blocks.ndim == 3:
        diagonal = jnp.diagonal(blocks, axis1=1, axis2=2)
    else:
        diagonal = blocks
    # Reorder from time-major to the leaf-by-leaf order that lineax uses.
    return jfu.ravel_pytree(unravel_states(diagonal, structure))[0]


@lx.tridiagonal.register(BlockBidiagonalOperator)
def _(operator):
    if not lx.is_tridiagonal(operator):
        raise ValueError(
            "`lineax.tridiagonal` needs a tridiagonal operator; this block-bidiagonal "
            "operator has blocks larger than 1 x 1."
        )
    diagonal = lx.diagonal(operator)
    if operator.num_steps == 1:
        off_diagonal = jnp.zeros((diagonal.size - 1,), diagonal.dtype)
    else:
        off_diagonal = jnp.reshape(operator.lower_blocks, (operator.num_steps - 1,))
    zeros = jnp.zeros_like(off_diagonal)
    if operator.transposed:
        return diagonal, zeros, off_diagonal
    return diagonal, off_diagonal, zeros


@lx.is_symmetric.register(BlockBidiagonalOperator)
def _(operator):
    # Only a single step with identity or diagonal blocks is known to be symmetric.
    return _is_block_diagonal_only(operator) and _diagonal_blocks_are_diagonal(operator)


@lx.is_diagonal.register(BlockBidiagonalOperator)
def _(operator):
    return _is_block_diagonal_only(operator) and _diagonal_blocks_are_diagonal(operator)


@lx.is_tridiagonal.register(BlockBidiagonalOperator)
def _(operator):
    # With scalar states (d = 1) the flat matrix is bidiagonal.
    return lx.is_diagonal(operator) or (
        operator.state_size == 1 and _single_leaf(operator)
    )


@lx.has_unit_diagonal.register(BlockBidiagonalOperator)
def _(operator):
    return operator.diagonal_blocks is None


def _is_triangular(operator: BlockBidiagonalOperator, *, lower: bool) -> bool:
    if lx.is_diagonal(operator):
        return True
    # The flat order is time-major only for a single leaf; with several leaves the flat
    # matrix is a permutation of a block-triangular one.
    time_major = _single_leaf(operator)
    correct_side = operator.transposed != lower
    return time_major and correct_side and _diagonal_blocks_are_diagonal(operator)


@lx.is_lower_triangular.register(BlockBidiagonalOperator)
def _(operator):
    return _is_triangular(operator, lower=True)


@lx.is_upper_triangular.register(BlockBidiagonalOperator)
def _(operator):
    return _is_triangular(operator, lower=False)


@lx.is_positive_semidefinite.register(BlockBidiagonalOperator)
def _(operator):
    # A single step of identity blocks is the identity matrix.
    return _is_block_diagonal_only(operator) and operator.diagonal_blocks is None


@lx.is_negative_semidefinite.register(BlockBidiagonalOperator)
def _(operator):
    return False


@lx.conj.register(BlockBidiagonalOperator)
def _(operator):
    diagonal = (
        None if operator.diagonal_blocks is None else operator.diagonal_blocks.conj()
    )
    return BlockBidiagonalOperator(
        operator.lower_blocks.conj(),
        diagonal,
        operator.structure,
        transposed=operator.transposed,
    )
