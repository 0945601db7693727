from ._interpolation import WindowInterpolation as WindowInterpolation
from ._solution import (
    lyapunov_exponent_per_window as lyapunov_exponent_per_window,
    micro_steps as micro_steps,
    num_newton_steps_per_window as num_newton_steps_per_window,
    window_states as window_states,
)
from ._solver import (
    DefaultRootFinder as DefaultRootFinder,
    ParallelNewtonSolver as ParallelNewtonSolver,
    ParallelNewtonState as ParallelNewtonState,
)
