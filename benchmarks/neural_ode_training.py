"""Time one training step of a neural ODE: `ParallelNewtonSolver` against sequential.

A training step here is `value_and_grad` of a loss through `diffrax.diffeqsolve`. The
vector field is `z' = mlp(z) - z + sin(t + phase)`: an `equinox.nn.MLP` of width 32
and depth 2 with tanh, a linear damping that keeps long solves bounded, and a periodic
forcing with phases spread over the state's entries. Without the forcing the state
settles at an equilibrium within a few time units, and the later windows of a long
solve would be trivial for Newton's method. It is solved with Tsit5 over
`T` micro-steps of 0.01 in float64. The parallel solver uses windows of
`min(T, 1000)` micro-steps and its defaults (`ImplicitScanAdjoint`, and DEER for
d <= 32 or QuasiDEER above). The sequential reference is
`diffrax.diffeqsolve(..., Tsit5(), ConstantStepSize(0.01))`.

For the parallel solver the step is timed twice at parameters perturbed by about 1e-3
(a training step later):

- cold: Newton's method starts every window from its initial state;
- warm: it starts from the trajectory at the unperturbed parameters
    (`initial_guess=window_states(previous_solution)`).

The script checks that every parallel gradient equals the sequential one to a relative
error of 1e-8 and exits with status 1 otherwise.

Run from the repository root: `python benchmarks/neural_ode_training.py [--quick]`.
"""

import argparse
import os
import statistics
import time

from _common import (
    compiled_memory_bytes,
    enable_float64,
    format_mib,
    format_seconds,
    log,
    measure,
    write_report,
    WrongAnswers,
)


enable_float64()

import diffrax as dfx
import equinox as eqx
import jax
import jax.numpy as jnp
import jax.random as jr
import numpy as np

import diffrax_parallel as dp


MICRO_STEP = 0.01
MAX_WINDOW = 1000
WIDTH = 32
NUM_SAVES = 11
GRADIENT_RTOL = 1e-8
PERTURBATION = 1e-3


def _vector_field(t, z, mlp):
    phases = jnp.linspace(0.0, 2 * jnp.pi, z.shape[0], endpoint=False)
    return mlp(z) - z + jnp.sin(t + phases)


def _solve(params, static, y0, solver, dt0, num_steps, max_steps, dense):
    t1 = num_steps * MICRO_STEP
    return dfx.diffeqsolve(
        dfx.ODETerm(_vector_field),
        solver,
        t0=0.0,
        t1=t1,
        dt0=dt0,
        y0=y0,
        args=eqx.combine(params, static),
        saveat=dfx.SaveAt(
            ts=jnp.linspace(0.0, t1, NUM_SAVES), dense=dense, solver_state=dense
        ),
        stepsize_controller=dfx.ConstantStepSize(),
        max_steps=max_steps,
    )


def _relative_error(x, reference) -> float:
    errors = []
    for a, b in zip(jax.tree.leaves(x), jax.tree.leaves(reference)):
        a, b = np.asarray(a), np.asarray(b)
        scale = max(float(np.max(np.abs(b))), 1e-300)
        errors.append(float(np.max(np.abs(a - b))) / scale)
    return max(errors)


def _time(compiled, args, repeats, max_seconds):
    """Return the median seconds of repeated calls after a first one, and its output."""
    output = jax.block_until_ready(compiled(*args))
    durations = []
    while len(durations) < repeats and sum(durations) <= max_seconds:
        start = time.perf_counter()
        jax.block_until_ready(compiled(*args))
        durations.append(time.perf_counter() - start)
    return statistics.median(durations), output


