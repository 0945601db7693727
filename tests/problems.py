"""One-step maps with sequential references, shared by the tests."""

import jax
import jax.numpy as jnp
import jax.random as jr
import numpy as np


def scan_reference(step_fn, y0, xs, args, num_steps=None):
    """The sequential trajectory `ys[t] = step_fn(ys[t-1], xs[t], args)` by `lax.scan`."""

    def body(y, x):
        y = step_fn(y, x, args)
        return y, y

    return jax.lax.scan(body, y0, xs, length=num_steps)[1]


def linear_step(y, x, args):
    matrix = args
    return matrix @ y + x


def linear_problem(num_steps, dtype=jnp.float64):
    key_matrix, key_inputs = jr.split(jr.key(0))
    matrix = 0.6 * jr.normal(key_matrix, (3, 3)) / np.sqrt(3)
    xs = jr.normal(key_inputs, (num_steps, 3))
    return linear_step, jnp.ones(3, dtype), xs.astype(dtype), matrix.astype(dtype)


def tanh_rnn_step(y, x, args):
    weights, bias = args
    return jnp.tanh(weights @ y + x + bias)


def tanh_rnn_problem(num_steps, dtype=jnp.float64, scale=0.7, size=4):
    keys = jr.split(jr.key(1), 3)
    weights = scale * jr.normal(keys[0], (size, size)) / np.sqrt(size)
    bias = 0.1 * jr.normal(keys[1], (size,))
    xs = jr.normal(keys[2], (num_steps, size))
    args = (weights.astype(dtype), bias.astype(dtype))
    return tanh_rnn_step, jnp.zeros(size, dtype), xs.astype(dtype), args


def gru_step(h, x, args):
    """A GRU cell (Cho et al. 2014): update gate z, reset gate r, candidate state n."""
    w_z, u_z, w_r, u_r, w_n, u_n = args
    z = jax.nn.sigmoid(w_z @ x + u_z @ h)
    r = jax.nn.sigmoid(w_r @ x + u_r @ h)
    n = jnp.tanh(w_n @ x + u_n @ (r * h))
    return (1 - z) * n + z * h


def gru_problem(num_steps, dtype=jnp.float64, scale=0.5, size=3, input_size=2):
    keys = jr.split(jr.key(2), 7)
    shapes = [(size, input_size), (size, size)] * 3
    args = tuple(
        (scale * jr.normal(key, shape) / np.sqrt(shape[1])).astype(dtype)
        for key, shape in zip(keys[:6], shapes)
    )
    xs = jr.normal(keys[6], (num_steps, input_size)).astype(dtype)
    return gru_step, jnp.zeros(size, dtype), xs, args


def oscillator_step(y, x, args):
    """One RK4 step of the damped oscillator `q'' + c q' + k q = 0`, `y = (q, q')`."""
    del x
    dt, damping, stiffness = args

    def vector_field(y):
        return jnp.stack([y[1], -damping * y[1] - stiffness * y[0]])

    k1 = vector_field(y)
    k2 = vector_field(y + dt / 2 * k1)
    k3 = vector_field(y + dt / 2 * k2)
    k4 = vector_field(y + dt * k3)
    return y + dt / 6 * (k1 + 2 * k2 + 2 * k3 + k4)


def oscillator_problem(num_steps, dtype=jnp.float64):
    args = tuple(jnp.asarray(a, dtype) for a in (10.0 / max(num_steps, 100), 0.5, 4.0))
    return oscillator_step, jnp.array([1.0, 0.0], dtype), None, args


def van_der_pol_rk4_step(y, x, args):
    """One RK4 step of Van der Pol, `y1' = y2`, `y2' = mu (1 - y1^2) y2 - y1`."""
    del x
    dt, mu = args

    def vector_field(y):
        return jnp.stack([y[1], mu * (1 - y[0] ** 2) * y[1] - y[0]])

    k1 = vector_field(y)
    k2 = vector_field(y + dt / 2 * k1)
    k3 = vector_field(y + dt / 2 * k2)
    k4 = vector_field(y + dt * k3)
    return y + dt / 6 * (k1 + 2 * k2 + 2 * k3 + k4)


PROBLEMS = {
    "linear": linear_problem,
    "tanh_rnn": tanh_rnn_problem,
    "gru": gru_problem,
    "oscillator": oscillator_problem,
}
