"""The root finder of one window: a wrapper that polishes and never ends non-finite."""

from collections.abc import Callable
from typing import Any

import equinox as eqx
import jax.lax as lax
import jax.numpy as jnp
import jax.tree_util as jtu
import optimistix as optx
from jaxtyping import Array, Bool, PyTree, Scalar


def all_finite(tree: PyTree[Array]) -> Bool[Array, ""]:
    """Return whether every element of every leaf of `tree` is finite."""
    leaves = [jnp.all(jnp.isfinite(leaf)) for leaf in jtu.tree_leaves(tree)]
    return jnp.all(jnp.stack(leaves)) if leaves else jnp.array(True)


def _select(pred: Bool[Array, ""], on_true: PyTree, on_false: PyTree) -> PyTree:
    return jtu.tree_map(lambda a, b: jnp.where(pred, a, b), on_true, on_false)


class _WindowState(eqx.Module):
    inner: Any
    fallback: PyTree[Array]


class WindowRootFinder(optx.AbstractRootFinder):
    """Run `root_finder` on a window, with one polishing step and a finite fallback.

    **Polishing.** A residual test bounds the defect `s_k - step(s_{k-1})` of each
    micro-step, but the state error is the sum of the propagated defects. It can thus
    be about `K` times the tolerance: Van der Pol in float32 with `K = 100`, where
    `DEER()` stopped after one iteration, ended 1e-2 away from the sequential solve.
    After a successful root find one more step of the root finder is therefore taken.
    For Newton's method this step makes the error about the square of the previous
    one, so the states match a sequential solve to round-off.

    **Finite fallback.** The implicit adjoint linearises the residual at the returned
    value, and lineax raises an error when that linear solve gives non-finite values,
    even when the tangent is discarded afterwards. A window whose iteration diverged
    to inf/NaN would then make the differentiation of the whole solve fail, although an
    adaptive controller rejects the window. Returning the finite initial guess keeps the
    linearisation finite: the Jacobian of `s_k - step(s_{k-1})` is unit lower
    block-bidiagonal, so it is invertible wherever the steps are finite. The failure is
    still reported in the result.

    **Attributes:**

    - `root_finder`: the wrapped root finder.
    - `polish`: whether to take the polishing step.
    """

    root_finder: optx.AbstractRootFinder
    polish: bool = eqx.field(static=True)
    # Copies of the wrapped root finder's tolerances, which every root finder declares.
    rtol: float
    atol: float
    norm: Callable[[PyTree], Scalar]

    def __init__(self, root_finder: optx.AbstractRootFinder, polish: bool):
        self.root_finder = root_finder
        self.polish = polish
        self.rtol = root_finder.rtol
        self.atol = root_finder.atol
        self.norm = root_finder.norm

    def init(self, fn, y, args, options, f_struct, aux_struct, tags) -> _WindowState:
        inner = self.root_finder.init(fn, y, args, options, f_struct, aux_struct, tags)
        return _WindowState(inner=inner, fallback=y)

    def step(self, fn, y, args, options, state: _WindowState, tags):
        new_y, inner, aux = self.root_finder.step(
            fn, y, args, options, state.inner, tags
        )
        return new_y, _WindowState(inner=inner, fallback=state.fallback), aux

    def terminate(self, fn, y, args, options, state: _WindowState, tags):
        return self.root_finder.terminate(fn, y, args, options, state.inner, tags)

    def postprocess(self, fn, y, aux, args, options, state: _WindowState, tags, result):
        if self.polish:

            def polish(operands):
                _y, _aux = operands
                new_y, _, new_aux = self.root_finder.step(
                    fn, _y, args, options, state.inner, tags
                )
                # A step that left the finite range is not taken.
                finite = all_finite(new_y)
                return _select(finite, new_y, _y), _select(finite, new_aux, _aux)

            converged = result == optx.RESULTS.successful
            y, aux = lax.cond(converged, polish, lambda operands: operands, (y, aux))
        y, aux, stats = self.root_finder.postprocess(
            fn, y, aux, args, options, state.inner, tags, result
        )
        y = _select(all_finite(y), y, state.fallback)
        return y, aux, stats
