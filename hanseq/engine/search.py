"""Decoding a prepared batch of source ids: greedy, sampling or beam search over one head.

Greedy and sampling decode through the scheduler (engine/scheduler.py), every input joining
at once; beam search is engine/beam.py. The encoder runs once per batch. Attention weights
(target step x source position) come back when asked for.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor

from hanseq.engine.beam import beam_search
from hanseq.engine.heads import Seq2Seq
from hanseq.engine.options import BatchKey, Hypothesis, SearchOptions
from hanseq.engine.scheduler import Scheduler, Source, flags_at


@dataclass
class SearchHooks:
    """Ways for a caller to watch or steer a running search."""

    # -> bool tensor, one per input row: True = the caller is gone, stop decoding that row.
    cancelled: Callable[[], Tensor] | None = None
    # (input rows still decoding, the token each just produced); greedy and sampling only.
    on_step: Callable[[list[int], list[int]], None] | None = None


@torch.inference_mode()
def search(
    model: Seq2Seq,
    task: str,
    src: Tensor,
    src_len: Tensor,
    opts: SearchOptions,
    hooks: SearchHooks | None = None,
) -> list[list[Hypothesis]]:
    """src: batch x src_len ids -> for every row, its n-best hypotheses, best first.

    A row leaves the batch as soon as it is finished or cancelled (state and memory are
    compacted), so it costs nothing in the steps after. A cancelled row's result is partial.
    """
    opts.validate()
    hooks = hooks or SearchHooks()
    if opts.beam_size > 1:
        head = model.head(task)
        memory, state = head.prepare(model.encode(src, src_len), shortlist=True)
        return beam_search(head, memory, state, opts, hooks.cancelled)
    flags = hooks.cancelled
    asked = None if flags is None else lambda keys: flags_at(flags(), keys)
    scheduler = Scheduler(model, max_rows=src.size(0), cancelled=asked)
    lengths = src_len.tolist()
    scheduler.add(
        BatchKey(task, opts), [Source(i, src[i, :n].tolist()) for i, n in enumerate(lengths)]
    )
    found: list[list[Hypothesis]] = [[] for _ in range(src.size(0))]
    for done in scheduler.run(hooks.on_step):
        if done.error is not None:
            raise done.error
        found[done.key] = done.hypotheses
    return found
