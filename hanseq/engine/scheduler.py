"""The one continuous-batching scheduler: ``Pipeline.generate``, greedy ``search`` and the
service's workers all feed it inputs and step it.

Greedy and sampling inputs wait until a step finds room for them (``max_rows`` live rows in
all) and enough of them to join together (``join_group``: a join runs the encoder and
re-concatenates the running batch, so one input at a time costs throughput); they then join
the RunningBatch of their task and options (engine/continuous.py) and leave it the moment they
end. Beam search decodes up to ``beam_group`` inputs of one task and options whole, one group
per step, between the greedy steps: a large beam request never stalls the greedy rows for long.

A join, a step or a beam group that fails (a GPU out of memory, say) is split in halves and
retried, so only an input that fails alone fails; every input added comes out exactly once, as
a ``Decoded`` (the n-best, or the error), or is handed back by ``drop`` before it started.
"""

from __future__ import annotations

import logging
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

from hanseq.engine import shapes
from hanseq.engine.beam import beam_search
from hanseq.engine.continuous import Finished, RunningBatch
from hanseq.engine.heads import Seq2Seq
from hanseq.engine.options import BatchKey, Hypothesis
from hanseq.engine.vocabulary import PAD_ID

log = logging.getLogger(__name__)
StepHook = Callable[[list[int], list[int]], None]  # (keys of live rows, the token each made)
CancelFlags = Callable[[Sequence[int]], Sequence[bool]]  # keys -> True where the caller left


@dataclass(frozen=True)
class Source:
    """One input: the caller's key for it, and its EOS-terminated source ids."""

    key: int
    ids: list[int]


@dataclass
class Decoded:
    """What became of an input: its n-best (best first), or the error it failed with alone."""

    key: int
    hypotheses: list[Hypothesis]
    batch_size: int  # inputs decoding together when it joined (or in its beam group)
    error: Exception | None = None
    cancelled: bool = False  # it left before its end: the hypothesis is partial


