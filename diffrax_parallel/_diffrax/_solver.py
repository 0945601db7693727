"""`ParallelNewtonSolver`: one diffrax step solves a window of micro-steps at once."""

import numbers
from collections.abc import Callable
from typing import Any, ClassVar

import diffrax as dfx
import equinox as eqx
import jax
import jax.flatten_util
import jax.numpy as jnp
import jax.tree_util as jtu
import optimistix as optx
from jaxtyping import Array, Bool, Int, PyTree, Real

from .._lineax import (
    affine_recurrence,
    recover_blocks,
    state_structure,
    unit_block_diagonal_tag,
)
from .._lyapunov import suggest_num_micro_steps
from .._optimistix import DEER, ImplicitScanAdjoint, QuasiDEER
from ._base_solvers import configure_base_solver
from ._custom_types import BoolScalarLike, RealScalarLike
from ._interpolation import micro_times, WindowInterpolationFactory
from ._root_find import all_finite, WindowRootFinder


# Root-finder steps allowed beyond `num_micro_steps`, for trust-region methods.
_EXTRA_NEWTON_STEPS = 32


class DefaultRootFinder(optx.AbstractRootFinder):
    """The default root finder of [`ParallelNewtonSolver`][], chosen by state size.

    For states of at most `max_dense_state_size` numbers per step it is
    `DEER(recover_nonfinite=True)`: Newton's method, which falls back to clipped
    diagonal steps when an iterate overflows (a window that contains a spike, say). For
    larger states it is `QuasiDEER()`, whose diagonal Jacobian keeps memory at O(K d)
    per window, where DEER's dense blocks take O(K d^2) and recovering them pushes `d`
    tangents through every stage of the base solver. The choice depends only on shapes,
    so it is made when the solve is traced.

    NOTE: QuasiDEER converges linearly, so its iterate stops with each micro-step's
    residual just under the tolerance (`eps ** 0.75`, 6.4e-6 in float32), and these
    residuals add up along a window. In float32 with windows of 1000 micro-steps its
    trajectories differed from the sequential solve by 5.9e-4 to 1.3e-2 relative
    (Van der Pol, an MLP field, Hodgkin–Huxley). DEER, where it converged (Van der Pol
    and the MLP), differed by 4e-7 to 3e-6, no more than the sequential solve's own
    float32 error. Pass `root_finder=DEER()` or use shorter windows where that
    matters.
    """

    rtol: float | None = None
    atol: float | None = None
    norm: Callable[[PyTree], Any] = optx.max_norm
    max_dense_state_size: int = eqx.field(static=True, default=32)

    def _select(self, y: PyTree) -> optx.AbstractRootFinder:
        if state_structure(y).state_size <= self.max_dense_state_size:
            return DEER(self.rtol, self.atol, self.norm, recover_nonfinite=True)
        return QuasiDEER(self.rtol, self.atol, self.norm)

    def init(self, fn, y, args, options, f_struct, aux_struct, tags):
        selected = self._select(y)
        return selected.init(fn, y, args, options, f_struct, aux_struct, tags)

    def step(self, fn, y, args, options, state, tags):
        return self._select(y).step(fn, y, args, options, state, tags)

    def terminate(self, fn, y, args, options, state, tags):
        return self._select(y).terminate(fn, y, args, options, state, tags)

    def postprocess(self, fn, y, aux, args, options, state, tags, result):
        selected = self._select(y)
        return selected.postprocess(fn, y, aux, args, options, state, tags, result)


def _default_root_finder() -> optx.AbstractRootFinder:
    return DefaultRootFinder()


def _default_adjoint() -> optx.AbstractAdjoint:
    return ImplicitScanAdjoint()


