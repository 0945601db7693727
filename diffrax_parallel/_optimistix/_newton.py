"""DEER, QuasiDEER, Picard and Jacobi: parallel Newton-type root finders.

Each iteration linearises the stacked residual `r(y)_t = g_t(y_t, y_{t-1})` around the
current iterate and solves the block-bidiagonal system `J̃ δ = -r` by a scan over time.
The methods differ only in the approximation `J̃` of the Jacobian.
"""

from collections.abc import Callable
from typing import Any, ClassVar, Literal

import equinox as eqx
import jax
import jax.lax as lax
import jax.numpy as jnp
import jax.random as jr
import jax.tree_util as jtu
import lineax as lx
import optimistix as optx
from jaxtyping import Array, Bool, Int, PRNGKeyArray, PyTree, Scalar

from .._lineax import (
    BlockBidiagonal,
    BlockBidiagonalOperator,
    ScanMode,
    state_structure,
    StateStructure,
    unit_block_diagonal_tag,
)
from ._jacobian import JacobianKind, linearise, stabilised_jacobian


def default_tolerance(dtype: Any) -> float:
    """The default `rtol` and `atol` for states of this dtype: `eps ** 0.75`.

    That is 6.5e-6 (55 eps) in float32 and 1.8e-12 in float64. The residual
    `y_t - f_t(y_{t-1})` of a converged iterate is a rounding error of a few `eps |y|`,
    and linearly convergent methods (the quasi-Newton ones) stall a little above that,
    so the tolerance keeps a margin that grows as the precision does.
    """
    return float(jnp.finfo(dtype).eps) ** 0.75


def scaled_norm(
    norm: Callable[[PyTree], Scalar],
    values: PyTree[Array],
    y: PyTree[Array],
    rtol: float,
    atol: float,
) -> Scalar:
    """Returns `norm(values / (atol + rtol |y|))`, the optimistix error measure."""
    scaled = jtu.tree_map(lambda v, s: v / (atol + rtol * jnp.abs(s)), values, y)
    return norm(scaled)


def _relative_residual(norm, residual: PyTree[Array], y: PyTree[Array]) -> Scalar:
    scaled = jtu.tree_map(lambda r, s: r / (1 + jnp.abs(s)), residual, y)
    return norm(scaled)


def tree_all_finite(tree: PyTree[Array]) -> Bool[Array, ""]:
    leaves = [jnp.all(jnp.isfinite(leaf)) for leaf in jtu.tree_leaves(tree)]
    return jnp.all(jnp.stack(leaves))


def _raw_key(key: PRNGKeyArray) -> PRNGKeyArray:
    """Converts a typed key to raw `uint32` data.

    The state of a root finder passes through `optimistix`'s error check
    (`jax.pure_callback`), which cannot carry typed key arrays.
    """
    if jnp.issubdtype(key.dtype, jax.dtypes.prng_key):
        return jr.key_data(key)
    return key


class _NewtonFn(eqx.Module):
    """`y -> (residual, aux)`, with `args` closed over."""

    fn: Callable
    args: PyTree

    def __call__(self, y):
        return self.fn(y, self.args)


class ParallelNewtonState(eqx.Module):
    """The state of a parallel Newton iteration, linearised at the current iterate."""

    residual: PyTree[Array]
    jacobian: BlockBidiagonalOperator
    residual_size: Scalar
    converged: Bool[Array, ""]
    result: optx.RESULTS
    num_nonfinite_steps: Int[Array, ""]
    num_recovered_steps: Int[Array, ""]
    # Whether the next safeguarded step tries Newton, and the initial guess, where it
    # restarts after a failure; see `step`.
    newton_allowed: Bool[Array, ""]
    initial_y: PyTree[Array]
    key: PRNGKeyArray


