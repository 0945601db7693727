"""Test problems of the benchmarks: vector fields in diffrax form `f(t, y, args)`, a
hand-written RK4 step map, and a GRU cell with random contracting weights."""

import math

import jax
import jax.numpy as jnp
import jax.random as jr
import numpy as np
from jax import lax


def rk4_step(vector_field, y, dt, args):
    """Makes one classical fourth-order Runge–Kutta step of an autonomous ODE."""
    k1 = vector_field(None, y, args)
    k2 = vector_field(None, y + 0.5 * dt * k1, args)
    k3 = vector_field(None, y + 0.5 * dt * k2, args)
    k4 = vector_field(None, y + dt * k3, args)
    return y + (dt / 6) * (k1 + 2 * k2 + 2 * k3 + k4)


# ---- Van der Pol --------------------------------------------------------------------


def van_der_pol(t, y, args):
    """`x' = v`, `v' = mu (1 - x^2) v - x`, with `args = mu`."""
    del t
    mu = args
    x, v = y[0], y[1]
    return jnp.stack([v, mu * (1 - x**2) * v - x])


# ---- Lorenz-63 ----------------------------------------------------------------------

LORENZ_PARAMETERS = (10.0, 28.0, 8.0 / 3.0)  # sigma, rho, beta


def lorenz63(t, y, args):
    """Lorenz (1963): `x' = sigma (y - x)`, `y' = x (rho - z) - y`, `z' = x y - beta z`."""
    del t
    sigma, rho, beta = args
    x, v, z = y[0], y[1], y[2]
    return jnp.stack([sigma * (v - x), x * (rho - z) - v, x * v - beta * z])


def lorenz_attractor_start() -> np.ndarray:
    """Returns a point on the Lorenz attractor, in float64.

    It is the state at time 20 of the solution from `(1, 1, 1)`, computed with 20000
    RK4 steps of 0.001 in float64: about 18 Lyapunov times (largest exponent 0.906),
    after which the transient has decayed onto the attractor.
    """
    args = tuple(jnp.asarray(p, jnp.float64) for p in LORENZ_PARAMETERS)
    y0 = jnp.ones(3, jnp.float64)

    def body(y, _):
        return rk4_step(lorenz63, y, 0.001, args), None

    y, _ = lax.scan(body, y0, None, length=20000)
    return np.asarray(y)


# ---- Hodgkin–Huxley -----------------------------------------------------------------
# Squid giant axon: A. L. Hodgkin and A. F. Huxley, "A quantitative description of
# membrane current and its application to conduction and excitation in nerve",
# J. Physiol. 117 (1952) 500-544. Parameters of that paper, written in the modern
# convention (membrane potential V in mV, resting near -65 mV, time in ms): C_m = 1
# uF/cm^2, g_Na = 120, g_K = 36, g_L = 0.3 mS/cm^2, E_Na = 50, E_K = -77,
# E_L = -54.387 mV. A constant current of 10 uA/cm^2 makes the neuron fire repeatedly.

HODGKIN_HUXLEY_CURRENT = 10.0  # uA/cm^2


def _x_over_one_minus_exp(x, scale):
    """`x / (1 - exp(-x / scale))`, continuous at `x = 0` where it equals `scale`."""
    u = x / scale
    small = jnp.abs(u) < 1e-6
    safe_u = jnp.where(small, jnp.ones_like(u), u)
    return scale * jnp.where(small, 1 + 0.5 * u, safe_u / -jnp.expm1(-safe_u))


def _hh_rates(v):
    """Opening and closing rates (1/ms) of the gates m, h and n at potential `v` (mV)."""
    alpha_m = 0.1 * _x_over_one_minus_exp(v + 40, 10.0)
    beta_m = 4.0 * jnp.exp(-(v + 65) / 18)
    alpha_h = 0.07 * jnp.exp(-(v + 65) / 20)
    beta_h = 1 / (1 + jnp.exp(-(v + 35) / 10))
    alpha_n = 0.01 * _x_over_one_minus_exp(v + 55, 10.0)
    beta_n = 0.125 * jnp.exp(-(v + 65) / 80)
    return (alpha_m, beta_m), (alpha_h, beta_h), (alpha_n, beta_n)


