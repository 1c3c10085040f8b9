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
"""

from __future__ import annotations

WIDTH_MULTIPLE = 8  # source positions
COLUMN_MULTIPLE = 128  # shortlist columns
ON = True  # False: every size as it comes (bench/memory.py measures both in one run)


def rows(n: int) -> int:
    """The smallest size of the grid holding ``n`` inputs (0 for 0)."""
    if n <= 2 or not ON:
        return n
    power = 1 << (n - 1).bit_length()  # the power of two >= n
    return power * 3 // 4 if n <= power * 3 // 4 else power


def width(n: int) -> int:
    """``n`` source positions rounded up to the grid."""
    return -(-n // WIDTH_MULTIPLE) * WIDTH_MULTIPLE if ON else n


def columns(n: int) -> int:
    """``n`` shortlist columns rounded up to the grid."""
    return -(-n // COLUMN_MULTIPLE) * COLUMN_MULTIPLE if ON else n
