"""Continuous batching: greedy or sampled decoding where rows join and leave between steps.

A static batch steps until its longest output ends, and its last steps run on the few rows
still going. A RunningBatch lets new inputs join before any step (their encoder runs once, as a
group) and lets every row leave the moment it ends or its caller cancels, so a batch kept fed
stays full. Each row keeps its own step count, output and sampling generator: a row decodes
the same tokens whoever it shares the batch with. ``search`` runs its greedy and sampling
decoding through it, ``Pipeline.generate`` keeps one fed from its inputs, and the service's
workers feed one from the requests that arrive while it runs.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

from hanseq.engine import shapes
from hanseq.engine.constraints import constrain
from hanseq.engine.decoders import DecoderState, Memory
from hanseq.engine.heads import Seq2Seq
from hanseq.engine.options import Hypothesis, InvalidOptions, SearchOptions, length_penalty
from hanseq.engine.sampling import generators, sample
from hanseq.engine.vocabulary import BOS_ID, EOS_ID, PAD_ID


@dataclass
class Finished:
    key: int  # the caller's name for the row, given to join()
    hypothesis: Hypothesis
    cancelled: bool = False  # left before its end: the hypothesis is partial


class RunningBatch:
    """The live rows of one task decoded with one set of options.

    A row that ends leaves at once (its answer is taken then), but its tensors stay in the
    batch, masked, until half of the batch is such dead rows (``compact_at``) or rows join:
    compacting copies the memory and state of every row left, and at batch 64 doing it each
    time a row ended cost up to a fifth of decoding, more than stepping the dead rows does
    (greedy translate at batch 64: 1.04-1.13x in fp32; bench/README.md, "Compaction").
    A compaction (and a join) leaves the batch at a size of engine/shapes.py's grid where its
    dead rows allow, keeping some of them masked: its products then repeat their shapes.
    """

    compact_at = 0.5  # the fraction of dead rows that makes the batch compact itself

    def __init__(self, model: Seq2Seq, task: str, opts: SearchOptions):
        opts.validate()
        if opts.beam_size != 1:
            raise InvalidOptions("continuous batching decodes greedily or by sampling; beam_size 1")
        self.model, self.head, self.opts = model, model.head(task), opts
        self._attention: dict[int, list[Tensor]] = {}  # key -> one row per step, if asked
        self._cancelled: set[int] = set()
        self._empty()

    def _empty(self) -> None:
        self._keys: list[int | None] = []  # the caller's key of each row; None: it left
        self._memory: Memory | None = None
        self._state: DecoderState | None = None
        self._prev = self._scores = self._steps = self._src_len = torch.empty(0)
        self._history = torch.empty(0, 0, dtype=torch.long)  # right-aligned, PAD on the left
        self._generators: list[torch.Generator] = []

    def __len__(self) -> int:
        return len(self._keys) - self._keys.count(None)

    @property
    def keys(self) -> list[int]:
        """The caller's keys of the live rows, in row order."""
        return [k for k in self._keys if k is not None]

    @torch.inference_mode()
    def join(self, src: Tensor, src_len: Tensor, keys: Sequence[int]) -> None:
        """Add inputs (batch x src_len ids, EOS-terminated) under the caller's ``keys``."""
        self._compact(joining=len(keys))  # joining copies every row: not most dead ones too
        encoded = self.model.encode(src, src_len)
        memory, state = self.head.prepare(encoded, shortlist=not self.opts.sampling)
        memory = memory.width(shapes.width(memory.values.size(1)))
        n, device = len(keys), src.device
        width = self._history.size(1)
        fresh = {
            "_prev": torch.full((n,), BOS_ID, dtype=torch.long, device=device),
            "_scores": torch.zeros(n, device=device),
            "_steps": torch.zeros(n, dtype=torch.long, device=device),
            "_src_len": src_len.to(device),
            "_history": torch.full((n, width), PAD_ID, dtype=torch.long, device=device),
        }
        if self._memory is None or self._state is None:
            self._memory, self._state = memory, state
            for name, value in fresh.items():
                setattr(self, name, value)
        else:
            self._memory, self._state = (
                Memory.cat(self._memory, memory),
                DecoderState.cat(self._state, state),
            )
            for name, value in fresh.items():
                setattr(self, name, torch.cat([getattr(self, name), value]))
        self._keys.extend(keys)
        if self.opts.sampling:
            self._generators.extend(generators(n, self.opts, device))
        if self.opts.return_attention:
            self._attention.update({k: [] for k in keys})

    def cancel(self, keys: Iterable[int]) -> None:
        """These rows leave after the next step, with what they have decoded by then."""
        self._cancelled.update(keys)

    @torch.inference_mode()
    def step(self, on_step: Callable[[list[int], list[int]], None] | None = None) -> list[Finished]:
        """One decoder step for every live row -> the rows that left.

        ``on_step(keys, tokens)`` sees the token each live row just produced (EOS included).
        """
        assert self._memory is not None and self._state is not None, "join() before step()"
        memory = self._memory
        logits, self._state, attn = self.head.step(self._prev, self._state, memory)
        logp = self.head.log_probs(logits)
        logp = constrain(
            logp,
            self._history,
            self._steps,
            self.opts,
            memory.shortlist,
            self.head.byte_kinds,
            self.head.agreement,
        )
        if self.opts.sampling:
            column = sample(logits, logp, self.opts, self._generators)
        else:
            column = logp.argmax(-1)
        self._scores += logp.gather(1, column.unsqueeze(1)).squeeze(1)
        token = memory.token_ids(column)
        self._history = torch.cat([self._history, token.unsqueeze(1)], 1)
        self._steps += 1
        if self.opts.return_attention:
            self._record_attention(attn)
        tokens = token.tolist()
        live = [k is not None for k in self._keys]
        if on_step is not None:
            on_step(self.keys, [t for t, alive in zip(tokens, live, strict=True) if alive])
        ended = [alive and t == EOS_ID for t, alive in zip(tokens, live, strict=True)]
        gone = [k is not None and k in self._cancelled for k in self._keys]
        self._prev = token
        if not any(ended) and not any(gone):
            return []
        return self._leave(ended, gone)

    def _record_attention(self, attn: Tensor) -> None:
        weights = attn.float().cpu()
        for row, (key, length) in enumerate(zip(self._keys, self._src_len.tolist(), strict=True)):
            if key is not None:
                self._attention[key].append(weights[row, :length])

    def _leave(self, ended: list[bool], gone: list[bool]) -> list[Finished]:
        """The ended and cancelled rows leave (dead from now on); the batch compacts once
        enough of it is dead."""
        finished = []
        steps = self._steps.tolist()
        for row, key in enumerate(self._keys):
            if key is None or not (ended[row] or gone[row]):
                continue
            finished.append(Finished(key, self._hypothesis(row, key, steps[row]), not ended[row]))
            self._cancelled.discard(key)
            self._keys[row] = None
        if self._keys.count(None) >= max(1, self.compact_at * len(self._keys)):
            self._compact()
        return finished

    def _compact(self, joining: int = 0) -> None:
        """Drop the dead rows' tensors but those that, with ``joining`` rows to come, fill
        the batch to a size of the grid (all of them, if none is live)."""
        dead = [row for row, key in enumerate(self._keys) if key is None]
        if not dead:
            return
        live = [row for row, key in enumerate(self._keys) if key is not None]
        filler = shapes.rows(len(live) + joining) - joining - len(live) if live else 0
        if filler >= len(dead):
            return
        self._keep(sorted(live + dead[: max(filler, 0)]))

    def _keep(self, rows: list[int]) -> None:
        """Only these rows stay; the memory shrinks to the longest source among them."""
        if not rows:
            self._empty()
            return
        index = torch.tensor(rows, dtype=torch.long, device=self._prev.device)
        self._keys = [self._keys[r] for r in rows]
        self._generators = [self._generators[r] for r in rows] if self._generators else []
        for name in ("_prev", "_scores", "_steps", "_src_len", "_history"):
            setattr(self, name, getattr(self, name).index_select(0, index))
        self._state = self._state.index_select(index)  # type: ignore[union-attr]
        memory = self._memory.index_select(index)  # type: ignore[union-attr]
        self._memory = memory.width(shapes.width(int(self._src_len.max())))
        self._history = self._history[:, self._history.size(1) - int(self._steps.max()) :]

    def split(self) -> RunningBatch:
        """Move the second half of the rows into a new RunningBatch (returned); both go on
        decoding as they would have. For a batch whose step does not fit in memory."""
        self._keep([row for row, key in enumerate(self._keys) if key is not None])
        half = len(self) // 2
        other = copy.copy(self)
        other._attention, other._cancelled = self._attention, set(self._cancelled)
        other._keep(list(range(half, len(self))))
        self._keep(list(range(half)))
        return other

    def _hypothesis(self, row: int, key: int, steps: int) -> Hypothesis:
        ids = self._history[row, self._history.size(1) - steps :].tolist()
        tokens = ids[:-1] if ids and ids[-1] == EOS_ID else ids
        length = len(tokens) + 1
        raw = float(self._scores[row])
        attention = None
        if self.opts.return_attention:
            attention = torch.stack(self._attention.pop(key))
        return Hypothesis(tokens, raw / length_penalty(length, self.opts.length_penalty), attention)