class AbstractParallelNewton(optx.AbstractRootFinder):
    """Shared implementation of DEER, QuasiDEER, Picard and Jacobi.

    The problem `fn(y, args)` maps stacked states `y` (a PyTree whose leaves have a
    leading time axis of length `T`) to the stacked residual of the same structure,
    where residual `t` depends only on states `t` and `t - 1`. Each iteration solves
    `J̃ δ = -r(y)` by a scan over time and sets `y ← y + δ`.

    Termination: the iteration stops when the residual at the new iterate satisfies
    `norm(r / (atol + rtol |y|)) < 1`, a test that is reachable in float32. Whatever the
    Jacobian approximation, after `i` iterations the first `i` states are exact (up to
    rounding), so every method converges in at most `T` iterations.

    Failure: a non-finite iterate is never accepted. The iteration keeps the last finite
    iterate and stops with `optimistix.RESULTS.nonfinite`.
    """

    rtol: eqx.AbstractVar[float | None]
    atol: eqx.AbstractVar[float | None]
    norm: eqx.AbstractVar[Callable[[PyTree], Scalar]]
    mode: eqx.AbstractVar[ScanMode]

    jacobian_kind: ClassVar[JacobianKind]

    def _jacobian_kind(self) -> JacobianKind:
        return self.jacobian_kind

    def _tolerances(self, y: PyTree) -> tuple[float, float]:
        dtype = jnp.result_type(*jtu.tree_leaves(y))
        default = default_tolerance(dtype)
        rtol = default if self.rtol is None else self.rtol
        atol = default if self.atol is None else self.atol
        return rtol, atol

    def _diagonal_bound(self) -> float | None:
        return None

    def _linearise(self, fn, y, args, structure, tags, key):
        unit_diagonal = unit_block_diagonal_tag in tags
        return linearise(
            _NewtonFn(fn, args),
            y,
            structure,
            self._jacobian_kind(),
            unit_diagonal=unit_diagonal,
            key=key,
            diagonal_bound=self._diagonal_bound(),
        )

    def init(
        self,
        fn: Callable,
        y: PyTree[Array],
        args: PyTree,
        options: dict[str, Any],
        f_struct: PyTree[jax.ShapeDtypeStruct],
        aux_struct: PyTree[jax.ShapeDtypeStruct],
        tags: frozenset[object],
    ) -> ParallelNewtonState:
        del aux_struct
        structure = _check_problem(y, f_struct)
        key = _raw_key(options.get("key", jr.PRNGKey(0)))
        residual, _, jacobian = self._linearise(fn, y, args, structure, tags, key)
        rtol, atol = self._tolerances(y)
        residual_size = scaled_norm(self.norm, residual, y, rtol, atol)
        return ParallelNewtonState(
            residual=residual,
            jacobian=jacobian,
            residual_size=residual_size,
            converged=residual_size < 1,
            result=optx.RESULTS.successful,
            num_nonfinite_steps=jnp.array(0),
            num_recovered_steps=jnp.array(0),
            newton_allowed=jnp.array(True),
            initial_y=y,
            key=key,
        )

    def step(
        self,
        fn: Callable,
        y: PyTree[Array],
        args: PyTree,
        options: dict[str, Any],
        state: ParallelNewtonState,
        tags: frozenset[object],
    ) -> tuple[PyTree[Array], ParallelNewtonState, Any]:
        del options
        key = jr.split(state.key)[0]

        def trial(start, residual, jacobian):
            negative_residual = jtu.tree_map(jnp.negative, residual)
            solution = lx.linear_solve(
                jacobian, negative_residual, BlockBidiagonal(self.mode), throw=False
            )
            new_y = jtu.tree_map(jnp.add, start, solution.value)
            new_residual, aux, new_jacobian = self._linearise(
                fn, new_y, args, state.jacobian.structure, tags, key
            )
            finite = tree_all_finite((new_y, new_residual, new_jacobian))
            return finite, (new_y, new_residual, aux, new_jacobian)

        if not self._recovers_nonfinite():
            _, outputs = trial(y, state.residual, state.jacobian)
            return self._finish(y, outputs, state, key, jnp.array(True), 0)

        # Safeguarded Newton. When a Newton iterate is not finite, the iteration goes
        # back to the initial guess and takes steps with the diagonals of the blocks
        # clipped to [-1, 1] (the QuasiDEER steps): these cannot overflow in the scan
        # and, like every step of this family, make one more state exact. Intermediate
        # Newton iterates are not kept, because from their (finite but far-off)
        # states even clipped steps can overflow. Newton steps resume once the residual
        # is within sqrt(eps) (relative), where their local convergence is fast.
        dtype = state.jacobian.structure.dtype
        close = _relative_residual(self.norm, state.residual, y) < jnp.sqrt(
            jnp.finfo(dtype).eps
        )
        try_newton = state.newton_allowed | close

        def clipped_from(start):
            residual, _, jacobian = self._linearise(
                fn, start, args, state.jacobian.structure, tags, key
            )
            return trial(start, residual, stabilised_jacobian(jacobian))[1]

        def newton_path():
            finite, outputs = trial(y, state.residual, state.jacobian)
            fallback = lambda: (clipped_from(state.initial_y), jnp.array(False))
            return lax.cond(finite, lambda: (outputs, jnp.array(True)), fallback)

        def clipped_path():
            outputs = trial(y, state.residual, stabilised_jacobian(state.jacobian))[1]
            return outputs, jnp.array(False)

        outputs, newton_ok = lax.cond(try_newton, newton_path, clipped_path)
        recovered = jnp.where(try_newton & jnp.invert(newton_ok), 1, 0)
        return self._finish(y, outputs, state, key, newton_ok, recovered)

    def _finish(self, y, outputs, state, key, newton_allowed, recovered):
        new_y, new_residual, aux, new_jacobian = outputs
        new_y, new_state, aux = self._accept_if_finite(
            y, new_y, new_residual, new_jacobian, aux, state, key
        )
        new_state = eqx.tree_at(
            lambda s: (s.num_recovered_steps, s.newton_allowed),
            new_state,
            (state.num_recovered_steps + recovered, newton_allowed),
        )
        return new_y, new_state, aux

    def _recovers_nonfinite(self) -> bool:
        return False

    def _accept_if_finite(self, y, new_y, new_residual, new_jacobian, aux, state, key):
        rtol, atol = self._tolerances(y)
        finite = tree_all_finite((new_y, new_residual, new_jacobian))
        residual_size = scaled_norm(self.norm, new_residual, new_y, rtol, atol)
        keep = lambda new, old: jtu.tree_map(
            lambda a, b: jnp.where(finite, a, b), new, old
        )
        new_state = ParallelNewtonState(
            residual=keep(new_residual, state.residual),
            jacobian=keep(new_jacobian, state.jacobian),
            residual_size=jnp.where(finite, residual_size, state.residual_size),
            converged=finite & (residual_size < 1),
            result=optx.RESULTS.where(
                finite, optx.RESULTS.successful, optx.RESULTS.nonfinite
            ),
            num_nonfinite_steps=state.num_nonfinite_steps + jnp.where(finite, 0, 1),
            num_recovered_steps=state.num_recovered_steps,
            newton_allowed=state.newton_allowed,
            initial_y=state.initial_y,
            key=key,
        )
        return keep(new_y, y), new_state, aux

    def terminate(
        self,
        fn: Callable,
        y: PyTree[Array],
        args: PyTree,
        options: dict[str, Any],
        state: ParallelNewtonState,
        tags: frozenset[object],
    ) -> tuple[Bool[Array, ""], optx.RESULTS]:
        del fn, y, args, options, tags
        failed = state.result != optx.RESULTS.successful
        return state.converged | failed, state.result

    def postprocess(
        self,
        fn: Callable,
        y: PyTree[Array],
        aux: Any,
        args: PyTree,
        options: dict[str, Any],
        state: ParallelNewtonState,
        tags: frozenset[object],
        result: optx.RESULTS,
    ) -> tuple[PyTree[Array], Any, dict[str, Any]]:
        del fn, args, options, tags, result
        stats = {
            "residual_size": state.residual_size,
            "num_recovered_steps": state.num_recovered_steps,
        }
        return y, aux, stats


