"""Fit a neural ODE to yearly sunspot numbers, with parallel and sequential solves.

A latent state `z` of size 4 follows `z' = mlp(z)`, and a linear read-out maps it to
the normalised yearly sunspot number. The vector field, the read-out and the initial
latent state are trained with Adam on the first 200 years of the data, three times
from the same initial parameters:

1. with `diffrax_parallel.ParallelNewtonSolver(Tsit5(), ...)`, each training step
   starting its Newton iterations from the previous step's trajectory
   (`initial_guess=window_states(previous_solution)`);
2. with the same solver and no warm start;
3. with sequential `diffrax.Tsit5()` on the same micro-grid.

All three compute the same losses and gradients up to round-off, so the loss curves
must agree step by step (the script fails otherwise). It prints the losses side by
side, the time per training step after compilation and the number of Newton steps,
and saves a plot of the data, the fits and the loss curves.

Data: the yearly mean sunspot numbers 1700-2008 shipped with statsmodels
(`statsmodels.datasets.sunspots`, column `SUNACTIVITY`), loaded offline.

Run from the repository root: `python examples/neural_ode_sunspots.py`. It needs the
`examples` extra (matplotlib, optax, statsmodels).
"""

import argparse
import os
import time

import jax


# Float64, so that the parallel and sequential losses agree to round-off.
jax.config.update("jax_enable_x64", True)

import diffrax as dfx
import equinox as eqx
import jax.numpy as jnp
import jax.random as jr
import numpy as np
import optax

import diffrax_parallel as dp


LATENT_SIZE = 4
WIDTH = 32
# Years per window and micro-steps per window: a micro-step is half a year.
WINDOW_YEARS = 100.0
NUM_MICRO_STEPS = 200
# Windows allowed per solve (diffrax's `max_steps`); 309 years need 4.
MAX_WINDOWS = 4
# Largest relative difference allowed between the parallel and sequential losses.
LOSS_RTOL = 1e-6


class NeuralODE(eqx.Module):
    """Latent ODE `z' = field(z)` from a learnt `z(0)`, observed through `readout`."""

    field: eqx.nn.MLP
    readout: eqx.nn.Linear
    latent0: jax.Array

    def __init__(self, key):
        field_key, readout_key, latent_key = jr.split(key, 3)
        self.field = eqx.nn.MLP(
            LATENT_SIZE, LATENT_SIZE, WIDTH, 2, activation=jnp.tanh, key=field_key
        )
        self.readout = eqx.nn.Linear(LATENT_SIZE, "scalar", key=readout_key)
        self.latent0 = jr.normal(latent_key, (LATENT_SIZE,))


