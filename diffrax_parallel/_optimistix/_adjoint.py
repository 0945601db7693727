"""`ImplicitScanAdjoint`: exact gradients of parallel root finds by one reverse scan."""

from typing import Literal

import lineax as lx
import optimistix as optx
from jaxtyping import Array, PyTree

from .._lineax import (
    BlockBidiagonal,
    BlockBidiagonalRichardson,
    lower_block_bidiagonal_tag,
    ScanMode,
    state_structure,
)


class _AutoAdjointSolver(lx.AbstractLinearSolver):
    """Dense reverse scan for small states, matrix-free Richardson for large ones."""

    max_dense_state_size: int
    mode: ScanMode

    def _select(self, operator: lx.AbstractLinearOperator) -> lx.AbstractLinearSolver:
        size = state_structure(operator.in_structure()).state_size
        if size <= self.max_dense_state_size:
            return BlockBidiagonal(self.mode)
        return BlockBidiagonalRichardson(mode=self.mode)

    def init(self, operator, options):
        solver = self._select(operator)
        return solver, solver.init(operator, options)

    def compute(self, state, vector, options):
        solver, inner_state = state
        return solver.compute(inner_state, vector, options)

    def transpose(self, state, options):
        solver, inner_state = state
        inner_state, options = solver.transpose(inner_state, options)
        return (solver, inner_state), options

    def conj(self, state, options):
        solver, inner_state = state
        inner_state, options = solver.conj(inner_state, options)
        return (solver, inner_state), options

    def assume_full_rank(self):
        return True


class ImplicitScanAdjoint(optx.AbstractAdjoint):
    """Differentiates a parallel root find by the implicit function theorem.

    At the root `y*(θ)` of the stacked residual, `dy*/dθ = -J^{-1} ∂r/∂θ` with the
    exact Jacobian `J`, which is block lower-bidiagonal; reverse mode solves the
    transposed (block upper-bidiagonal) system, one reverse scan. The cost does not depend
    on the number of Newton iterations, and the forward pass may use any Jacobian
    approximation (QuasiDEER, Picard, Jacobi, QuasiELK): the gradient is still exact.

    How the linear system is solved:

    - `method="dense"`: the exact dense blocks `(T, d, d)` are recovered from `2 d`
        Jacobian-vector products (`d` with `unit_block_diagonal_tag`) and the system is
        solved by [`diffrax_parallel.BlockBidiagonal`][]. O(T d^2) memory.
    - `method="matrix_free"`: [`diffrax_parallel.BlockBidiagonalRichardson`][], which
        needs only O(T d) memory and is exact after at most `T` corrections.
    - `method="auto"` (the default): dense when the state has at most
        `max_dense_state_size` numbers per step, matrix-free otherwise.

    Unlike `optimistix.ImplicitAdjoint()` with its default linear solver, this never
    materialises a dense `(T d) x (T d)` Jacobian. Pass it as the `adjoint` of
    `optimistix.root_find` when using our root finders directly; `solve_recurrence` and
    `ParallelNewtonSolver` use it by default.
    """

    method: Literal["auto", "dense", "matrix_free"] = "auto"
    max_dense_state_size: int = 32
    mode: ScanMode = "auto"

    def __check_init__(self):
        if self.method not in ("auto", "dense", "matrix_free"):
            raise ValueError(
                f"Invalid `method={self.method!r}`; expected 'auto', 'dense' or "
                "'matrix_free'."
            )

    def linear_solver(self) -> lx.AbstractLinearSolver:
        """The lineax solver of the transposed systems, as configured."""
        if self.method == "dense":
            return BlockBidiagonal(self.mode)
        if self.method == "matrix_free":
            return BlockBidiagonalRichardson(mode=self.mode)
        return _AutoAdjointSolver(self.max_dense_state_size, self.mode)

    def apply(self, primal_fn, rewrite_fn, inputs, tags) -> PyTree[Array]:
        # Residual t of a parallel root find depends on states t and t - 1 only; the tag
        # lets the linear solver recover the blocks by colouring.
        tags = frozenset(tags) | {lower_block_bidiagonal_tag}
        adjoint = optx.ImplicitAdjoint(linear_solver=self.linear_solver())
        return adjoint.apply(primal_fn, rewrite_fn, inputs, tags)


ImplicitScanAdjoint.__init__.__doc__ = """**Arguments:**

- `method`: `"auto"`, `"dense"` or `"matrix_free"`, see above.
- `max_dense_state_size`: with `method="auto"`, the largest number of scalars per step
    for which dense blocks are used.
- `mode`: the scan mode, as for [`diffrax_parallel.BlockBidiagonal`][].
"""