def hodgkin_huxley(t, y, args):
    """Hodgkin–Huxley membrane equations; `y = (V, m, h, n)`, `args = current`."""
    del t
    current = args
    v, m, h, n = y[0], y[1], y[2], y[3]
    sodium = 120.0 * m**3 * h * (v - 50.0)
    potassium = 36.0 * n**4 * (v + 77.0)
    leak = 0.3 * (v + 54.387)
    dv = current - sodium - potassium - leak  # C_m = 1 uF/cm^2
    gates = jnp.stack([m, h, n])
    rates = _hh_rates(v)
    alpha = jnp.stack([rate[0] for rate in rates])
    beta = jnp.stack([rate[1] for rate in rates])
    dgates = alpha * (1 - gates) - beta * gates
    return jnp.concatenate([dv[None], dgates])


def hodgkin_huxley_rest() -> np.ndarray:
    """Returns `(V, m, h, n)` at V = -65 mV with each gate at its steady state."""
    v = jnp.asarray(-65.0, jnp.float64)
    gates = [alpha / (alpha + beta) for alpha, beta in _hh_rates(v)]
    return np.asarray(jnp.stack([v, *gates]))


# ---- Random MLP neural ODE ----------------------------------------------------------


def mlp_parameters(size: int, seed: int = 0) -> dict[str, np.ndarray]:
    """Random weights of `f(y) = W2 tanh(W1 y + b1)` with hidden width `2 size`.

    Entries are normal with variance 1 / fan-in, the usual initialisation, so the
    vector field and its Jacobian are of order one. The field is bounded, so solutions
    grow at most linearly in time.
    """
    hidden = 2 * size
    k1, k2, k3 = jr.split(jr.key(seed), 3)
    return {
        "w1": np.asarray(jr.normal(k1, (hidden, size)) / math.sqrt(size)),
        "b1": np.asarray(jr.normal(k2, (hidden,))),
        "w2": np.asarray(jr.normal(k3, (size, hidden)) / math.sqrt(hidden)),
    }


def mlp_vector_field(t, y, args):
    del t
    hidden = jnp.tanh(args["w1"] @ y + args["b1"])
    return args["w2"] @ hidden


def mlp_initial_state(size: int, seed: int = 1) -> np.ndarray:
    return np.asarray(jr.normal(jr.key(seed), (size,)))


# ---- GRU cell -----------------------------------------------------------------------

# Scale of the recurrent weights, relative to variance 1 / d. A d x d matrix of
# variance 1/d entries has spectral norm about 2, so the recurrent matrices have norm
# about 0.6, and the cell contracts the hidden state: along 2000 steps of the inputs
# below, `diffrax_parallel.estimate_lyapunov_exponent` gives largest Lyapunov
# exponents of -1.19 (d = 1), -0.62 (d = 8) and -0.58 (d = 32) per step.
GRU_RECURRENT_SCALE = 0.3


def gru_parameters(size: int, seed: int = 0) -> dict[str, np.ndarray]:
    """Random GRU weights, input size = hidden size = `size`."""
    keys = jr.split(jr.key(seed), 9)
    input_scale = 1 / math.sqrt(size)
    recurrent_scale = GRU_RECURRENT_SCALE / math.sqrt(size)
    parameters = {}
    for i, gate in enumerate(("z", "r", "n")):
        parameters[f"w_{gate}"] = jr.normal(keys[3 * i], (size, size)) * input_scale
        parameters[f"u_{gate}"] = (
            jr.normal(keys[3 * i + 1], (size, size)) * recurrent_scale
        )
        parameters[f"b_{gate}"] = 0.1 * jr.normal(keys[3 * i + 2], (size,))
    return {name: np.asarray(value) for name, value in parameters.items()}


def gru_step(h, x, params):
    """Computes one step of a standard GRU cell, `(1 - z) n + z h`."""
    z = jax.nn.sigmoid(params["w_z"] @ x + params["u_z"] @ h + params["b_z"])
    r = jax.nn.sigmoid(params["w_r"] @ x + params["u_r"] @ h + params["b_r"])
    n = jnp.tanh(params["w_n"] @ x + params["u_n"] @ (r * h) + params["b_n"])
    return (1 - z) * n + z * h


def gru_inputs(num_steps: int, size: int, seed: int = 2) -> np.ndarray:
    return np.asarray(jr.normal(jr.key(seed), (num_steps, size)))


def cast(tree, dtype):
    """Casts every floating-point leaf of a PyTree to `dtype`, as a JAX array."""
    return jax.tree.map(lambda leaf: jnp.asarray(leaf, dtype), tree)
