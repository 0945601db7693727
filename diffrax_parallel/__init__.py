"""Parallel-in-time evaluation of ODE solvers and recurrences with Newton-type methods."""

import importlib.metadata

from ._diagnostics import (
    estimate_lyapunov_exponent_from_solution as estimate_lyapunov_exponent_from_solution,
)
from ._diffrax import (
    DefaultRootFinder as DefaultRootFinder,
    lyapunov_exponent_per_window as lyapunov_exponent_per_window,
    micro_steps as micro_steps,
    num_newton_steps_per_window as num_newton_steps_per_window,
    ParallelNewtonSolver as ParallelNewtonSolver,
    ParallelNewtonState as ParallelNewtonState,
    window_states as window_states,
    WindowInterpolation as WindowInterpolation,
)
from ._lineax import (
    affine_recurrence as affine_recurrence,
    BlockBidiagonal as BlockBidiagonal,
    BlockBidiagonalOperator as BlockBidiagonalOperator,
    BlockBidiagonalRichardson as BlockBidiagonalRichardson,
    lower_block_bidiagonal_tag as lower_block_bidiagonal_tag,
    unit_block_diagonal_tag as unit_block_diagonal_tag,
    upper_block_bidiagonal_tag as upper_block_bidiagonal_tag,
)
from ._lyapunov import (
    estimate_lyapunov_exponent as estimate_lyapunov_exponent,
    estimate_lyapunov_exponent_from_jacobians as estimate_lyapunov_exponent_from_jacobians,
    is_predictable as is_predictable,
    LyapunovEstimate as LyapunovEstimate,
    suggest_num_micro_steps as suggest_num_micro_steps,
)
from ._optimistix import (
    AbstractParallelNewton as AbstractParallelNewton,
    AbstractTrustRegionNewton as AbstractTrustRegionNewton,
    DEER as DEER,
    ELK as ELK,
    ImplicitScanAdjoint as ImplicitScanAdjoint,
    Jacobi as Jacobi,
    kalman_smoother as kalman_smoother,
    levenberg_marquardt_step as levenberg_marquardt_step,
    Picard as Picard,
    QuasiDEER as QuasiDEER,
    QuasiELK as QuasiELK,
    RecurrenceSolution as RecurrenceSolution,
    RESULTS as RESULTS,
    solve_recurrence as solve_recurrence,
)


__version__ = importlib.metadata.version("diffrax_parallel")