def _check_problem(y: PyTree, f_struct: PyTree) -> StateStructure:
    structure = state_structure(y)
    f_structure = state_structure(f_struct)
    if f_structure != structure:
        raise ValueError(
            "A parallel Newton root finder needs `fn(y, args)` to return a residual with "
            "the same structure as `y` (stacked states with a leading time axis); got "
            f"`y` with structure {jax.eval_shape(lambda: y)} and residual {f_struct}."
        )
    return structure


_init_doc = """**Arguments:**

- `rtol`: relative tolerance. The iteration stops once the residual satisfies
    `norm(r / (atol + rtol |y|)) < 1`. Defaults to `eps ** 0.75` of the states' dtype.
- `atol`: absolute tolerance, as above. Defaults to `eps ** 0.75` of the states' dtype.
- `norm`: the norm of the scaled residual, as in optimistix (e.g. `optimistix.max_norm`,
    the default, or `optimistix.rms_norm`).
- `mode`: how each block-bidiagonal system is solved: `"associative"` (parallel scan,
    O(log T) depth), `"sequential"` (`jax.lax.scan`) or `"auto"` (sequential on CPU,
    associative on GPU and TPU).
"""


class DEER(AbstractParallelNewton):
    """Newton's method over the whole trajectory (DEER): full Jacobian blocks.

    Converges quadratically near the solution, and in one iteration on a linear
    recurrence. Each iteration costs `2 d` Jacobian-vector products of the residual
    (`d` when `unit_block_diagonal_tag` is passed in `tags`), O(T d^3) work and
    O(T d^2) memory.

    From a poor initial guess the products of expanding linearisations overflow and
    the Newton iterate becomes non-finite. By default DEER then stops with
    `optimistix.RESULTS.nonfinite`, keeping the last finite iterate. With
    `recover_nonfinite=True` it instead retries that iteration from the last finite
    iterate with the diagonals of the Jacobian blocks clipped to `[-1, 1]` (the
    QuasiDEER step), which cannot overflow in the scan and still makes one more state
    exact; the next iterations are Newton steps again, so local convergence stays
    quadratic. This is the default root finder of `solve_recurrence` and
    `ParallelNewtonSolver`.

    ??? cite "Reference"

        ```bibtex
        @inproceedings{lim2024parallelizing,
            title={Parallelizing non-linear sequential models over the sequence length},
            author={Lim, Yi Heng and Zhu, Qi and Selfridge, Joshua and Kasim,
                    Muhammad Firmansyah},
            booktitle={International Conference on Learning Representations},
            year={2024}
        }
        ```
    """

    rtol: float | None = None
    atol: float | None = None
    norm: Callable[[PyTree], Scalar] = optx.max_norm
    mode: ScanMode = "auto"
    recover_nonfinite: bool = False

    jacobian_kind: ClassVar[JacobianKind] = "full"

    def _recovers_nonfinite(self) -> bool:
        return self.recover_nonfinite


