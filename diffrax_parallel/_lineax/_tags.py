"""Lineax tags that declare block-bidiagonal structure over a leading time axis.

The input and output of a tagged operator are PyTrees whose leaves have a leading time
axis of length `T`. Output `t` depends on inputs `t` and `t - 1` only (lower) or on inputs
`t` and `t + 1` only (upper).
"""

import lineax as lx


class _Tag:
    def __init__(self, name: str):
        self.name = name

    def __repr__(self) -> str:
        return self.name


lower_block_bidiagonal_tag = _Tag("lower_block_bidiagonal_tag")
upper_block_bidiagonal_tag = _Tag("upper_block_bidiagonal_tag")
# The diagonal blocks (output `t` with respect to input `t`) are identity matrices.
unit_block_diagonal_tag = _Tag("unit_block_diagonal_tag")


def _transpose_lower(tags: frozenset[object]) -> object | None:
    if lower_block_bidiagonal_tag in tags:
        return upper_block_bidiagonal_tag
    return None


def _transpose_upper(tags: frozenset[object]) -> object | None:
    if upper_block_bidiagonal_tag in tags:
        return lower_block_bidiagonal_tag
    return None


def _transpose_unit_diagonal(tags: frozenset[object]) -> object | None:
    if unit_block_diagonal_tag in tags:
        return unit_block_diagonal_tag
    return None


# Without these rules `lineax` drops the tags when it transposes an operator, for example
# when it differentiates `lineax.linear_solve` in reverse mode.
for _rule in (_transpose_lower, _transpose_upper, _transpose_unit_diagonal):
    if _rule not in lx.transpose_tags_rules:
        lx.transpose_tags_rules.append(_rule)
