"""Tests of the Kalman smoother that computes Levenberg–Marquardt steps."""

import functools
from typing import Any

import equinox as eqx
import jax
import jax.lax as lax
import jax.numpy as jnp
import numpy as np
import pytest

from diffrax_parallel._optimistix._kalman import (
    kalman_smoother,
    levenberg_marquardt_step,
)

from .helpers import max_relative_error


MODES = ("associative", "sequential")
STRUCTURES = ("dense", "diagonal")

# Compiling the associative smoother takes seconds, so every test calls it through one
# jitted function with `lam` a traced array of the input dtype: each shape, dtype and
# mode compiles once, whatever the damping value.
_jit_smoother = jax.jit(kalman_smoother, static_argnames="mode")
_jit_step = jax.jit(levenberg_marquardt_step, static_argnames="mode")


def _smooth(transitions, offsets, observations, lam, mode):
    lam = jnp.asarray(lam, offsets.dtype)
    return _jit_smoother(transitions, offsets, observations, lam, mode=mode)


def _make_transitions(rng, num_steps, dim, structure, dynamics):
    """Returns transitions that are contracting (every singular value in [0.3, 0.9]) or
    expanding (every singular value in [1.1, 1.6], so spectral radius > 1)."""
    low, high = (0.3, 0.9) if dynamics == "contracting" else (1.1, 1.6)
    singular_values = rng.uniform(low, high, size=(num_steps, dim))
    if structure == "diagonal":
        signs = rng.choice([-1.0, 1.0], size=(num_steps, dim))
        return signs * singular_values
    # Q diag(s) with Q orthogonal has singular values s, and |det| = prod(s).
    orthogonal, _ = np.linalg.qr(rng.normal(size=(num_steps, dim, dim)))
    transitions = orthogonal * singular_values[:, None, :]
    if dynamics == "expanding":
        spectral_radius = np.max(np.abs(np.linalg.eigvals(transitions)), axis=-1)
        assert np.all(spectral_radius > 1)
    return transitions


def _make_problem(seed, num_steps, dim, structure, dynamics):
    rng = np.random.default_rng(seed)
    transitions = _make_transitions(rng, num_steps, dim, structure, dynamics)
    offsets = rng.normal(size=(num_steps, dim))
    observations = rng.normal(size=(num_steps, dim))
    return transitions, offsets, observations


def _dense_blocks(transitions, dim):
    if transitions.ndim == 2:
        return transitions[:, :, None] * np.eye(dim)
    return transitions


def _normal_equations_solution(transitions, offsets, observations, lam):
    """Solves the least-squares problem by the dense (T d) x (T d) normal equations."""
    num_steps, dim = offsets.shape
    blocks = _dense_blocks(np.asarray(transitions), dim)
    # The residual rows x_t - A_t x_{t-1} - b_t are `dynamics @ x - offsets`. A_1 has
    # no column because x_0 = 0.
    dynamics = np.eye(num_steps * dim)
    for t in range(1, num_steps):
        rows = slice(t * dim, (t + 1) * dim)
        columns = slice((t - 1) * dim, t * dim)
        dynamics[rows, columns] = -blocks[t]
    # Rows sqrt(lam) (x_t - y_t) add lam I to the matrix and lam y to the right side.
    matrix = dynamics.T @ dynamics + lam * np.eye(num_steps * dim)
    rhs = dynamics.T @ offsets.reshape(-1) + lam * observations.reshape(-1)
    solution = jnp.linalg.solve(jnp.asarray(matrix), jnp.asarray(rhs))
    return np.asarray(solution).reshape(num_steps, dim)


def _recurrence(transitions, offsets):
    """Runs x_t = A_t x_{t-1} + b_t from x_0 = 0 with `lax.scan`."""

    def step(state, inputs):
        transition, offset = inputs
        if transition.ndim == 1:
            state = transition * state + offset
        else:
            state = jnp.matmul(transition, state, precision=lax.Precision.HIGHEST)
            state = state + offset
        return state, state

    initial = jnp.zeros(offsets.shape[1], offsets.dtype)
    _, states = lax.scan(step, initial, (transitions, offsets))
    return states


