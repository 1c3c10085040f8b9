"""The generator cut to a shortlist's columns, packed incrementally as rows join.

A shortlist (engine/shortlist.py) decodes over the union of its rows' allowed target pieces;
that union changes whenever rows join a running batch. Gathering (and, for int8, quantizing
and prepacking) the generator's weight for ~2,300 columns at every change cost more than a
few decoder steps save: prepacking 2,290 int8 columns took 1.7-3.3 ms on this project's CPU,
against ~0.8 ms for the product itself, and a batch kept fed changes its columns every few
steps, so int8 serving gained nothing over fp32 (bench/README.md, "Precision and
compaction").

``ColumnGenerator`` keeps what it packed: a set of columns is computed as the parts already
packed plus one new part holding only the columns they lack, and the output is put in the
asked order by one gather. It packs the asked set afresh when the parts hold too many columns
no row asks for any more (``slack``) or are too many products (``max_parts``). That is for
int8, whose packing is the cost; fp32 columns are only gathered (~0.6 ms), about what the
parts' concatenation and gather cost over a few steps, so by default an fp32 generator
gathers each new set whole, one product a step (bench/README.md, "Precision and compaction":
serving at 32 clients, int8 1.17x before this, fp32 0.90x had it been incremental too).

Every column is quantized on one grid (the scale of the whole weight), so a column's int8
weights, and the logits a row gets, are the same whichever part holds it and whoever shares
the batch: a scale taken from the packed columns alone would make a row's scores depend on
its neighbours' sources.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor

from hanseq.engine import shapes
from hanseq.engine.quantize import Int8Linear

SLACK = 1.5  # pack afresh once the parts hold 1.5x the columns asked for
MAX_PARTS = 4  # ... or would be more than four products


class ColumnGenerator:
    """logits = vector @ weight[columns].T + bias[columns], for changing ``columns``."""

    def __init__(
        self,
        weight: Tensor,
        bias: Tensor | None,
        int8: bool,
        slack: float | None = None,
        max_parts: int | None = None,
    ):
        """``slack``, ``max_parts``: None for the defaults, incremental for int8 only."""
        self.weight, self.bias, self.int8 = weight.detach(), bias, int8
        self.slack = slack if slack is not None else SLACK if int8 else 1.0
        self.max_parts = max_parts if max_parts is not None else MAX_PARTS if int8 else 1
        self.scale = max(float(self.weight.abs().max()) / 127, 1e-12) if int8 else None
        self.parts: list[Callable[[Tensor], Tensor]] = []
        self.held = torch.empty(0, dtype=torch.long, device=weight.device)  # parts' columns
        # id -> its position in the parts' output, -1 where no part holds it
        self.where = torch.full((weight.size(0),), -1, dtype=torch.long, device=weight.device)
        self._asked: tuple[Tensor, Tensor | None] | None = None  # columns -> gather index

    def __call__(self, vector: Tensor, columns: Tensor) -> Tensor:
        gather = self._gather_for(columns)
        out = self.parts[0](vector) if len(self.parts) == 1 else self._all(vector)
        return out if gather is None else out.index_select(1, gather)

    def _all(self, vector: Tensor) -> Tensor:
        return torch.cat([part(vector) for part in self.parts], 1)

    def _gather_for(self, columns: Tensor) -> Tensor | None:
        """The output positions of ``columns`` (None: the parts' output is already them).
        Kept for the columns tensor itself: identity says the set is unchanged."""
        if self._asked is not None and self._asked[0] is columns:
            return self._asked[1]
        missing = columns[self.where[columns] < 0]
        held = self.held.numel() + missing.numel()
        if held > self.slack * columns.numel() or len(self.parts) + bool(missing.numel()) > (
            self.max_parts
        ):
            self._reset()
            missing = columns
        if missing.numel():
            self._add(missing)
        gather = None if torch.equal(self.held, columns) else self.where[columns]
        self._asked = (columns, gather)
        return gather

    def _reset(self) -> None:
        self.parts.clear()
        self.where[self.held] = -1
        self.held = self.held[:0]

    def _add(self, ids: Tensor) -> None:
        self.where[ids] = torch.arange(
            self.held.numel(), self.held.numel() + ids.numel(), device=ids.device
        )
        self.held = torch.cat([self.held, ids])
        self.parts.append(self._pack(ids))

    def _pack(self, ids: Tensor) -> Callable[[Tensor], Tensor]:
        rows = self.weight.index_select(0, ids)
        b = None if self.bias is None else self.bias.detach().index_select(0, ids)
        if self.int8:
            return Int8Linear(rows, b, per_row=False, scale=self.scale)
        # Zero columns up to the grid of engine/shapes.py, cut off again: bf16 products on a
        # CPU build a kernel per shape, and a shortlist's column count is new nearly per batch.
        n, padded = ids.numel(), shapes.columns(ids.numel())
        wt = rows.new_zeros(rows.size(1), padded)
        wt[:, :n] = rows.t()
        if b is None:
            return lambda x: (x @ wt)[:, :n]
        bias = b.new_zeros(padded)
        bias[:n] = b
        return lambda x: torch.addmm(bias, x, wt)[:, :n]
