"""Text in, text out: tokenize -> batch by length -> search -> detokenize.

The one entry point the CLI, validation during training and the service's workers share.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence

import torch

from hanseq.engine.bundle import Bundle, Side
from hanseq.engine.heads import Seq2Seq
from hanseq.engine.options import BatchKey, Generation, Hypothesis, SearchOptions
from hanseq.engine.particles import Agreement
from hanseq.engine.scheduler import Scheduler, Source, flags_at, padded
from hanseq.engine.utf8 import byte_kinds
from hanseq.engine.vocabulary import EOS_ID

log = logging.getLogger(__name__)
StepHook = Callable[[list[int], list[int]], None]


class UnknownTask(ValueError):
    """The bundle has no head for this task; the message lists the ones it has."""


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
        device = next(model.parameters()).device
        for task, side in targets.items():  # every search of the head keeps characters
            head = model.head(task)  # whole and its Korean particles in agreement
            kinds = byte_kinds(side.vocab.itos)
            head.byte_kinds = None if kinds is None else kinds.to(device)
            agreement = Agreement.of(side.vocab.itos)
            head.agreement = None if agreement is None else agreement.to(device)

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

        ``cancelled()`` -> one flag per text, asked once per decoding step: a flagged text
        stops decoding at the next step (its result is partial). ``on_partial(i, text_so_far)``
        reports greedy/sampling output of text i as it grows.
        """
        self.check_task(task)
        opts = opts or SearchOptions()
        opts.validate()
        sources = self.tokenize(texts)
        scheduler = self.scheduler(cancelled)
        scheduler.add(BatchKey(task, opts), self._ordered(sources, opts))
        on_step = self._partials(task, on_partial) if on_partial else None
        results: dict[int, Generation] = {}
        for done in scheduler.run(on_step):
            if done.error is not None:
                raise done.error
            results[done.key] = self.result(task, sources[done.key], done.hypotheses)
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

    def scheduler(self, cancelled: Callable[[], Sequence[bool]] | None = None) -> Scheduler:
        """A scheduler for ``batch_size`` rows at once. Greedy inputs join as rows finish, in
        groups of at least a quarter of the batch, so that the encoder still runs batched;
        beam search decodes ``batch_size`` inputs at a time."""
        asked = None
        if cancelled is not None:
            asked = lambda keys: flags_at(cancelled(), keys)  # noqa: E731
        return Scheduler(
            self.model,
            max_rows=self.batch_size,
            join_group=max(1, self.batch_size // 4),
            beam_group=self.batch_size,
            cancelled=asked,
        )

    def _ordered(self, sources: list[list[str]], opts: SearchOptions) -> list[Source]:
        """The non-empty inputs as scheduler sources. Greedy: longest first, so that long
        outputs overlap with many short ones instead of running alone at the end; beam
        search: shortest first, groups of similar length (little padding)."""
        order = sorted((i for i, s in enumerate(sources) if s), key=lambda i: len(sources[i]))
        if opts.beam_size == 1:
            order.reverse()
        return [Source(i, self.source_ids(sources[i])) for i in order]

    def source_ids(self, tokens: list[str]) -> list[int]:
        """Tokens -> EOS-terminated ids, cut to ``max_source_length``."""
        return self.source.vocab.encode(tokens[: self.max_source_length - 1]) + [EOS_ID]

    def encode_sources(self, sources: list[list[str]]) -> tuple[torch.Tensor, torch.Tensor]:
        """Token lists -> padded ids (batch x max_len, EOS-terminated) and lengths; a list
        longer than ``max_source_length`` is cut to fit."""
        return padded([self.source_ids(s) for s in sources], self.device)

    def tokenize(self, texts: list[str]) -> list[list[str]]:
        return [self.source.tokenize(t) for t in texts]

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
