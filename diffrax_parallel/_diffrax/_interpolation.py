"""Dense output over a window: the base solver's interpolation on each micro-step."""

from collections.abc import Callable
from typing import Any

import diffrax as dfx
import equinox as eqx
import jax.numpy as jnp
import jax.tree_util as jtu
from jaxtyping import Array, PyTree, Real, Shaped

from ._custom_types import RealScalarLike


def micro_times(
    t0: RealScalarLike, t1: RealScalarLike, num_micro_steps: int
) -> Real[Array, " num_micro_steps+1"]:
    """Return the `num_micro_steps + 1` equally spaced times from `t0` to `t1`.

    The solver step and the interpolation both call this, so that they agree on every
    micro-step boundary to the last bit. The ends are exactly `t0` and `t1`.
    """
    t0 = jnp.asarray(t0)
    t1 = jnp.asarray(t1)
    fractions = jnp.arange(num_micro_steps + 1, dtype=t0.dtype) / num_micro_steps
    ts = t0 + (t1 - t0) * fractions
    return ts.at[-1].set(t1)


class WindowInterpolation(dfx.AbstractLocalInterpolation):
    """Dense output over one window of micro-steps.

    It locates the micro-step that contains the requested time and evaluates the base
    solver's own interpolation there. For example, diffrax documents 5th-order
    interpolation for Tsit5 and Dopri5 and 8th-order for Dopri8. Dense output thus has
    the accuracy of the base method on the micro-grid.

    **Attributes:**

    - `t0`, `t1`: the ends of the window.
    - `micro_infos`: the dense information of the base solver for every micro-step,
        stacked along a leading axis of length `num_micro_steps`. For the supported
        solvers it contains `y0` (the state at the start of each micro-step), `y1`
        (the converged state at its end) and, for Runge--Kutta solvers, the stages
        `k`.
    - `num_newton_steps`: the number of Newton steps taken to solve the window, as a
        float in the dtype of the times.
    - `base_interpolation_cls`: the interpolation of the base solver.
    """

    t0: Real[Array, ""]
    t1: Real[Array, ""]
    micro_infos: PyTree[Shaped[Array, "num_micro_steps ..."]]
    num_newton_steps: Real[Array, ""]
    # Static: a class (or class method) rather than an array.
    base_interpolation_cls: Callable[..., dfx.AbstractLocalInterpolation] = eqx.field(
        static=True
    )

    @property
    def num_micro_steps(self) -> int:
        """The number of micro-steps in the window."""
        return jtu.tree_leaves(self.micro_infos)[0].shape[0]

    def _micro_interpolation(
        self, t: RealScalarLike, left: bool
    ) -> dfx.AbstractLocalInterpolation:
        ts = micro_times(self.t0, self.t1, self.num_micro_steps)
        # At an interior boundary `ts[j]`, `left=True` selects micro-step `j - 1` (which
        # ends there) and `left=False` selects micro-step `j` (which starts there).
        side = "left" if left else "right"
        index = jnp.searchsorted(ts[1:-1], t, side=side)
        info = jtu.tree_map(lambda x: x[index], self.micro_infos)
        return self.base_interpolation_cls(t0=ts[index], t1=ts[index + 1], **info)

    def evaluate(
        self,
        t0: RealScalarLike,
        t1: RealScalarLike | None = None,
        left: bool = True,
    ) -> PyTree[Array]:
        """Evaluate the solution at `t0`, or its increment from `t0` to `t1`."""
        if t1 is not None:
            return jtu.tree_map(
                lambda a, b: a - b,
                self.evaluate(t1, left=left),
                self.evaluate(t0, left=left),
            )
        return self._micro_interpolation(t0, left).evaluate(t0, left=left)

    def derivative(self, t: RealScalarLike, left: bool = True) -> PyTree[Array]:
        """Evaluate the time derivative of the solution at `t`."""
        return self._micro_interpolation(t, left).derivative(t, left=left)


class WindowInterpolationFactory(eqx.Module):
    """Build a [`WindowInterpolation`][] from what diffrax stores for each step.

    Diffrax calls `solver.interpolation_cls(t0=..., t1=..., **dense_info)`. This
    callable fills in the base interpolation. Being an `eqx.Module`, two factories for
    the same base interpolation compare equal, so a solution that stores one does not
    trigger recompilation when passed to a jitted function again.
    """

    base_interpolation_cls: Callable[..., dfx.AbstractLocalInterpolation] = eqx.field(
        static=True
    )

    def __call__(self, *, t0: Any, t1: Any, **dense_info: Any) -> WindowInterpolation:
        # Statistics stored beside the interpolation data play no part in it.
        dense_info.pop("lyapunov_exponent", None)
        return WindowInterpolation(
            t0=t0,
            t1=t1,
            base_interpolation_cls=self.base_interpolation_cls,
            **dense_info,
        )
