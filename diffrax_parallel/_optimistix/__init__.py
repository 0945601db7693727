from ._adjoint import ImplicitScanAdjoint as ImplicitScanAdjoint
from ._elk import (
    AbstractTrustRegionNewton as AbstractTrustRegionNewton,
    ELK as ELK,
    QuasiELK as QuasiELK,
)
from ._kalman import (
    kalman_smoother as kalman_smoother,
    levenberg_marquardt_step as levenberg_marquardt_step,
)
from ._newton import (
    AbstractParallelNewton as AbstractParallelNewton,
    DEER as DEER,
    default_tolerance as default_tolerance,
    Jacobi as Jacobi,
    Picard as Picard,
    QuasiDEER as QuasiDEER,
)
from ._recurrence import (
    RecurrenceSolution as RecurrenceSolution,
    solve_recurrence as solve_recurrence,
)
from ._results import RESULTS as RESULTS
