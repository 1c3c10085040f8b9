"""Text in, text out: tokenize -> batch by length -> search -> detokenize.

The one entry point the CLI, validation during training and the service's workers share.
"""

from __future__ import annotations

import logging
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field

import torch

from hanseq.engine.bundle import Bundle, Side
from hanseq.engine.continuous import RunningBatch
from hanseq.engine.heads import Seq2Seq
from hanseq.engine.options import Hypothesis, SearchOptions
from hanseq.engine.search import SearchHooks, search
from hanseq.engine.vocabulary import EOS_ID, PAD_ID

log = logging.getLogger(__name__)
StepHook = Callable[[list[int], list[int]], None]


class UnknownTask(ValueError):
    """The bundle has no head for this task; the message lists the ones it has."""


@dataclass
class Generation:
    text: str
    score: float
    tokens: list[str] = field(default_factory=list)  # target tokens (pieces / morphemes)
    source_tokens: list[str] = field(default_factory=list)
    alternatives: list[tuple[str, float]] = field(default_factory=list)  # n-best after the 1st
    attention: list[list[float]] | None = None  # (len(tokens) + 1) x (len(source_tokens) + 1)
    truncated: bool = False  # the input was longer than max_source_length


class Pipeline:
    def __init__(
        self,
        model: Seq2Seq,
        source: Side,
        targets: dict[str, Side],
        max_source_length: int = 200,
        batch_size: int = 64,
        warn_truncated: bool = True,
    ):
        self.model = model
        self.source = source
        self.targets = targets
        self.max_source_length = max_source_length
        self.batch_size = batch_size
        self.warn_truncated = warn_truncated

    @classmethod
    def from_bundle(cls, bundle: Bundle, batch_size: int = 64) -> Pipeline:
        max_len = bundle.manifest.get("max_source_length", 200)
        return cls(bundle.model, bundle.source, bundle.targets, max_len, batch_size)

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    def check_task(self, task: str) -> Side:
        if task not in self.targets:
            raise UnknownTask(
                f"unknown task {task!r}; this model serves: {', '.join(self.targets)}"
            )
        return self.targets[task]

    def generate(
        self,
        task: str,
        texts: list[str],
        opts: SearchOptions | None = None,
        progress: Callable[[int], None] | None = None,
        cancelled: Callable[[], Sequence[bool]] | None = None,
        on_partial: Callable[[int, str], None] | None = None,
    ) -> list[Generation]:
        """One Generation per text, in order. An empty (or all-space) text gives empty text.

        ``cancelled()`` -> one flag per text: a flagged text stops decoding at the next step
        (its result is partial). ``on_partial(i, text_so_far)`` reports greedy/sampling output
        of text i as it grows.
        """
        self.check_task(task)
        opts = opts or SearchOptions()
        opts.validate()
        sources = self.tokenize(texts)
        order = sorted((i for i, s in enumerate(sources) if s), key=lambda i: len(sources[i]))
        results: dict[int, Generation] = {}
        if opts.beam_size == 1:
            decoded = self._running(task, sources, order, opts, cancelled, on_partial)
        else:
            decoded = self._static(task, sources, order, opts, cancelled)
        for i, hyps in decoded:
            results[i] = self.result(task, sources[i], hyps)
            if progress:
                progress(1)
        truncated = sum(1 for r in results.values() if r.truncated)
        if truncated and self.warn_truncated:
            log.warning(
                "%d input(s) longer than %d tokens were truncated",
                truncated,
                self.max_source_length,
            )
        return [results.get(i, Generation("", 0.0)) for i in range(len(texts))]

    def _running(
        self,
        task: str,
        sources: list[list[str]],
        order: list[int],
        opts: SearchOptions,
        cancelled: Callable[[], Sequence[bool]] | None,
        on_partial: Callable[[int, str], None] | None,
    ) -> Iterator[tuple[int, list[Hypothesis]]]:
        """Greedy / sampling with continuous batching: up to ``batch_size`` rows decode at
        once, and inputs join as rows finish, in groups of at least a quarter of the batch so
        that the encoder still runs batched. Longest inputs first: long outputs then overlap
        with many short ones instead of running alone at the end."""
        running = RunningBatch(self.model, task, opts)
        pending = deque(reversed(order))
        group = max(1, self.batch_size // 4)
        on_step = self._partials(task, on_partial) if on_partial else None
        while pending or running:
            free = self.batch_size - len(running)
            if pending and free >= min(group, len(pending)):
                joining = [pending.popleft() for _ in range(min(free, len(pending)))]
                self.join(running, [sources[i] for i in joining], joining)
            if cancelled is not None:
                flags = cancelled()
                running.cancel(k for k in running.keys if flags[k])
            for done in running.step(on_step):
                yield done.key, [done.hypothesis]

    def _static(
        self,
        task: str,
        sources: list[list[str]],
        order: list[int],
        opts: SearchOptions,
        cancelled: Callable[[], Sequence[bool]] | None,
    ) -> Iterator[tuple[int, list[Hypothesis]]]:
        """Beam search, ``batch_size`` inputs at a time (shortest first)."""
        for start in range(0, len(order), self.batch_size):
            chunk = order[start : start + self.batch_size]
            hooks = SearchHooks(_flags(cancelled, chunk)) if cancelled is not None else None
            src, src_len = self.encode_sources([sources[i] for i in chunk])
            nbest = search(self.model, task, src, src_len, opts, hooks)
            yield from zip(chunk, nbest, strict=True)

    def encode_sources(self, sources: list[list[str]]) -> tuple[torch.Tensor, torch.Tensor]:
        """Token lists -> padded ids (batch x max_len, EOS-terminated) and lengths; a list
        longer than ``max_source_length`` is cut to fit."""
        limit = self.max_source_length - 1  # room for EOS
        ids = [self.source.vocab.encode(s[:limit]) + [EOS_ID] for s in sources]
        src_len = torch.tensor([len(x) for x in ids])
        src = torch.full((len(ids), int(src_len.max())), PAD_ID, dtype=torch.long)
        for row, x in enumerate(ids):
            src[row, : len(x)] = torch.tensor(x)
        return src.to(self.device), src_len.to(self.device)

    def tokenize(self, texts: list[str]) -> list[list[str]]:
        return [self.source.tokenize(t) for t in texts]

    def join(self, running: RunningBatch, sources: list[list[str]], keys: list[int]) -> None:
        """Tokenized (non-empty) inputs join a running batch under the caller's ``keys``."""
        running.join(*self.encode_sources(sources), keys)

    def text(self, task: str, ids: list[int]) -> str:
        """Target ids -> detokenized text."""
        target = self.targets[task]
        return target.tokenizer.detokenize(target.vocab.decode(ids))

    def result(self, task: str, source: list[str], hyps: list[Hypothesis]) -> Generation:
        """The Generation of a source (its tokens, before truncation) from its n-best."""
        target = self.targets[task]
        best = hyps[0]
        tokens = target.vocab.decode(best.tokens)
        kept = source[: self.max_source_length - 1]
        attention = None
        if best.attention is not None:
            attention = best.attention[:, : len(kept) + 1].tolist()
        return Generation(
            text=target.tokenizer.detokenize(tokens),
            score=best.score,
            tokens=tokens,
            source_tokens=kept,
            alternatives=[(self.text(task, h.tokens), h.score) for h in hyps[1:]],
            attention=attention,
            truncated=len(kept) < len(source),
        )

    def _partials(self, task: str, on_partial: Callable[[int, str], None]) -> StepHook:
        """A step hook that reports each input's text so far (as ids grow, detokenized)."""
        so_far: dict[int, list[int]] = {}

        def step(keys: list[int], tokens: list[int]) -> None:
            for key, token in zip(keys, tokens, strict=True):
                if token != EOS_ID:
                    ids = so_far.setdefault(key, [])
                    ids.append(token)
                    on_partial(key, self.text(task, ids))

        return step


def _flags(cancelled: Callable[[], Sequence[bool]], chunk: list[int]) -> Callable[[], torch.Tensor]:
    """The cancel flags of one beam batch, whose row r is input ``chunk[r]``."""
    return lambda: torch.tensor([bool(cancelled()[i]) for i in chunk])