def run_case(size, num_steps, repeats, max_seconds, wrong):
    """Time and check one `(d, T)` case; return its table row."""
    num_micro_steps = min(num_steps, MAX_WINDOW)
    num_windows = num_steps // num_micro_steps
    mlp = eqx.nn.MLP(size, size, WIDTH, 2, activation=jnp.tanh, key=jr.key(size))
    params, static = eqx.partition(mlp, eqx.is_inexact_array)
    y0 = jr.normal(jr.key(1), (size,))
    leaves, treedef = jax.tree.flatten(params)
    keys = jr.split(jr.key(2), len(leaves))
    perturbed = jax.tree.unflatten(
        treedef,
        [p + PERTURBATION * jr.normal(k, p.shape) for p, k in zip(leaves, keys)],
    )

    def parallel_step(params, guess):
        solver = dp.ParallelNewtonSolver(
            dfx.Tsit5(), num_micro_steps=num_micro_steps, initial_guess=guess
        )

        def loss(params):
            sol = _solve(
                params, static, y0, solver, num_micro_steps * MICRO_STEP,
                num_steps, num_windows, True,
            )  # fmt: skip
            aux = (sol.solver_state.num_newton_steps, dp.window_states(sol))
            return jnp.mean(sol.ys**2), aux

        return jax.value_and_grad(loss, has_aux=True)(params)

    def sequential_step(params):
        def loss(params):
            sol = _solve(
                params, static, y0, dfx.Tsit5(), MICRO_STEP, num_steps, num_steps, False
            )
            return jnp.mean(sol.ys**2)

        return jax.value_and_grad(loss)(params)

    cold_guess = jnp.full(
        (num_windows, num_micro_steps, size), jnp.inf, dtype=jnp.float64
    )
    log(f"d={size} T={num_steps}: sequential")
    seq, (_, seq_grad) = measure(
        sequential_step, perturbed, repeats=repeats, max_seconds=max_seconds
    )
    log(f"d={size} T={num_steps}: parallel")
    # One compiled program serves the cold and the warm start: they differ only in
    # the values of the guess.
    start = time.perf_counter()
    compiled = jax.jit(parallel_step).lower(perturbed, cold_guess).compile()
    (_, (_, previous)), _ = jax.block_until_ready(compiled(params, cold_guess))
    compile_seconds = time.perf_counter() - start
    cold_seconds, ((_, (cold_newton, _)), cold_grad) = _time(
        compiled, (perturbed, cold_guess), repeats, max_seconds
    )
    warm_seconds, ((_, (warm_newton, _)), warm_grad) = _time(
        compiled, (perturbed, previous), repeats, max_seconds
    )

    for name, grad in [("cold", cold_grad), ("warm", warm_grad)]:
        error = _relative_error(grad, seq_grad)
        wrong.check(
            error < GRADIENT_RTOL,
            f"d={size} T={num_steps} {name} start: parallel gradient differs from "
            f"the sequential one by {error:.1e} relative (limit {GRADIENT_RTOL:.0e})",
        )
    error = max(
        _relative_error(cold_grad, seq_grad), _relative_error(warm_grad, seq_grad)
    )
    return {
        "d": size,
        "T": num_steps,
        "windows x K": f"{num_windows} x {num_micro_steps}",
        "sequential": format_seconds(seq.run_seconds),
        "parallel (cold)": format_seconds(cold_seconds),
        "parallel (warm)": format_seconds(warm_seconds),
        "Newton cold": int(cold_newton),
        "Newton warm": int(warm_newton),
        "compile seq / par": f"{seq.compile_seconds:.0f} s / {compile_seconds:.0f} s",
        "memory seq / par (MiB)": f"{format_mib(seq.memory_bytes)} / "
        f"{format_mib(compiled_memory_bytes(compiled))}",
        "gradient rel. error": error,
    }


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--quick", action="store_true", help="T = 1000 only, fewer repeats"
    )
    parser.add_argument("--repeats", type=int, default=5, help="timed calls per case")
    parser.add_argument(
        "--max-seconds", type=float, default=20.0, help="timed seconds per program"
    )
    parser.add_argument("--output-dir", default="results/benchmarks")
    args = parser.parse_args()

    sizes = (2, 16, 64)
    lengths = (1000,) if args.quick else (1000, 10_000)
    repeats = 3 if args.quick else args.repeats
    wrong = WrongAnswers()
    rows = [
        run_case(size, num_steps, repeats, args.max_seconds, wrong)
        for num_steps in lengths
        for size in sizes
    ]
    columns = list(rows[0])
    notes = [
        "one training step = `value_and_grad` of the mean squared state at 11 saved "
        "times; vector field mlp(z) - z + sin(t + phase); Tsit5, micro-step 0.01; "
        "parallel: the defaults (DEER for d <= 32, QuasiDEER above; "
        "ImplicitScanAdjoint), windows of min(T, 1000) micro-steps",
        "Newton: total Newton steps over all windows (polishing steps included), at "
        f"parameters perturbed by {PERTURBATION:g} x N(0, 1); warm = started from the "
        "trajectory at the unperturbed parameters",
    ]
    write_report(
        "# Neural ODE training step: parallel against sequential",
        ["float64"],
        notes,
        columns,
        rows,
        os.path.join(args.output_dir, "neural_ode_training.md"),
    )
    wrong.exit_if_any()


if __name__ == "__main__":
    main()