def load_sunspots(num_years: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Return years since the first, normalised sunspot numbers, and calendar years."""
    from statsmodels.datasets import sunspots

    frame = sunspots.load_pandas().data
    calendar_years = frame["YEAR"].to_numpy(dtype=np.float64)[:num_years]
    values = frame["SUNACTIVITY"].to_numpy(dtype=np.float64)[:num_years]
    values = (values - values.mean()) / values.std()
    return calendar_years - calendar_years[0], values, calendar_years


def _vector_field(t, z, field):
    return field(z)


def _solve(model, solver, ts, dt0):
    parallel = isinstance(solver, dp.ParallelNewtonSolver)
    return dfx.diffeqsolve(
        dfx.ODETerm(_vector_field),
        solver,
        t0=ts[0],
        t1=ts[-1],
        dt0=dt0,
        y0=model.latent0,
        args=model.field,
        # The dense output contains the micro-step states that warm-start the next step.
        saveat=dfx.SaveAt(ts=ts, dense=parallel, solver_state=parallel),
        stepsize_controller=dfx.ConstantStepSize(),
        # A sequential step is one micro-step, a parallel step one window.
        max_steps=MAX_WINDOWS * (1 if parallel else NUM_MICRO_STEPS),
    )


def _loss(model, solver, ts, data, dt0):
    sol = _solve(model, solver, ts, dt0)
    prediction = jax.vmap(model.readout)(sol.ys)
    loss = jnp.mean((prediction - data) ** 2)
    if isinstance(solver, dp.ParallelNewtonSolver):
        aux = (prediction, dp.window_states(sol), sol.solver_state.num_newton_steps)
    else:
        aux = (prediction, None, jnp.array(0, dtype=jnp.int32))
    return loss, aux


@eqx.filter_jit
def train_step(model, opt_state, solver, ts, data, dt0, optimiser):
    """One Adam step. Returns the new model and optimiser state, the loss and aux."""
    (loss, aux), grads = eqx.filter_value_and_grad(_loss, has_aux=True)(
        model, solver, ts, data, dt0
    )
    params = eqx.filter(model, eqx.is_inexact_array)
    updates, opt_state = optimiser.update(grads, opt_state, params)
    return eqx.apply_updates(model, updates), opt_state, loss, aux


def train(model, make_solver, warm_start, ts, data, dt0, num_steps, learning_rate):
    """Train from `model`; return losses, Newton steps, seconds per step, final fit.

    `make_solver(initial_guess)` builds the solver of one step. The guess is the
    previous step's trajectory with `warm_start`, and otherwise all `inf`, which the
    solver ignores (it then starts from the window's initial state): the same array
    shape either way, so both compile once.
    """
    optimiser = optax.adam(learning_rate)
    opt_state = optimiser.init(eqx.filter(model, eqx.is_inexact_array))
    # An explicit dtype: a weakly typed guess would recompile on the second step.
    guess = jnp.full(
        (MAX_WINDOWS, NUM_MICRO_STEPS, LATENT_SIZE), jnp.inf, dtype=jnp.float64
    )
    losses, newton_steps = [], []
    start = time.perf_counter()
    for step in range(num_steps):
        if step == 1:
            # Step 0 includes compilation.
            start = time.perf_counter()
        model, opt_state, loss, (prediction, states, num_newton) = train_step(
            model, opt_state, make_solver(guess), ts, data, dt0, optimiser
        )
        losses.append(float(loss))
        newton_steps.append(int(num_newton))
        if warm_start:
            guess = states
    seconds_per_step = (time.perf_counter() - start) / max(num_steps - 1, 1)
    return np.array(losses), np.array(newton_steps), seconds_per_step, prediction


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--num-steps", type=int, default=300, help="training steps")
    parser.add_argument("--num-years", type=int, default=200, help="years to fit")
    parser.add_argument("--learning-rate", type=float, default=1e-2)
    parser.add_argument("--print-every", type=int, default=25, help="steps per line")
    parser.add_argument(
        "--output",
        default="results/neural_ode_sunspots.png",
        help="path of the plot (PNG)",
    )
    args = parser.parse_args()

    years, values, calendar_years = load_sunspots(args.num_years)
    ts, data = jnp.asarray(years), jnp.asarray(values)
    model = NeuralODE(jr.key(0))
    window = jnp.asarray(WINDOW_YEARS)

    def parallel_solver(guess):
        return dp.ParallelNewtonSolver(
            dfx.Tsit5(), num_micro_steps=NUM_MICRO_STEPS, initial_guess=guess
        )

    def sequential_solver(guess):
        return dfx.Tsit5()

    common = (ts, data)
    runs = {}
    for name, make_solver, warm, dt0 in [
        ("parallel, warm start", parallel_solver, True, window),
        ("parallel, cold start", parallel_solver, False, window),
        ("sequential", sequential_solver, False, window / NUM_MICRO_STEPS),
    ]:
        print(f"training: {name} ...", flush=True)
        runs[name] = train(
            model, make_solver, warm, *common, dt0, args.num_steps, args.learning_rate
        )
    report(runs, args, calendar_years, values)


def report(runs, args, calendar_years, values):
    warm_losses, warm_newton, warm_time, warm_fit = runs["parallel, warm start"]
    cold_losses, cold_newton, cold_time, _ = runs["parallel, cold start"]
    seq_losses, _, seq_time, seq_fit = runs["sequential"]
    num_windows = int(np.ceil(args.num_years / WINDOW_YEARS))
    micro_steps = int(round((args.num_years - 1) / WINDOW_YEARS * NUM_MICRO_STEPS))

    print(
        f"\n{args.num_years} years, latent size {LATENT_SIZE}, Tsit5 with "
        f"{micro_steps} micro-steps of {WINDOW_YEARS / NUM_MICRO_STEPS} years, "
        f"{num_windows} windows of {NUM_MICRO_STEPS} micro-steps, Adam "
        f"(learning rate {args.learning_rate}), {args.num_steps} steps, float64\n"
    )
    print("| step | loss (parallel) | loss (sequential) | relative difference |")
    print("|---:|---:|---:|---:|")
    for step in list(range(0, args.num_steps, args.print_every)) + [args.num_steps - 1]:
        difference = abs(warm_losses[step] - seq_losses[step]) / seq_losses[step]
        print(
            f"| {step} | {warm_losses[step]:.10f} | {seq_losses[step]:.10f} | "
            f"{difference:.1e} |"
        )

    worst = max(
        float(np.max(np.abs(losses - seq_losses) / seq_losses))
        for losses in (warm_losses, cold_losses)
    )
    print(f"\nlargest relative loss difference over all steps: {worst:.1e}")
    print("time per training step after compilation (value, gradient, Adam update):")
    print(f"  parallel, warm start: {warm_time * 1e3:.1f} ms")
    print(f"  parallel, cold start: {cold_time * 1e3:.1f} ms")
    print(f"  sequential Tsit5:     {seq_time * 1e3:.1f} ms")
    print("Newton steps per training step (all windows, polishing steps included):")
    print(
        f"  warm start: {warm_newton.sum()} in total, mean {warm_newton.mean():.1f}, "
        f"first step {warm_newton[0]}"
    )
    print(f"  cold start: {cold_newton.sum()} in total, mean {cold_newton.mean():.1f}")
    plot(
        args.output, calendar_years, values, warm_fit, seq_fit, warm_losses, seq_losses
    )
    if worst >= LOSS_RTOL:
        raise SystemExit(
            f"The parallel and sequential losses differ by {worst:.1e} relative, more "
            f"than {LOSS_RTOL:.0e}."
        )


def plot(path, calendar_years, values, parallel_fit, sequential_fit, warm, seq):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, (top, bottom) = plt.subplots(2, 1, figsize=(9, 7))
    top.plot(calendar_years, values, "k.", markersize=3, label="data (normalised)")
    top.plot(calendar_years, parallel_fit, label="fit, ParallelNewtonSolver")
    top.plot(calendar_years, sequential_fit, "--", label="fit, sequential Tsit5")
    top.set_xlabel("year")
    top.set_ylabel("sunspot number (normalised)")
    top.legend(loc="upper left")
    bottom.semilogy(warm, label="ParallelNewtonSolver (warm start)")
    bottom.semilogy(seq, "--", label="sequential Tsit5")
    bottom.set_xlabel("training step")
    bottom.set_ylabel("mean squared error")
    bottom.legend()
    figure.tight_layout()
    directory = os.path.dirname(path)
    if directory:
        os.makedirs(directory, exist_ok=True)
    figure.savefig(path, dpi=120)
    print(f"saved {path}")


if __name__ == "__main__":
    main()
