"""Type aliases of the diffrax layer, matching those of diffrax's signatures."""

from typing import TYPE_CHECKING

import numpy as np
from jaxtyping import Array, ArrayLike, Bool, Real


if TYPE_CHECKING:
    # Plain unions for static checkers, so that overrides of diffrax's methods match.
    RealScalarLike = int | float | Array | np.ndarray
    BoolScalarLike = bool | Array | np.ndarray
else:
    RealScalarLike = Real[ArrayLike, ""]
    BoolScalarLike = Bool[ArrayLike, ""]