class ParallelNewtonState(eqx.Module):
    """Solver state of [`ParallelNewtonSolver`][], carried between accepted windows.

    Returned as `sol.solver_state` by `diffrax.diffeqsolve(...,
    saveat=diffrax.SaveAt(..., solver_state=True))`.

    **Attributes:**

    - `num_newton_steps`: the total number of Newton steps over all accepted windows.
        Rejected windows are not counted, because diffrax discards the solver state of
        a rejected step.
    - `num_newton_steps_last`: the number of Newton steps of the last accepted window.
    - `num_windows`: the number of accepted windows, which indexes `initial_guess`.
    - `lyapunov_exponent_last`, `lyapunov_exponent_max`: with
        `estimate_lyapunov=True`, the estimated largest Lyapunov exponent (per unit
        time) of the last accepted window and the largest over accepted windows; NaN
        otherwise.
    - `num_unpredictable_windows`: with `estimate_lyapunov=True`, the number of
        accepted windows whose estimated growth `exp(λ H)` over the window length `H`
        exceeds `max_growth`: there Newton cannot converge quickly from a poor guess,
        and shorter windows would help (`diffrax_parallel.suggest_num_micro_steps`).
    """

    num_newton_steps: Int[Array, ""]
    num_newton_steps_last: Int[Array, ""]
    num_windows: Int[Array, ""]
    lyapunov_exponent_last: Real[Array, ""]
    lyapunov_exponent_max: Real[Array, ""]
    num_unpredictable_windows: Int[Array, ""]


def _positive_int(name: str, value: object) -> int:
    """Return `value` as an int, or raise if it is not an integer of at least 1."""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise TypeError(f"`{name}` must be an integer, got {type(value).__name__}.")
    if value < 1:
        raise ValueError(f"`{name}` must be at least 1, got {value}.")
    return int(value)


def _stack_with_start(y0: PyTree[Array], states: PyTree[Array]) -> PyTree[Array]:
    """Return the start of every micro-step: `y0` followed by `states[:-1]`."""
    return jtu.tree_map(
        lambda start, rest: jnp.concatenate([start[None], rest[:-1]]), y0, states
    )


def _to_diffrax_result(
    newton_result: optx.RESULTS, failed: Bool[Array, ""]
) -> dfx.RESULTS:
    """Translate the outcome of a window's root find into a `diffrax.RESULTS`.

    A root find that ran out of steps gives `nonlinear_max_steps_reached`. Every
    other failure (divergence, non-finite iterates, a failed linear solve, or
    non-finite states after a reported success) gives `nonlinear_divergence`. A
    diverging Newton iteration often surfaces as a linear solve of non-finite values,
    and the lineax message for that case blames the user's code.

    NOTE: diffrax 0.7.2 combines step results with `diffrax.RESULTS.where`, which
    accepts items of `diffrax.RESULTS` itself and rejects items of a subclass, so a
    window failure cannot carry its own message naming the remedies (shorter windows,
    a trust-region root finder, more Newton steps); the solver's docstring lists them.
    """
    max_steps = newton_result == optx.RESULTS.nonlinear_max_steps_reached
    # pyright types enumeration members as literals, not as items of their class.
    failure = dfx.RESULTS.where(
        max_steps,
        dfx.RESULTS.nonlinear_max_steps_reached,  # pyright: ignore[reportArgumentType]
        dfx.RESULTS.nonlinear_divergence,  # pyright: ignore[reportArgumentType]
    )
    return dfx.RESULTS.where(failed, failure, dfx.RESULTS.successful)


