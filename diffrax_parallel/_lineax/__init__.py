from ._colouring import (
    recover_block_diagonals as recover_block_diagonals,
    recover_blocks as recover_blocks,
)
from ._operator import BlockBidiagonalOperator as BlockBidiagonalOperator
from ._richardson import (
    BlockBidiagonalRichardson as BlockBidiagonalRichardson,
    diagonal_part as diagonal_part,
)
from ._scan import affine_recurrence as affine_recurrence, ScanMode as ScanMode
from ._solver import (
    as_block_bidiagonal_operator as as_block_bidiagonal_operator,
    BlockBidiagonal as BlockBidiagonal,
)
from ._structure import (
    ravel_states as ravel_states,
    state_structure as state_structure,
    StateStructure as StateStructure,
    unravel_states as unravel_states,
)
from ._tags import (
    lower_block_bidiagonal_tag as lower_block_bidiagonal_tag,
    unit_block_diagonal_tag as unit_block_diagonal_tag,
    upper_block_bidiagonal_tag as upper_block_bidiagonal_tag,
)