class QuasiDEER(AbstractParallelNewton):
    """Quasi-Newton over the whole trajectory: the diagonal of each Jacobian block.

    O(T d) work and memory per iteration; converges linearly, fast when the Jacobian
    blocks are nearly diagonal. With `diagonal_estimate="exact"` (the default) the
    diagonals come from `d` (or `2 d`) Jacobian-vector products computed one at a time,
    so memory stays O(T d). With `"hutchinson"` they are estimated from a single
    Jacobian-vector product with random signs `z`, as `z_{t-1} * (L_t z_{t-1})`: one
    product per iteration, for large `d`. This needs identity diagonal blocks: pass
    `tags=frozenset({diffrax_parallel.unit_block_diagonal_tag})`.

    The diagonal entries `Ã_t` are clipped to `[-diagonal_bound, diagonal_bound]`
    (default 1). With `|Ã_t| <= 1` no product of transitions grows, so the scan cannot
    overflow even from a poor initial guess (Van der Pol from a constant guess overflows
    without it), and the finite-termination property holds for any `Ã_t`. Where the
    true diagonal is larger in magnitude, the clipped method converges more slowly.

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
    diagonal_estimate: Literal["exact", "hutchinson"] = "exact"
    diagonal_bound: float | None = 1.0

    jacobian_kind: ClassVar[JacobianKind] = "diagonal"

    def _diagonal_bound(self) -> float | None:
        return self.diagonal_bound

    def __check_init__(self):
        if self.diagonal_estimate not in ("exact", "hutchinson"):
            raise ValueError(
                f"Invalid `diagonal_estimate={self.diagonal_estimate!r}`; expected "
                "'exact' or 'hutchinson'."
            )

    def _jacobian_kind(self) -> JacobianKind:
        return "diagonal" if self.diagonal_estimate == "exact" else "hutchinson"


class Picard(AbstractParallelNewton):
    """Picard iteration over the whole trajectory: identity Jacobian blocks.

    Drops the Jacobian of the one-step map, `∂f_t/∂y ≈ I`, so each iteration is a
    cumulative sum of the residuals: O(T d) work and no Jacobian-vector products.
    Converges fast when `f_t` is close to the identity (small ODE steps, short horizons).
    Assumes the diagonal blocks `∂r_t/∂y_t` are the identity, as for explicit
    recurrences `r_t = y_t - f_t(y_{t-1})`.
    """

    rtol: float | None = None
    atol: float | None = None
    norm: Callable[[PyTree], Scalar] = optx.max_norm
    mode: ScanMode = "auto"

    jacobian_kind: ClassVar[JacobianKind] = "identity"


class Jacobi(AbstractParallelNewton):
    """Jacobi iteration over the whole trajectory: zero off-diagonal Jacobian blocks.

    Each iteration applies every step to the previous iterate, `y_t ← f_t(y_{t-1})`,
    with no linear solve at all. Converges fast only for strongly contracting maps.
    Assumes the diagonal blocks `∂r_t/∂y_t` are the identity, as for explicit
    recurrences `r_t = y_t - f_t(y_{t-1})`.
    """

    rtol: float | None = None
    atol: float | None = None
    norm: Callable[[PyTree], Scalar] = optx.max_norm
    mode: ScanMode = "auto"

    jacobian_kind: ClassVar[JacobianKind] = "zero"


DEER.__init__.__doc__ = (
    _init_doc
    + """- `recover_nonfinite`: whether to retry a non-finite Newton iterate with a clipped
    diagonal step (see above) instead of stopping.
"""
)
for _cls in (Picard, Jacobi):
    _cls.__init__.__doc__ = _init_doc
QuasiDEER.__init__.__doc__ = (
    _init_doc
    + """- `diagonal_estimate`: `"exact"` (default) or `"hutchinson"`, see above.
- `diagonal_bound`: the bound on the magnitude of the diagonal Jacobian entries (default
    1), or `None` to keep them unclipped.
"""
)