class ParallelNewtonSolver(dfx.AbstractAdaptiveSolver, dfx.AbstractImplicitSolver):
    """Solve every micro-step of a window at once with a Newton-type root finder.

    One diffrax step is one window `[t0, t1]`, split into `num_micro_steps` equal
    micro-steps of the base solver. The `K = num_micro_steps` states
    `s_1, ..., s_K` solve the stacked system `s_k - step(s_{k-1}) = 0` (with
    `s_0 = y0`), whose Jacobian is block-bidiagonal, so that every Newton iteration
    evaluates all micro-steps in parallel. With the default root finder the states
    equal those of a sequential `diffrax.diffeqsolve` with the base solver on the same
    micro-grid, to round-off.

    !!! Example

        ```python
        solver = diffrax_parallel.ParallelNewtonSolver(
            diffrax.Tsit5(), num_micro_steps=64
        )
        sol = diffrax.diffeqsolve(term, solver, t0=0, t1=10, dt0=1.0, y0=y0)
        ```

    **Windows and step size control.** `dt0` is the window length: with
    `diffrax.ConstantStepSize` the micro-step is `dt0 / num_micro_steps`, and
    `dt0 = t1 - t0` with `max_steps=1` solves the whole interval as one window.
    `diffrax.StepTo(ts=...)` places window ends. With an adaptive controller such as
    `diffrax.PIDController` the window length adapts to the error estimate, which is
    the sum over micro-steps of the absolute embedded error estimates of the base
    solver. With `dt0=None`, diffrax 0.7.2 starts with a window of length 0.01 for the
    terms it wraps and grows it by at most the controller's `factormax` per window:
    pass `dt0` to choose the first window.

    **Failure.** A window whose root find fails (too many Newton steps, divergence,
    non-finite states) gets an infinite error estimate, so an adaptive controller
    rejects it and retries a shorter window. With a constant step size the solve stops
    with an error. The remedies are shorter windows (fewer micro-steps or a smaller
    `dt0`), a trust-region root finder, or more Newton steps (`max_newton_steps`).

    **Outputs.** `SaveAt(ts=...)`, `SaveAt(dense=True)`, `sol.evaluate`,
    `sol.derivative` and events use the base solver's interpolation on the micro-step
    that contains the time. `SaveAt(steps=True)` saves window ends
    only; [`micro_steps`][] returns every micro-step from `SaveAt(dense=True)` output.

    **Statistics.** `sol.stats["num_steps"]` counts windows. Newton steps (including
    the polishing step) are reported by the solver state, see
    [`ParallelNewtonState`][] (`SaveAt(solver_state=True)`), and per window by
    [`num_newton_steps_per_window`][] (`SaveAt(dense=True)`).

    **Tolerances.** The default root finder (`DEER(recover_nonfinite=True)`, or
    `QuasiDEER()` for states of more than 32 numbers) stops when
    the stacked residual `r` satisfies `max|r / (atol + rtol |y|)| < 1` with
    `rtol = atol = eps ** 0.75` of the state's dtype. With the polishing step that
    follows (`polish=True`), the result equals the sequential solve to round-off
    whatever the step size controller. To use an adaptive controller's tolerances
    instead, pass
    `root_finder=diffrax.with_stepsize_controller_tols(diffrax_parallel.DEER)()`.
    (A default cannot do both: diffrax 0.7.2 raises an error when a constant step size
    controller meets a root finder that expects the controller's tolerances.)
    """

    base: dfx.AbstractSolver
    root_finder: optx.AbstractRootFinder
    adjoint: optx.AbstractAdjoint
    initial_guess: PyTree[Array] | None
    estimate_lyapunov: bool = eqx.field(static=True)
    max_growth: float = eqx.field(static=True)
    # Static: they fix array shapes and loop bounds.
    num_micro_steps: int = eqx.field(static=True)
    max_newton_steps: int = eqx.field(static=True)
    polish: bool = eqx.field(static=True)

    def __init__(
        self,
        base: dfx.AbstractSolver,
        *,
        num_micro_steps: int = 32,
        root_finder: optx.AbstractRootFinder | None = None,
        adjoint: optx.AbstractAdjoint | None = None,
        max_newton_steps: int | None = None,
        polish: bool = True,
        initial_guess: PyTree[Array] | None = None,
        estimate_lyapunov: bool = False,
        max_growth: float = 1e3,
    ):
        """**Arguments:**

        - `base`: the solver of each micro-step: `diffrax.Euler()` or an explicit
            Runge--Kutta solver (`Heun`, `Midpoint`, `Ralston`, `Bosh3`, `Tsit5`,
            `Dopri5`, `Dopri8`). Its stage loop is switched to `scan_kind="bounded"`,
            which supports both forward- and reverse-mode differentiation.
        - `num_micro_steps`: the number `K >= 1` of equal micro-steps per window.
        - `root_finder`: an `optimistix.AbstractRootFinder` for the stacked window
            system. The default, [`DefaultRootFinder`][], is
            `DEER(recover_nonfinite=True)` (Newton's method that falls back to clipped
            diagonal steps when an iterate overflows) for states of at most 32 numbers
            and `QuasiDEER()` for larger ones. Others: `DEER()`, `QuasiDEER()`,
            `ELK()` or `optimistix.Newton(rtol=..., atol=...)`.
        - `adjoint`: the `optimistix.AbstractAdjoint` that differentiates the root
            find. Defaults to `diffrax_parallel.ImplicitScanAdjoint()`: the implicit
            function theorem, one reverse scan, exact gradients that do not pass
            through the Newton iterations.
        - `max_newton_steps`: the maximum number of root-finder steps per window.
            Defaults to `num_micro_steps + 32`. Undamped methods (DEER, QuasiDEER,
            Picard, Jacobi) reach the root in at most `num_micro_steps` steps, because
            after step `j` the first `j` states are exact (each depends only on its
            predecessor). A trust-region method (ELK, QuasiELK) may reject steps, and
            the 32 extra steps leave room for that. (QuasiELK needed up to 27 steps on
            windows of Van der Pol that DEER solved in 6.)
        - `polish`: whether to take one more root-finder step after the root finder
            reports convergence. Its residual test bounds the defect of each
            micro-step, and the defects add up over the window, so without this step
            the states can differ from a sequential solve by about `num_micro_steps`
            times the root finder's tolerance (1e-2 measured in float32 with 100
            micro-steps). With Newton's method (DEER) the extra step brings them to
            round-off, for one more Newton step per window.
        - `initial_guess`: a warm start: the states at every micro-step of a previous
            solve, as returned by [`window_states`][], with leaves of shape
            `(num_windows, num_micro_steps, ...)`. Window `i` starts its Newton
            iteration from entry `i` (the previous trajectory of a training step, for
            example) when that entry's residual is no larger than that of the
            default start, the window's initial state at every micro-step. Comparing
            them costs two parallel evaluations of the micro-steps per window.
            Windows beyond its length, and entries that are not finite (the padding
            after the last window), take the default start.
        - `estimate_lyapunov`: whether to estimate the largest Lyapunov exponent of
            every accepted window (about the cost of one more Newton step per window),
            reported in the solver state and per window by
            [`lyapunov_exponent_per_window`][].
        - `max_growth`: with `estimate_lyapunov=True`, a window whose estimated growth
            `exp(λ H)` exceeds this is counted in
            `ParallelNewtonState.num_unpredictable_windows`.
        """
        self.base = configure_base_solver(base)
        self.initial_guess = initial_guess
        if not isinstance(estimate_lyapunov, bool):
            raise TypeError(
                f"`estimate_lyapunov` must be a bool, got {type(estimate_lyapunov)}."
            )
        self.estimate_lyapunov = estimate_lyapunov
        if not max_growth > 1:
            raise ValueError(f"`max_growth` must be greater than 1, got {max_growth}.")
        self.max_growth = float(max_growth)
        num_micro_steps = _positive_int("num_micro_steps", num_micro_steps)
        self.num_micro_steps = num_micro_steps
        if root_finder is None:
            root_finder = _default_root_finder()
        if not isinstance(root_finder, optx.AbstractRootFinder):
            raise TypeError(
                "`root_finder` must be an optimistix.AbstractRootFinder, got "
                f"{type(root_finder).__name__}."
            )
        self.root_finder = root_finder
        if adjoint is None:
            adjoint = _default_adjoint()
        if not isinstance(adjoint, optx.AbstractAdjoint):
            raise TypeError(
                "`adjoint` must be an optimistix.AbstractAdjoint, got "
                f"{type(adjoint).__name__}."
            )
        self.adjoint = adjoint
        if max_newton_steps is None:
            max_newton_steps = num_micro_steps + _EXTRA_NEWTON_STEPS
        max_newton_steps = _positive_int("max_newton_steps", max_newton_steps)
        self.max_newton_steps = max_newton_steps
        if not isinstance(polish, bool):
            raise TypeError(f"`polish` must be a bool, got {type(polish).__name__}.")
        self.polish = polish

    @classmethod
    def from_lyapunov_exponent(
        cls,
        base: dfx.AbstractSolver,
        lyapunov_exponent: float,
        dt: float,
        *,
        max_num_micro_steps: int,
        max_growth: float = 1.5,
        **kwargs: Any,
    ) -> tuple["ParallelNewtonSolver", float]:
        """Builds a solver whose windows are as long as predictability allows.

        Chooses `num_micro_steps` with [`suggest_num_micro_steps`][]: the largest `K`
        with `exp(λ K dt) <= max_growth`, capped at `max_num_micro_steps` (which is
        used when `λ <= 0`). Estimate `λ` beforehand, for example with
        [`estimate_lyapunov_exponent`][] on a short sequential run, or from
        `estimate_lyapunov=True` on a previous solve.

        **Arguments:**

        - `base`: the base solver, as for `__init__`.
        - `lyapunov_exponent`: the largest Lyapunov exponent per unit time.
        - `dt`: the micro-step size.
        - `max_num_micro_steps`: the largest window, in micro-steps.
        - `max_growth`: the bound on `exp(λ K dt)`.
        - `**kwargs`: passed on to `__init__`.

        **Returns:**

        A pair `(solver, window_length)`: pass `window_length` (`K dt`) as the `dt0` of
        `diffrax.diffeqsolve` with `diffrax.ConstantStepSize()`.
        """
        num_micro_steps = int(
            suggest_num_micro_steps(
                float(lyapunov_exponent),
                float(dt),
                max_num_micro_steps=max_num_micro_steps,
                max_growth=max_growth,
            )
        )
        solver = cls(base, num_micro_steps=num_micro_steps, **kwargs)
        return solver, num_micro_steps * float(dt)

    # ---- What diffrax reads from a solver ------------------------------------------

    term_structure: ClassVar = dfx.AbstractTerm

    # A property rather than a class attribute: it depends on the base solver.
    @property
    def interpolation_cls(self) -> Callable[..., Any]:  # pyright: ignore[reportIncompatibleMethodOverride]
        return WindowInterpolationFactory(self.base.interpolation_cls)

    @property
    def term_compatible_contr_kwargs(self):  # pyright: ignore[reportIncompatibleVariableOverride]
        return self.base.term_compatible_contr_kwargs

    @property
    def root_find_max_steps(self) -> int:  # pyright: ignore[reportIncompatibleVariableOverride]
        return self.max_newton_steps

    def order(self, terms: PyTree[dfx.AbstractTerm]) -> int | None:
        return self.base.order(terms)

    def error_order(self, terms: PyTree[dfx.AbstractTerm]) -> RealScalarLike | None:
        # The window error estimate is a sum of K micro-step estimates, each of size
        # C (H/K)^(p+1) for a window of length H, so at fixed K it scales like
        # H^(p+1): the same power as one step of the base solver.
        return self.base.error_order(terms)

    def func(
        self, terms: PyTree[dfx.AbstractTerm], t0: RealScalarLike, y0: PyTree, args
    ) -> PyTree:
        return self.base.func(terms, t0, y0, args)

    def init(
        self,
        terms: PyTree[dfx.AbstractTerm],
        t0: RealScalarLike,
        t1: RealScalarLike,
        y0: PyTree,
        args: PyTree,
    ) -> ParallelNewtonState:
        del terms, t0, t1, args
        zero = jnp.array(0, dtype=jnp.int32)
        nan = jnp.array(jnp.nan, dtype=jnp.result_type(*jtu.tree_leaves(y0)))
        return ParallelNewtonState(
            num_newton_steps=zero,
            num_newton_steps_last=zero,
            num_windows=zero,
            lyapunov_exponent_last=nan,
            lyapunov_exponent_max=nan,
            num_unpredictable_windows=zero,
        )

    # ---- One window ----------------------------------------------------------------

    def _micro_steps(
        self,
        terms: PyTree[dfx.AbstractTerm],
        ts: Real[Array, " K+1"],
        starts: PyTree[Array],
        args: PyTree,
    ) -> tuple[PyTree[Array], PyTree[Array] | None, PyTree[Array], dfx.RESULTS]:
        """Make every micro-step `k` from `starts[k]`, all at once (vmapped over k).

        The base solver state is re-initialised per micro-step, so FSAL solvers
        evaluate their first stage afresh: `vf(t_k, s_k)` is the same value that a
        sequential solve carries over from the previous step.
        """

        def one_step(t0, t1, y0):
            base_state = self.base.init(terms, t0, t1, y0, args)
            y1, y_error, dense_info, _, result = self.base.step(
                terms, t0, t1, y0, args, base_state, False
            )
            return y1, y_error, dense_info, result

        return jax.vmap(one_step)(ts[:-1], ts[1:], starts)

    def step(
        self,
        terms: PyTree[dfx.AbstractTerm],
        t0: RealScalarLike,
        t1: RealScalarLike,
        y0: PyTree,
        args: PyTree,
        solver_state: ParallelNewtonState,
        made_jump: BoolScalarLike,
    ) -> tuple[PyTree, PyTree | None, dict[str, Any], ParallelNewtonState, dfx.RESULTS]:
        # Every micro-step re-evaluates its first stage, so a jump needs no handling.
        del made_jump
        ts = micro_times(t0, t1, self.num_micro_steps)

        def residual(states, residual_args):
            _terms, _ts, _y0, _args = residual_args
            starts = _stack_with_start(_y0, states)
            ends, _, _, _ = self._micro_steps(_terms, _ts, starts, _args)
            return jtu.tree_map(jnp.subtract, states, ends)

        residual_args = (terms, ts, y0, args)
        y_guess = self._initial_guess(
            y0, solver_state.num_windows, residual, residual_args
        )
        root_sol = optx.root_find(
            residual,
            WindowRootFinder(self.root_finder, self.polish),
            y_guess,
            residual_args,
            adjoint=self.adjoint,
            throw=False,
            max_steps=self.max_newton_steps,
            # Residual k is `s_k - step(s_{k-1})`: its diagonal Jacobian blocks are
            # the identity, which halves the cost of recovering the blocks.
            tags=frozenset({unit_block_diagonal_tag}),
        )
        states = root_sol.value
        newton_ok = root_sol.result == optx.RESULTS.successful
        num_newton_steps = jnp.asarray(root_sol.stats["num_steps"], dtype=jnp.int32)
        if self.polish:
            # The polishing step follows a successful root find only.
            num_newton_steps = num_newton_steps + newton_ok.astype(jnp.int32)
        # Dense output stores the count as a float: diffrax pads unused dense-output
        # slots with `inf`, which an integer array cannot hold.
        newton_count = num_newton_steps.astype(ts.dtype)

        # One more parallel evaluation at the converged states gives each micro-step's
        # error estimate and dense information.
        starts = _stack_with_start(y0, states)
        _, micro_errors, micro_infos, micro_results = self._micro_steps(
            terms, ts, starts, args
        )
        failed = jnp.invert(
            newton_ok
            & jnp.all(micro_results == dfx.RESULTS.successful)
            & all_finite(states)
        )
        if isinstance(micro_infos, dict) and "y1" in micro_infos:
            # Store the converged states as micro-step ends, so that dense output is
            # continuous across micro-steps and its ends agree with `y1`. The base
            # step's own ends differ from them by the root-find residual.
            micro_infos = dict(micro_infos, y1=states)
        # A failed window returns NaN, so that nothing can use it silently. An adaptive
        # controller rejects it, and a constant step size stops with an error.
        y1 = jtu.tree_map(lambda leaf: jnp.where(failed, jnp.nan, leaf[-1]), states)
        y_error = self._window_error(micro_errors, failed)
        dense_info = dict(micro_infos=micro_infos, num_newton_steps=newton_count)
        if self.estimate_lyapunov:
            lyapunov = self._window_lyapunov_exponent(
                residual, (terms, ts, y0, args), states, t1 - t0
            )
            dense_info["lyapunov_exponent"] = lyapunov
            growth = lyapunov * jnp.abs(t1 - t0)
            unpredictable = growth > jnp.log(self.max_growth)
        else:
            lyapunov = solver_state.lyapunov_exponent_last
            unpredictable = jnp.array(False)
        new_solver_state = ParallelNewtonState(
            num_newton_steps=solver_state.num_newton_steps + num_newton_steps,
            num_newton_steps_last=num_newton_steps,
            num_windows=solver_state.num_windows + 1,
            lyapunov_exponent_last=lyapunov,
            lyapunov_exponent_max=jnp.fmax(
                solver_state.lyapunov_exponent_max, lyapunov
            ),
            num_unpredictable_windows=solver_state.num_unpredictable_windows
            + unpredictable.astype(jnp.int32),
        )
        result = _to_diffrax_result(root_sol.result, failed)
        return y1, y_error, dense_info, new_solver_state, result

    def _window_lyapunov_exponent(self, residual, residual_args, states, length):
        """Estimates the largest Lyapunov exponent over a converged window.

        The blocks `A_k = ∂step_k/∂s` come from `d` colouring JVPs of the stacked
        residual (whose blocks are `-A_k`), and one scan multiplies them into a unit
        vector: `λ ≈ log ||A_K ... A_1 v|| / H`. The cost is about one Newton step. A
        single start vector `v` (all ones, normalised) underestimates `λ` only when it
        is orthogonal to the most expanding direction.
        """
        structure = state_structure(states)
        _, linear_fn = jax.linearize(lambda y: residual(y, residual_args), states)
        lower, _ = recover_blocks(linear_fn, structure, unit_diagonal=True)
        # The first block `A_1` is the derivative with respect to `y0`, which the
        # stacked residual treats as data: one more JVP gives it.
        size = structure.state_size
        start = jnp.ones(size, structure.dtype) / jnp.sqrt(size)
        first = self._first_step_product(residual, residual_args, states, start)
        offsets = jnp.zeros((structure.num_steps, size), first.dtype).at[0].set(first)
        products = affine_recurrence(-lower, offsets)
        growth = jnp.log(jnp.linalg.norm(products[-1]))
        return growth / jnp.abs(length)

    def _first_step_product(self, residual, residual_args, states, vector):
        terms, ts, y0, args = residual_args
        flat_y0, unravel = jax.flatten_util.ravel_pytree(y0)

        def first_end(flat):
            ends, _, _, _ = self._micro_steps(
                terms,
                ts[:2],
                jtu.tree_map(lambda leaf: leaf[None], unravel(flat)),
                args,
            )
            return jax.flatten_util.ravel_pytree(jtu.tree_map(lambda e: e[0], ends))[0]

        return jax.jvp(first_end, (flat_y0,), (vector.astype(flat_y0.dtype),))[1]

    def _initial_guess(
        self,
        y0: PyTree,
        window: Int[Array, ""],
        residual: Callable[[PyTree, PyTree], PyTree],
        residual_args: PyTree,
    ) -> PyTree:
        """Returns the starting point of this window's root find.

        Without a usable warm start it is the window's initial state at every
        micro-step. With one, it is the warm start unless that constant has a smaller
        residual in the max norm, so a stale guess does not replace a better default.
        (On an equilibrium, for example, the constant is exact, while the trajectory
        of the previous parameters is not.)
        """
        constant = jtu.tree_map(
            lambda leaf: jnp.broadcast_to(leaf, (self.num_micro_steps,) + leaf.shape),
            y0,
        )
        if self.initial_guess is None:
            return constant
        guess_leaves = jtu.tree_leaves(self.initial_guess)
        if not all(eqx.is_array(leaf) for leaf in guess_leaves):
            types = sorted({type(leaf).__name__ for leaf in guess_leaves})
            raise TypeError(
                "`initial_guess` must be a PyTree of arrays, as returned by "
                f"`window_states`; got leaves of types {types}."
            )
        expected = [(self.num_micro_steps,) + jnp.shape(x) for x in jtu.tree_leaves(y0)]
        if len(guess_leaves) != len(expected) or any(
            g.shape[1:] != e for g, e in zip(guess_leaves, expected)
        ):
            raise ValueError(
                "`initial_guess` must have the structure of `y0` with two leading axes "
                "(windows, micro-steps), as returned by `window_states`; got leaf "
                f"shapes {[g.shape for g in guess_leaves]} for states of shape "
                f"{[e[1:] for e in expected]} and {self.num_micro_steps} micro-steps."
            )
        num_guesses = guess_leaves[0].shape[0]
        if num_guesses == 0:
            raise ValueError(
                "`initial_guess` must contain at least one window; got leaf shapes "
                f"{[g.shape for g in guess_leaves]}. Pass `None` for no warm start."
            )
        index = jnp.minimum(window, num_guesses - 1)
        guess = jtu.tree_map(
            lambda leaf: jax.lax.stop_gradient(leaf[index]), self.initial_guess
        )
        guess = jtu.tree_map(lambda a, b: a.astype(b.dtype), guess, constant)
        # The choice is discrete, so no gradient flows through these evaluations.
        residual_args = jtu.tree_map(
            lambda x: jax.lax.stop_gradient(x) if eqx.is_array(x) else x,
            residual_args,
        )

        def residual_size(states):
            size = optx.max_norm(residual(states, residual_args))
            return jnp.where(jnp.isfinite(size), size, jnp.inf)

        usable = (window < num_guesses) & all_finite(guess)
        # Two more parallel evaluations of the micro-steps, cheaper than the Newton
        # steps that a worse start costs.
        prefer_guess = usable & (residual_size(guess) <= residual_size(constant))
        return jtu.tree_map(lambda a, b: jnp.where(prefer_guess, a, b), guess, constant)

    @staticmethod
    def _window_error(
        micro_errors: PyTree[Array] | None, failed: Bool[Array, ""]
    ) -> PyTree[Array] | None:
        """Combine micro-step error estimates into one for the window.

        The sum of absolute values bounds the local errors accumulated over the window
        (to first order, neglecting their propagation by the flow), and cannot cancel
        the way a signed sum can. A failed window gets `inf`, so that an adaptive
        controller rejects it.
        """
        if micro_errors is None:
            # NOTE: a base solver without an error estimate (Euler) gives no window
            # estimate, so a failed window is only reported through the result, and
            # adaptive controllers raise an error at trace time.
            return None
        return jtu.tree_map(
            lambda e: jnp.where(failed, jnp.inf, jnp.sum(jnp.abs(e), axis=0)),
            micro_errors,
        )
