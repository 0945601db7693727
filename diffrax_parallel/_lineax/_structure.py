"""Conversion between stacked PyTree states and `(T, d)` arrays.

A trajectory of `T` states is a PyTree whose every leaf has a leading time axis of length
`T`. The linear algebra works on the flat form `(T, d)`, where row `t` is the concatenation
of the raveled leaves of state `t`.
"""

import math

import equinox as eqx
import jax
import jax.numpy as jnp
import jax.tree_util as jtu
from jaxtyping import Array, PyTree


class StateStructure(eqx.Module):
    """The static structure of a stacked trajectory: its treedef and leaf shapes.

    Hashable, so it can be a static field. `leaf_shapes` exclude the leading time axis.
    """

    treedef: jtu.PyTreeDef = eqx.field(static=True)
    leaf_shapes: tuple[tuple[int, ...], ...] = eqx.field(static=True)
    dtype: jnp.dtype = eqx.field(static=True)
    num_steps: int = eqx.field(static=True)

    @property
    def state_size(self) -> int:
        return sum(math.prod(shape) for shape in self.leaf_shapes)

    def as_shape_dtype(self) -> PyTree[jax.ShapeDtypeStruct]:
        """Returns the PyTree of `jax.ShapeDtypeStruct`s of the stacked trajectory."""
        leaves = [
            jax.ShapeDtypeStruct((self.num_steps,) + shape, self.dtype)
            for shape in self.leaf_shapes
        ]
        return jtu.tree_unflatten(self.treedef, leaves)


def state_structure(states: PyTree) -> StateStructure:
    """Reads the structure of a stacked trajectory (arrays or `jax.ShapeDtypeStruct`s).

    **Arguments:**

    - `states`: a PyTree whose leaves all have the same leading length `T` and the same
        floating-point dtype.

    **Returns:**

    A `StateStructure`.
    """
    leaves, treedef = jtu.tree_flatten(states)
    if len(leaves) == 0:
        raise ValueError(
            "The states must contain at least one array; got an empty PyTree."
        )
    shapes = [tuple(jnp.shape(leaf)) for leaf in leaves]
    if any(len(shape) == 0 for shape in shapes):
        raise ValueError(
            "Every leaf of the stacked states must have a leading time axis; got a leaf "
            f"of shape (). Leaf shapes: {shapes}."
        )
    num_steps = shapes[0][0]
    if any(shape[0] != num_steps for shape in shapes):
        raise ValueError(
            "Every leaf of the stacked states must have the same leading (time) length; "
            f"got leaf shapes {shapes}."
        )
    dtypes = {jnp.result_type(leaf) for leaf in leaves}
    if len(dtypes) != 1:
        raise ValueError(
            f"Every leaf of the stacked states must have the same dtype; got {dtypes}. "
            "Cast the states to one floating-point dtype."
        )
    (dtype,) = dtypes
    if not jnp.issubdtype(dtype, jnp.inexact):
        raise ValueError(f"The states must have a floating-point dtype; got {dtype}.")
    return StateStructure(
        treedef, tuple(shape[1:] for shape in shapes), dtype, num_steps
    )


def ravel_states(states: PyTree[Array], structure: StateStructure) -> Array:
    """Flattens a stacked trajectory to an array of shape `(T, d)`."""
    leaves = jtu.tree_leaves(states)
    num_steps = structure.num_steps
    flat = [jnp.reshape(leaf, (num_steps, -1)) for leaf in leaves]
    if len(flat) == 1:
        return flat[0]
    return jnp.concatenate(flat, axis=1)


def unravel_states(flat: Array, structure: StateStructure) -> PyTree[Array]:
    """Inverts `ravel_states`: turns an array of shape `(T, d)` into the PyTree form."""
    leaves = []
    start = 0
    for shape in structure.leaf_shapes:
        size = math.prod(shape)
        leaf = flat[:, start : start + size]
        leaves.append(jnp.reshape(leaf, (flat.shape[0],) + shape))
        start += size
    return jtu.tree_unflatten(structure.treedef, leaves)