DAMPING_CASES = [
    (0.0, "contracting"),
    (1e-3, "contracting"),
    (1e-3, "expanding"),
    (1.0, "contracting"),
    (1.0, "expanding"),
    (1e3, "contracting"),
    (1e3, "expanding"),
]


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("lam, dynamics", DAMPING_CASES)
@pytest.mark.parametrize("structure", STRUCTURES)
@pytest.mark.parametrize("dim", [1, 4])
@pytest.mark.parametrize("num_steps", [1, 2, 3, 50])
def test_matches_normal_equations(num_steps, dim, structure, lam, dynamics, mode):
    problem = _make_problem(num_steps + 7 * dim, num_steps, dim, structure, dynamics)
    expected = _normal_equations_solution(*problem, lam)
    arrays = [jnp.asarray(array) for array in problem]
    smoothed = _smooth(*arrays, lam=lam, mode=mode)
    assert smoothed.shape == (num_steps, dim)
    assert max_relative_error(smoothed, expected) < 1e-10


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("dynamics", ["contracting", "expanding"])
@pytest.mark.parametrize("structure", STRUCTURES)
def test_zero_damping_is_recurrence(structure, dynamics, mode):
    # Expanding transitions (singular values in [1.1, 1.6]) make the states grow by up
    # to 1.6^50 ≈ 1e10 over 50 steps.
    problem = _make_problem(1, 50, 4, structure, dynamics)
    transitions, offsets, observations = [jnp.asarray(array) for array in problem]
    smoothed = _smooth(transitions, offsets, observations, 0.0, mode)
    expected = _recurrence(transitions, offsets)
    assert max_relative_error(smoothed, expected) < 1e-12


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("structure", STRUCTURES)
def test_first_transition_ignored(structure, mode):
    transitions, offsets, observations = [
        jnp.asarray(array) for array in _make_problem(2, 50, 4, structure, "expanding")
    ]
    with_nan = transitions.at[0].set(jnp.nan)
    with_zero = transitions.at[0].set(0.0)
    smoothed_nan = _smooth(with_nan, offsets, observations, 1.0, mode)
    smoothed_zero = _smooth(with_zero, offsets, observations, 1.0, mode)
    assert bool(jnp.all(jnp.isfinite(smoothed_nan)))
    assert max_relative_error(smoothed_nan, smoothed_zero) == 0.0


@pytest.mark.parametrize("dtype", [jnp.float64, jnp.float32])
@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("structure", STRUCTURES)
def test_large_damping_close_to_observations(structure, mode, dtype):
    problem = _make_problem(3, 50, 4, structure, "expanding")
    transitions, offsets, observations = [jnp.asarray(a, dtype) for a in problem]
    smoothed = _smooth(transitions, offsets, observations, 1e8, mode)
    assert smoothed.dtype == dtype
    # x - y is about (1 / lam) times the residual of y in the recurrence, here about 10.
    tolerance = 1e-6 if dtype == jnp.float64 else 1e-5
    assert max_relative_error(smoothed, observations) < tolerance


@pytest.mark.parametrize("lam, dynamics", [(0.0, "contracting"), (1.0, "expanding")])
@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("structure", STRUCTURES)
def test_float32(structure, mode, lam, dynamics):
    problem = _make_problem(4, 50, 4, structure, dynamics)
    arrays32 = [jnp.asarray(array, jnp.float32) for array in problem]
    # The float64 reference starts from the same rounded inputs, so the difference is
    # the float32 arithmetic alone.
    arrays64 = [array.astype(jnp.float64) for array in arrays32]
    smoothed32 = _smooth(*arrays32, lam=lam, mode=mode)
    smoothed64 = _smooth(*arrays64, lam=lam, mode=mode)
    assert smoothed32.dtype == jnp.float32
    # Measured up to 7.4e-7. Round-off grows like T eps(float32) = 50 * 1.2e-7 = 6e-6.
    assert max_relative_error(smoothed32, smoothed64) < 2e-5


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("structure", STRUCTURES)
def test_jit_vmap(structure, mode):
    num_steps, dim, lams = 5, 3, (0.0, 0.5, 1e3)
    problems = [
        _make_problem(seed, num_steps, dim, structure, "expanding")
        for seed in (5, 6, 7)
    ]
    batched = [jnp.asarray(np.stack(arrays)) for arrays in zip(*problems)]
    smoother = functools.partial(kalman_smoother, mode=mode)
    smoothed = jax.jit(jax.vmap(smoother))(*batched, jnp.asarray(lams))
    assert smoothed.shape == (3, num_steps, dim)
    for index, (problem, lam) in enumerate(zip(problems, lams)):
        expected = _normal_equations_solution(*problem, lam)
        assert max_relative_error(smoothed[index], expected) < 1e-10


@pytest.mark.parametrize("lam, dynamics", DAMPING_CASES)
@pytest.mark.parametrize("structure", STRUCTURES)
def test_modes_agree(structure, lam, dynamics):
    problem = _make_problem(8, 50, 4, structure, dynamics)
    arrays = [jnp.asarray(array) for array in problem]
    associative = _smooth(*arrays, lam=lam, mode="associative")
    sequential = _smooth(*arrays, lam=lam, mode="sequential")
    assert max_relative_error(associative, sequential) < 1e-12


