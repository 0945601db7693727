"""Failure codes whose messages name the remedy."""

import optimistix as optx


class RESULTS(optx.RESULTS):  # pyright: ignore[reportGeneralTypeIssues]
    """The outcome of a parallel solve: `optimistix.RESULTS` plus parallel failures."""

    newton_max_steps_reached = (
        "The parallel Newton iteration did not converge within `max_steps` iterations. "
        "Try a trust-region root finder (`diffrax_parallel.ELK` or `QuasiELK`), shorter "
        "windows (fewer micro-steps per window), a better initial guess, or a larger "
        "`max_steps`. Dynamics with a positive largest Lyapunov exponent need close to "
        "T iterations on long horizons."
    )
    newton_nonfinite = (
        "The parallel Newton iteration produced a non-finite (inf or NaN) iterate: the "
        "linearised dynamics are expanding along the current guess, so the scan "
        "overflowed. Use a trust-region root finder (`diffrax_parallel.ELK` or "
        "`QuasiELK`) or shorter windows. The last finite iterate was kept."
    )
    trust_region_stalled = (
        "The trust-region iteration stalled at a point where the residual is not small: "
        "a local minimum of the squared residual that is not a root, or a trust region "
        "that collapsed. Try a better initial guess, shorter windows, or a larger "
        "`max_steps`."
    )


def promote_root_find_result(result: optx.RESULTS) -> RESULTS:
    """Converts an `optimistix.RESULTS` of our root finders into our `RESULTS`.

    Maximum steps, non-finite iterates (DEER and its variants) and divergence (the stall
    of a trust region) become the messages above, which name the remedy.
    """
    promoted = RESULTS.promote(result)
    promoted = RESULTS.where(
        result == optx.RESULTS.nonlinear_max_steps_reached,
        RESULTS.newton_max_steps_reached,
        promoted,
    )
    promoted = RESULTS.where(
        result == optx.RESULTS.nonfinite, RESULTS.newton_nonfinite, promoted
    )
    return RESULTS.where(
        result == optx.RESULTS.nonlinear_divergence,
        RESULTS.trust_region_stalled,
        promoted,
    )
