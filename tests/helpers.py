import jax.numpy as jnp
import jax.tree_util as jtu
import numpy as np


def tree_allclose(x, y, *, rtol=1e-5, atol=1e-8) -> bool:
    """Return whether two PyTrees have the same structure and close leaves."""
    x_leaves, x_def = jtu.tree_flatten(x)
    y_leaves, y_def = jtu.tree_flatten(y)
    if x_def != y_def:
        return False
    return all(
        np.shape(a) == np.shape(b) and bool(jnp.allclose(a, b, rtol=rtol, atol=atol))
        for a, b in zip(x_leaves, y_leaves)
    )


def max_relative_error(x, reference) -> float:
    """Return `max|x - reference| / max(max|reference|, tiny)` over all PyTree leaves."""
    errors = []
    for a, b in zip(jtu.tree_leaves(x), jtu.tree_leaves(reference)):
        a = np.asarray(a, dtype=np.float64)
        b = np.asarray(b, dtype=np.float64)
        scale = max(float(np.max(np.abs(b), initial=0.0)), 1e-300)
        errors.append(float(np.max(np.abs(a - b), initial=0.0)) / scale)
    return max(errors, default=0.0)
