"""Quickstart: the Hodgkin–Huxley squid-axon model, solved in parallel over time.

A neuron under a constant current fires periodically. We integrate 1000 ms of it with
10^5 Tsit5 steps of 0.01 ms, once with sequential `diffrax.diffeqsolve` and once with
`diffrax_parallel.ParallelNewtonSolver`, which solves each window of micro-steps by
Newton's method over the whole window at once, and compare the two trajectories.

The model and its parameters are those of A. L. Hodgkin and A. F. Huxley, "A
quantitative description of membrane current and its application to conduction and
excitation in nerve", J. Physiol. 117 (1952), with the membrane potential shifted to
the modern convention (resting potential -65 mV).

Run from the repository root: `python examples/quickstart.py`.
"""

import argparse
import os
import platform
import time

import jax


# Float64, so that the comparison with the sequential solve is at round-off level.
jax.config.update("jax_enable_x64", True)

import diffrax as dfx
import equinox as eqx
import jax.numpy as jnp

import diffrax_parallel as dp


# Membrane capacitance (uF/cm^2), maximal conductances (mS/cm^2), reversal potentials
# (mV) and the applied current (uA/cm^2).
CAPACITANCE = 1.0
G_SODIUM, G_POTASSIUM, G_LEAK = 120.0, 36.0, 0.3
E_SODIUM, E_POTASSIUM, E_LEAK = 50.0, -77.0, -54.387
CURRENT = 10.0


def _exprel(x):
    """`x / (1 - exp(-x))`, continuous at `x = 0` (where it equals 1)."""
    safe = jnp.where(jnp.abs(x) < 1e-6, 1.0, x)
    return jnp.where(jnp.abs(x) < 1e-6, 1.0 + x / 2, safe / -jnp.expm1(-safe))


def hodgkin_huxley(t, y, args):
    """Membrane potential `v` (mV) and gating variables `m`, `h`, `n`; time in ms."""
    del t, args
    v, m, h, n = y
    alpha_m = _exprel((v + 40.0) / 10.0)
    beta_m = 4.0 * jnp.exp(-(v + 65.0) / 18.0)
    alpha_h = 0.07 * jnp.exp(-(v + 65.0) / 20.0)
    beta_h = 1.0 / (1.0 + jnp.exp(-(v + 35.0) / 10.0))
    alpha_n = 0.1 * _exprel((v + 55.0) / 10.0)
    beta_n = 0.125 * jnp.exp(-(v + 65.0) / 80.0)
    sodium = G_SODIUM * m**3 * h * (v - E_SODIUM)
    potassium = G_POTASSIUM * n**4 * (v - E_POTASSIUM)
    leak = G_LEAK * (v - E_LEAK)
    return jnp.stack(
        [
            (CURRENT - sodium - potassium - leak) / CAPACITANCE,
            alpha_m * (1 - m) - beta_m * m,
            alpha_h * (1 - h) - beta_h * h,
            alpha_n * (1 - n) - beta_n * n,
        ]
    )


# The resting state at -65 mV: each gate at its steady state alpha / (alpha + beta).
Y0 = jnp.array([-65.0, 0.0529, 0.5961, 0.3177])


def solve(solver, t1, dt0, num_steps, ts):
    return dfx.diffeqsolve(
        dfx.ODETerm(hodgkin_huxley),
        solver,
        t0=0.0,
        t1=t1,
        dt0=dt0,
        y0=Y0,
        saveat=dfx.SaveAt(ts=ts, solver_state=True),
        stepsize_controller=dfx.ConstantStepSize(),
        max_steps=num_steps,
    )


def time_call(fn, repeats):
    jax.block_until_ready(fn())  # compile and warm up
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        out = jax.block_until_ready(fn())
        times.append(time.perf_counter() - start)
    return out, min(times)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--t1", type=float, default=1000.0, help="end time in ms")
    parser.add_argument("--dt", type=float, default=0.01, help="micro-step in ms")
    parser.add_argument(
        "--num-micro-steps", type=int, default=100, help="micro-steps per window"
    )
    parser.add_argument("--repeats", type=int, default=3, help="timed runs of each")
    parser.add_argument(
        "--output", default="results/quickstart.png", help="where to save the plot"
    )
    options = parser.parse_args()

    num_micro = round(options.t1 / options.dt)
    window = options.num_micro_steps * options.dt
    num_windows = round(options.t1 / window)
    ts = jnp.linspace(0.0, options.t1, 10_001)

    sequential = eqx.filter_jit(
        lambda: solve(dfx.Tsit5(), options.t1, options.dt, num_micro + 1, ts)
    )
    parallel_solver = dp.ParallelNewtonSolver(
        dfx.Tsit5(),
        num_micro_steps=options.num_micro_steps,
        root_finder=dp.DEER(recover_nonfinite=True),
    )
    parallel = eqx.filter_jit(
        lambda: solve(parallel_solver, options.t1, window, num_windows + 1, ts)
    )

    print(
        f"Hodgkin-Huxley, {options.t1:g} ms, {num_micro} Tsit5 steps of {options.dt} ms"
    )
    print(
        f"machine: {platform.machine()}, {os.cpu_count()} CPUs, device "
        f"{jax.devices()[0].device_kind}, jax {jax.__version__}, float64"
    )
    sequential_solution, sequential_time = time_call(sequential, options.repeats)
    parallel_solution, parallel_time = time_call(parallel, options.repeats)

    difference = float(jnp.max(jnp.abs(parallel_solution.ys - sequential_solution.ys)))
    newton_steps = int(parallel_solution.solver_state.num_newton_steps)
    print(f"sequential diffeqsolve(Tsit5):      {sequential_time:8.3f} s")
    print(
        f"parallel ParallelNewtonSolver(Tsit5): {parallel_time:8.3f} s "
        f"({num_windows} windows of {options.num_micro_steps} micro-steps)"
    )
    print(
        f"parallel / sequential time:          {parallel_time / sequential_time:8.2f}"
    )
    print(f"max |parallel - sequential|:         {difference:8.2e} (mV and gates)")
    print(
        f"Newton steps: {newton_steps} in total, "
        f"{newton_steps / num_windows:.2f} per window"
    )
    if not difference < 1e-6:
        raise SystemExit("The parallel and sequential trajectories disagree.")

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axis = plt.subplots(figsize=(10, 4))
    axis.plot(ts, sequential_solution.ys[:, 0], label="sequential diffeqsolve", lw=2.5)
    axis.plot(ts, parallel_solution.ys[:, 0], "--", label="ParallelNewtonSolver", lw=1)
    axis.set_xlabel("time (ms)")
    axis.set_ylabel("membrane potential (mV)")
    axis.set_xlim(0, min(options.t1, 200.0))
    axis.set_title("Hodgkin-Huxley squid axon, constant current 10 uA/cm^2")
    axis.legend(loc="upper right")
    os.makedirs(os.path.dirname(options.output) or ".", exist_ok=True)
    figure.savefig(options.output, dpi=120, bbox_inches="tight")
    print(f"plot saved to {options.output}")


if __name__ == "__main__":
    main()
