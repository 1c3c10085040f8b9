"""Shape buckets: the few sizes a decoding batch's tensors take, so that its products repeat.

oneDNN, which runs PyTorch's bf16 products on a CPU (on AMX where there is one), builds a
kernel for every new shape of a product and keeps the last 1,024 it built. Building one costs
~0.2-1 ms where the product itself takes 0.03-0.5 ms at these sizes. A batch whose row count
drops each time an input ends, and whose source width and shortlist differ from batch to
batch, asks for new shapes at nearly every step: decoding 512 translate inputs it had not seen
at beam 5, a third of the oneDNN products built a kernel first, and bf16 decoded slower than
fp32 where on inputs seen before it was faster (bench/README.md, "Shape buckets"). So decoding
keeps its shapes on a grid:

- inputs in a batch: one of 1, 2, 3, 4, 6, 8, 12, 16, 24, ... (2^n and 3 * 2^(n-1)); a batch
  keeps some of its decided inputs, masked, to stay on a size (``rows``);
- source positions: a multiple of 8 (the padding is masked, as a batch's shorter sources are);
- shortlist columns: a multiple of 128 (the generator's extra columns are zeros, cut off).

The grid costs some arithmetic on padding (under a third of the rows at worst, ~15% on
average), and saves some copying: a batch compacts when it drops a size, not each time an
input ends.

Training under bf16 autocast meets the same kernel builds: its output layer runs on a
batch's real target tokens only, a count that is new at nearly every step, and each new
count built three kernels (the product and its two gradients) at ~50 ms for the largest
vocabulary. So a training batch keeps its sources at the same width multiple, and the
output layer's rows at a multiple of 64 (``tokens``; the extra rows repeat a real one and
are cut off before the loss), and scheduled sampling's pass without gradients runs its
sentences and the rows it predicts at grid sizes (``on_grid``).
"""

from __future__ import annotations

import torch
from torch import Tensor

WIDTH_MULTIPLE = 8  # source positions
COLUMN_MULTIPLE = 128  # shortlist columns
TOKEN_MULTIPLE = 64  # the output layer's rows in training
ON = True  # False: every size as it comes (bench/memory.py measures both in one run)


def rows(n: int) -> int:
    """The smallest size of the grid holding ``n`` inputs (0 for 0)."""
    if n <= 2 or not ON:
        return n
    power = 1 << (n - 1).bit_length()  # the power of two >= n
    return power * 3 // 4 if n <= power * 3 // 4 else power


def on_grid(chosen: Tensor) -> Tensor:
    """The indices of ``chosen``'s True entries, then of False ones up to the grid's size
    holding them (at most all of them), in order: the rows to run, the unchosen ones among
    them there only to keep the size (masked, or their results dropped)."""
    picked = chosen.nonzero().squeeze(1)
    size = min(rows(picked.numel()), chosen.numel())
    filler = (~chosen).nonzero().squeeze(1)[: size - picked.numel()]
    return torch.cat([picked, filler]).sort().values


def width(n: int) -> int:
    """``n`` source positions rounded up to the grid."""
    return -(-n // WIDTH_MULTIPLE) * WIDTH_MULTIPLE if ON else n


def columns(n: int) -> int:
    """``n`` shortlist columns rounded up to the grid."""
    return -(-n // COLUMN_MULTIPLE) * COLUMN_MULTIPLE if ON else n


def tokens(n: int) -> int:
    """``n`` target tokens (the output layer's rows in training) rounded up to the grid."""
    return -(-n // TOKEN_MULTIPLE) * TOKEN_MULTIPLE if ON else n
