from ._interpolation import WindowInterpolation as WindowInterpolation
from ._solution import (
    micro_steps as micro_steps,
    num_newton_steps_per_window as num_newton_steps_per_window,
    window_states as window_states,
)
from ._solver import (
    ParallelNewtonSolver as ParallelNewtonSolver,
    ParallelNewtonState as ParallelNewtonState,
)
