"""Parallel-in-time evaluation of ODE solvers and recurrences with Newton-type methods."""

import importlib.metadata

from ._lineax import (
    affine_recurrence as affine_recurrence,
    BlockBidiagonal as BlockBidiagonal,
    BlockBidiagonalOperator as BlockBidiagonalOperator,
    lower_block_bidiagonal_tag as lower_block_bidiagonal_tag,
    unit_block_diagonal_tag as unit_block_diagonal_tag,
    upper_block_bidiagonal_tag as upper_block_bidiagonal_tag,
)


__version__ = importlib.metadata.version("diffrax_parallel")
