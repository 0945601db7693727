"""Validation and configuration of the base solver that a window repeats."""

import diffrax as dfx
import equinox as eqx


_SUPPORTED = (
    "diffrax.Euler, or an explicit Runge--Kutta solver (a subclass of "
    "diffrax.AbstractERK with a single Butcher tableau, such as Heun, Midpoint, "
    "Ralston, Bosh3, Tsit5, Dopri5 or Dopri8)"
)


def configure_base_solver(base: object) -> dfx.AbstractSolver:
    """Check that `base` can be solved in parallel over time, and configure it.

    **Arguments:**

    - `base`: the solver that makes each micro-step.

    **Returns:**

    `base`, with its stage loop switched to `scan_kind="bounded"` for Runge--Kutta
    solvers. The default stage loop of diffrax 0.7.2 supports no forward-mode
    differentiation, which the Newton iteration needs, and `"lax"` supports no
    reverse-mode differentiation, which gradients need.

    **Raises:**

    `TypeError` if `base` is not a supported solver.
    """
    # A wrapped solver forwards `isinstance` checks to the solver it wraps, so
    # `HalfSolver(Tsit5())` would pass the checks below. Its step is not one
    # Runge--Kutta step, so it is rejected first.
    if isinstance(base, dfx.AbstractWrappedSolver) or not isinstance(
        base, dfx.AbstractSolver
    ):
        raise TypeError(
            f"ParallelNewtonSolver(base=...) must be {_SUPPORTED}; got "
            f"{type(base).__name__}."
        )
    if type(base) is dfx.Euler:
        return base
    if isinstance(base, dfx.AbstractImplicitSolver):
        raise TypeError(
            f"ParallelNewtonSolver does not support the implicit solver "
            f"{type(base).__name__} as base solver: it would nest a root find inside "
            f"every micro-step. Use {_SUPPORTED}."
        )
    if not isinstance(base, dfx.AbstractERK) or not isinstance(
        base.tableau, dfx.ButcherTableau
    ):
        raise TypeError(
            f"ParallelNewtonSolver(base=...) must be {_SUPPORTED}; got "
            f"{type(base).__name__}, which is not an explicit Runge--Kutta solver "
            "for ODEs."
        )
    return eqx.tree_at(
        lambda solver: solver.scan_kind,
        base,
        "bounded",
        is_leaf=lambda leaf: leaf is None,
    )