@pytest.mark.parametrize("lam", [0.0, 0.3])
@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("structure", STRUCTURES)
def test_levenberg_marquardt_step(structure, mode, lam):
    num_steps, dim = 4, 2
    transitions, offsets, iterate = [
        jnp.asarray(array)
        for array in _make_problem(9, num_steps, dim, structure, "expanding")
    ]
    # Residual of the affine recurrence at the iterate, with s_0 = 0.
    previous = jnp.concatenate([jnp.zeros((1, dim)), iterate[:-1]])
    if structure == "diagonal":
        mapped = transitions * previous
    else:
        mapped = jnp.einsum("tij,tj->ti", transitions, previous)
    residuals = iterate - mapped - offsets
    step = _jit_step(transitions, residuals, jnp.asarray(lam), mode=mode)
    # The sequential smoother compiles faster, and both modes agree to round-off.
    expected = _smooth(transitions, offsets, iterate, lam, "sequential")
    assert max_relative_error(iterate + step, expected) < 1e-12
    if lam == 0.0:
        # Newton's method solves an affine recurrence in one step.
        recurrence = _recurrence(transitions.at[0].set(0.0), offsets)
        assert max_relative_error(iterate + step, recurrence) < 1e-12


def _jaxpr_text(structure):
    num_steps, dim = 5, 7
    problem = _make_problem(10, num_steps, dim, structure, "contracting")
    return {
        mode: str(
            jax.make_jaxpr(functools.partial(kalman_smoother, mode=mode))(*problem, 1.0)
        )
        for mode in MODES
    }


def test_diagonal_uses_no_matrices():
    # With T = 5 and d = 7, any d x d block would show up as a shape ending in "7,7]",
    # and no other array in the computation has two axes of length 7.
    for mode, text in _jaxpr_text("diagonal").items():
        assert "7,7]" not in text, mode
        assert "dot_general" not in text, mode
        assert "cholesky" not in text, mode
        assert " lu" not in text, mode
    # The same check on dense transitions finds the matrices, so it can fail.
    for mode, text in _jaxpr_text("dense").items():
        assert "7,7]" in text, mode


def _valid_arguments() -> dict[str, Any]:
    transitions = jnp.zeros((4, 2, 2))
    offsets = jnp.zeros((4, 2))
    observations = jnp.zeros((4, 2))
    return dict(
        transitions=transitions, offsets=offsets, observations=observations, lam=1.0
    )


@pytest.mark.parametrize(
    "name, value, match",
    [
        ("transitions", jnp.zeros((3, 2, 2)), "`transitions`"),
        ("transitions", jnp.zeros((4, 2, 3)), "`transitions`"),
        ("transitions", jnp.zeros((4, 3)), "`transitions`"),
        ("transitions", jnp.zeros((4,)), "`transitions`"),
        ("offsets", jnp.zeros((4, 2, 1)), "`offsets`"),
        ("offsets", jnp.zeros((0, 2)), "`offsets`"),
        ("observations", jnp.zeros((4, 3)), "`observations`"),
        ("observations", jnp.zeros((5, 2)), "`observations`"),
        ("lam", jnp.ones(2), "`lam`"),
    ],
)
def test_bad_shapes(name, value, match):
    arguments = _valid_arguments() | {name: value}
    with pytest.raises(ValueError, match=match):
        kalman_smoother(**arguments)


def test_bad_mode():
    # The invalid mode is the point of the test, so pyright's argument check is silenced.
    with pytest.raises(ValueError, match="`mode="):
        kalman_smoother(**_valid_arguments(), mode="parallel")  # pyright: ignore[reportArgumentType]


def test_integer_inputs():
    arguments = _valid_arguments()
    arguments["offsets"] = jnp.zeros((4, 2), jnp.int32)
    arguments["transitions"] = jnp.zeros((4, 2, 2), jnp.int32)
    arguments["observations"] = jnp.zeros((4, 2), jnp.int32)
    with pytest.raises(TypeError, match="floating point"):
        kalman_smoother(**arguments)


@pytest.mark.parametrize("lam", [-1.0, float("nan"), float("inf")])
def test_invalid_damping(lam):
    arguments = _valid_arguments() | {"lam": lam}
    smoother = eqx.filter_jit(functools.partial(kalman_smoother, mode="sequential"))
    with pytest.raises(eqx.EquinoxRuntimeError, match="`lam` must be finite and >= 0"):
        smoother(**arguments)
