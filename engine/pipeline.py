"""Text in, text out: tokenize -> batch by length -> search -> detokenize.

The one entry point the CLI, validation during training and the service's workers share.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import torch

from engine.bundle import Bundle, Side
from engine.heads import Seq2Seq
from engine.search import Hypothesis, SearchHooks, SearchOptions, search
from engine.vocabulary import EOS_ID, PAD_ID

log = logging.getLogger(__name__)


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
        target = self.check_task(task)
        opts = opts or SearchOptions()
        opts.validate()
        sources = [self.source.tokenizer.tokenize(t) for t in texts]
        results: list[Generation | None] = [None] * len(texts)
        order = sorted((i for i, s in enumerate(sources) if s), key=lambda i: len(sources[i]))
        for start in range(0, len(order), self.batch_size):
            chunk = order[start : start + self.batch_size]
            hooks = _chunk_hooks(chunk, target, cancelled, on_partial)
            batch = [sources[i] for i in chunk]
            generations = self._generate_batch(task, target, batch, opts, hooks)
            for i, gen in zip(chunk, generations, strict=True):
                results[i] = gen
            if progress:
                progress(len(chunk))
        truncated = sum(1 for r in results if r and r.truncated)
        if truncated and self.warn_truncated:
            log.warning(
                "%d input(s) longer than %d tokens were truncated",
                truncated,
                self.max_source_length,
            )
        return [r if r is not None else Generation("", 0.0) for r in results]

    def _generate_batch(
        self,
        task: str,
        target: Side,
        sources: list[list[str]],
        opts: SearchOptions,
        hooks: SearchHooks | None = None,
    ) -> list[Generation]:
        limit = self.max_source_length - 1  # room for EOS
        kept = [s[:limit] for s in sources]
        src, src_len = self.encode_sources(kept)
        nbest = search(self.model, task, src, src_len, opts, hooks)
        return [
            self._result(target, s, hyps, len(orig) > limit)
            for s, orig, hyps in zip(kept, sources, nbest, strict=True)
        ]

    def encode_sources(self, sources: list[list[str]]) -> tuple[torch.Tensor, torch.Tensor]:
        """Token lists -> padded ids (batch x max_len, EOS-terminated) and lengths."""
        ids = [self.source.vocab.encode(s) + [EOS_ID] for s in sources]
        src_len = torch.tensor([len(x) for x in ids])
        src = torch.full((len(ids), int(src_len.max())), PAD_ID, dtype=torch.long)
        for row, x in enumerate(ids):
            src[row, : len(x)] = torch.tensor(x)
        return src.to(self.device), src_len.to(self.device)

    def _result(
        self, target: Side, source: list[str], hyps: list[Hypothesis], truncated: bool
    ) -> Generation:
        best = hyps[0]
        tokens = target.vocab.decode(best.tokens)
        attention = None
        if best.attention is not None:
            attention = best.attention[:, : len(source) + 1].tolist()
        return Generation(
            text=target.tokenizer.detokenize(tokens),
            score=best.score,
            tokens=tokens,
            source_tokens=source,
            alternatives=[(self._text(target, h), h.score) for h in hyps[1:]],
            attention=attention,
            truncated=truncated,
        )

    @staticmethod
    def _text(target: Side, hyp: Hypothesis) -> str:
        return target.tokenizer.detokenize(target.vocab.decode(hyp.tokens))


def _chunk_hooks(
    chunk: list[int],
    target: Side,
    cancelled: Callable[[], Sequence[bool]] | None,
    on_partial: Callable[[int, str], None] | None,
) -> SearchHooks | None:
    """Search hooks for one batch, whose row r is input ``chunk[r]``."""
    if cancelled is None and on_partial is None:
        return None
    hooks = SearchHooks()
    if cancelled is not None:
        hooks.cancelled = lambda: torch.tensor([bool(cancelled()[i]) for i in chunk])
    if on_partial is not None:
        so_far: dict[int, list[int]] = {i: [] for i in chunk}

        def step(rows: torch.Tensor, tokens: torch.Tensor) -> None:
            for row, token in zip(rows.tolist(), tokens.tolist(), strict=True):
                if token != EOS_ID:
                    ids = so_far[chunk[row]]
                    ids.append(token)
                    on_partial(chunk[row], target.tokenizer.detokenize(target.vocab.decode(ids)))

        hooks.on_step = step
    return hooks