class Scheduler:
    def __init__(
        self,
        model: Seq2Seq,
        max_rows: int = 1 << 16,
        join_group: int = 1,
        beam_group: int = 8,
        cancelled: CancelFlags | None = None,
    ):
        """``cancelled(keys)`` is asked once per decoding step about the inputs decoding."""
        self.model, self.max_rows, self.join_group = model, max_rows, join_group
        self.beam_group, self.cancelled = beam_group, cancelled
        self.device = next(model.parameters()).device
        self._waiting: dict[BatchKey, deque[Source]] = {}  # greedy / sampling, not yet joined
        self._beams: deque[tuple[BatchKey, Source]] = deque()
        self._running: dict[BatchKey, list[RunningBatch]] = {}
        self._batch_size: dict[int, int] = {}  # key -> rows decoding when it joined

    def add(self, key: BatchKey, sources: Iterable[Source]) -> None:
        """Inputs of one task and options, in the order they should start."""
        key.options.validate()
        self.model.head(key.task)  # an unknown task fails here, not at the first step
        if key.options.beam_size > 1:
            self._beams.extend((key, s) for s in sources)
        else:
            self._waiting.setdefault(key, deque()).extend(sources)

    def drop(self, keys: Iterable[int]) -> list[int]:
        """Take inputs that have not started out of the queue -> the keys taken."""
        wanted = set(keys)
        dropped = [s.key for _, s in self._beams if s.key in wanted]
        self._beams = deque((k, s) for k, s in self._beams if s.key not in wanted)
        for key, queue in self._waiting.items():
            dropped += [s.key for s in queue if s.key in wanted]
            self._waiting[key] = deque(s for s in queue if s.key not in wanted)
        return dropped

    @property
    def rows(self) -> int:
        """Rows decoding in the running batches."""
        return sum(len(b) for batches in self._running.values() for b in batches)

    def __bool__(self) -> bool:
        return bool(self._beams or self._running or any(self._waiting.values()))

    def run(self, on_step: StepHook | None = None) -> Iterator[Decoded]:
        """Step until every input added has come out."""
        while self:
            yield from self.step(on_step)

    def step(self, on_step: StepHook | None = None) -> list[Decoded]:
        """Admit the inputs that fit, one step of every running batch, one beam group."""
        out: list[Decoded] = []
        self._admit(out)
        self._step_running(on_step, out)
        self._beam_group(out)
        return out

    # ---- greedy and sampling ---------------------------------------------------------------
    def _admit(self, out: list[Decoded]) -> None:
        for key, queue in self._waiting.items():
            free = self.max_rows - self.rows
            if not queue or free < min(self.join_group, len(queue)):
                continue
            joining = [queue.popleft() for _ in range(min(free, len(queue)))]
            batches = self._running.setdefault(key, [])
            if not batches:
                batches.append(RunningBatch(self.model, key.task, key.options))
            self._join(batches[0], joining, out)
        self._waiting = {k: q for k, q in self._waiting.items() if q}
        self._running = {k: b for k, b in self._running.items() if b}

    def _join(self, batch: RunningBatch, sources: list[Source], out: list[Decoded]) -> None:
        if not sources:
            return
        try:
            src, src_len = padded([s.ids for s in sources], self.device, grid=True)
            batch.join(src, src_len, [s.key for s in sources])
        except Exception as e:
            if len(sources) == 1:
                self._recover()
                out.append(self._failed(sources[0].key, e))
                return
        else:
            self._batch_size.update({s.key: len(batch) for s in sources})
            return
        # Retried only here, past the except block: until it ends, the exception's traceback
        # holds the failed attempt's tensors (on a GPU that ran out, their memory).
        self._recover()
        half = len(sources) // 2
        self._join(batch, sources[:half], out)
        self._join(batch, sources[half:], out)

    def _step_running(self, on_step: StepHook | None, out: list[Decoded]) -> None:
        """A batch whose step fails is split in two (each goes on); a row that fails alone
        fails."""
        for batches in self._running.values():
            for batch in list(batches):
                if self.cancelled is not None:
                    flags = self.cancelled(batch.keys)
                    batch.cancel(k for k, gone in zip(batch.keys, flags, strict=True) if gone)
                try:
                    finished = batch.step(on_step)
                except Exception as e:
                    self._recover()
                    if len(batch) == 1:
                        out.append(self._failed(batch.keys[0], e))
                        batches.remove(batch)
                    else:
                        batches.append(batch.split())
                    continue
                out += [self._decoded(done) for done in finished]
                if not batch:
                    batches.remove(batch)
        self._running = {k: b for k, b in self._running.items() if b}

    def _decoded(self, done: Finished) -> Decoded:
        size = self._batch_size.pop(done.key, 1)
        return Decoded(done.key, [done.hypothesis], size, cancelled=done.cancelled)

    # ---- beam search ---------------------------------------------------------------------
    def _beam_group(self, out: list[Decoded]) -> None:
        """Up to ``beam_group`` waiting beam inputs of the first one's task and options."""
        if not self._beams:
            return
        key = self._beams[0][0]
        group = [s for k, s in self._beams if k == key][: self.beam_group]
        taken = {s.key for s in group}
        self._beams = deque((k, s) for k, s in self._beams if s.key not in taken)
        out += self._beam_run(key, group, len(group))

    def _beam_run(self, key: BatchKey, group: list[Source], size: int) -> list[Decoded]:
        """Beam search of a whole group; one that fails is split in halves and retried."""
        if not group:
            return []
        try:
            nbest = self._beam(key, group)
            return [Decoded(s.key, h, size) for s, h in zip(group, nbest, strict=True)]
        except Exception as e:
            if len(group) == 1:
                self._recover()
                return [self._failed(group[0].key, e)]
        # Split past the except block, whose traceback holds the failed attempt's tensors.
        self._recover()
        half = len(group) // 2
        return self._beam_run(key, group[:half], size) + self._beam_run(key, group[half:], size)

    @torch.inference_mode()
    def _beam(self, key: BatchKey, group: list[Source]) -> list[list[Hypothesis]]:
        task, opts = key.task, key.options
        head = self.model.head(task)
        # On the grid's width unless attention is asked for (its rows keep the source's own).
        src, src_len = padded([s.ids for s in group], self.device, grid=not opts.return_attention)
        memory, state = head.prepare(self.model.encode(src, src_len), shortlist=True)
        flags = None
        if self.cancelled is not None:
            ask, keys = self.cancelled, [s.key for s in group]
            flags = lambda: torch.tensor([bool(f) for f in ask(keys)])  # noqa: E731
        return beam_search(head, memory, state, opts, flags)

    # ---- failures ------------------------------------------------------------------------
    def _failed(self, key: int, error: Exception) -> Decoded:
        log.error("an input failed alone on %s", self.device, exc_info=error)
        self._batch_size.pop(key, None)
        return Decoded(key, [], 1, error=error)

    def _recover(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.empty_cache()


def flags_at(flags: Sequence[bool] | Tensor, keys: Sequence[int]) -> list[bool]:
    """The flags of these source keys, from a caller's per-input list or tensor: what a
    ``cancelled`` callable of the Scheduler returns."""
    return [bool(flags[k]) for k in keys]


def padded(
    ids: Sequence[list[int]], device: torch.device, grid: bool = False
) -> tuple[Tensor, Tensor]:
    """Id lists -> (batch x longest, PAD-filled) ids and their lengths, on ``device``.

    With ``grid`` the width is the longest rounded up to engine/shapes.py's grid: the
    products the head's ``prepare`` runs over every source position then repeat their
    shapes (the encoder packs by length and never reads the PAD)."""
    src_len = torch.tensor([len(x) for x in ids])
    width = int(src_len.max())
    src = torch.full((len(ids), shapes.width(width) if grid else width), PAD_ID, dtype=torch.long)
    for row, x in enumerate(ids):
        src[row, : len(x)] = torch.tensor(x)
    return src.to(device), src_len.to(device)
