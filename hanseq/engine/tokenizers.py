"""Text <-> token strings. ``build_tokenizer(cfg)`` picks the variant; ``fit`` learns its pieces.

- ``MecabTokenizer``: Korean morphemes with word-start marks (engine.korean), optionally split
  further into BPE pieces learned on the morphemes (Mecab + BPE: the best ko->en setting in
  Park et al., 2020). Pieces never cross a morpheme, and the marks survive, so detokenization
  is exact.
- ``SentencePieceTokenizer``: plain SentencePiece BPE, for English targets.

Both use identity normalization and byte fallback: nothing is rewritten, nothing is unknown.
"""

from __future__ import annotations

import io
import re
from abc import ABC, abstractmethod
from collections import Counter
from collections.abc import Iterable
from pathlib import Path

import sentencepiece as spm

from hanseq.engine import korean
from hanseq.engine.config import ConfigurationError, TokenizerConfig
from hanseq.engine.vocabulary import Vocabulary

CACHE_ENTRIES = 200_000  # morpheme -> pieces; real text repeats a few tens of thousands


class Tokenizer(ABC):
    def __init__(self, cfg: TokenizerConfig):
        self.cfg = cfg

    @abstractmethod
    def tokenize(self, text: str) -> list[str]: ...

    @abstractmethod
    def detokenize(self, tokens: list[str]) -> str: ...

    @abstractmethod
    def fit(self, texts: Iterable[str]) -> Vocabulary:
        """Learn pieces from training text; return the vocabulary they imply."""

    @abstractmethod
    def save(self, directory: Path, stem: str) -> list[str]:
        """Write the learned model next to the vocabulary; return the file names written."""

    @abstractmethod
    def load(self, directory: Path, stem: str) -> None: ...


class VocabularyTooSmall(ValueError):
    """SentencePiece needs at least ``needed`` pieces (every character and the 256 byte
    pieces of the byte fallback) and was asked for ``vocab_size``."""

    def __init__(self, vocab_size: int, needed: int):
        self.vocab_size, self.needed = vocab_size, needed
        super().__init__(f"vocab_size {vocab_size} is below the {needed} pieces this data needs")


class SentencePieceModel:
    """A SentencePiece BPE model trained in memory, with lossless settings."""

    def __init__(self, proto: bytes):
        self.proto = proto
        self.sp = spm.SentencePieceProcessor(model_proto=proto)

    @classmethod
    def train(
        cls, sentences: Iterable[str], vocab_size: int, dummy_prefix: bool
    ) -> SentencePieceModel:
        model = io.BytesIO()
        try:
            spm.SentencePieceTrainer.train(
                sentence_iterator=iter(sentences),
                model_writer=model,
                model_type="bpe",
                vocab_size=vocab_size,
                hard_vocab_limit=False,  # small corpora yield fewer pieces than asked: fine
                normalization_rule_name="identity",
                add_dummy_prefix=dummy_prefix,
                remove_extra_whitespaces=False,
                byte_fallback=True,
                character_coverage=0.9995,
                unk_id=0,
                bos_id=-1,
                eos_id=-1,
                minloglevel=2,
            )
        except RuntimeError as e:  # SentencePiece's message is a C++ assertion: say it plainly
            needed = re.search(r"smaller than required_chars\. \d+ vs (\d+)", str(e))
            if needed is None:
                raise
            raise VocabularyTooSmall(vocab_size, int(needed.group(1))) from None
        return cls(model.getvalue())

    def pieces(self) -> list[str]:
        return [self.sp.id_to_piece(i) for i in range(1, self.sp.get_piece_size())]

    def encode(self, text: str) -> list[str]:
        return self.sp.encode(text, out_type=str)

    def decode(self, pieces: list[str]) -> str:
        return self.sp.decode_pieces(pieces).strip()


class MecabTokenizer(Tokenizer):
    def __init__(self, cfg: TokenizerConfig):
        super().__init__(cfg)
        self.bpe: SentencePieceModel | None = None
        self._cache: dict[str, list[str]] = {}  # morpheme -> pieces; morphemes repeat a lot

    def tokenize(self, text: str) -> list[str]:
        morphemes = korean.tokenize(text)
        if self.bpe is None:
            return morphemes
        cache, out = self._cache, []
        for m in morphemes:  # a hot loop in serving: no method call per morpheme
            pieces = cache.get(m)
            if pieces is None:
                if len(cache) >= CACHE_ENTRIES:  # hostile input must not grow it forever
                    cache.clear()
                pieces = cache[m] = self.bpe.encode(m)
            out.extend(pieces)
        return out

    def detokenize(self, tokens: list[str]) -> str:
        if self.bpe is None:
            return korean.detokenize(tokens)
        return self.bpe.decode(tokens)

    def fit(self, texts: Iterable[str]) -> Vocabulary:
        morphemes = [korean.tokenize(t) for t in texts]
        if self.cfg.subword == "bpe":
            stream = (m for sentence in morphemes for m in sentence)
            self.bpe = SentencePieceModel.train(stream, self.cfg.vocab_size, dummy_prefix=False)
            return Vocabulary(self.bpe.pieces())
        counts = Counter(m for sentence in morphemes for m in sentence)
        return Vocabulary.from_counts(counts, self.cfg.min_freq, self.cfg.max_size)

    def save(self, directory: Path, stem: str) -> list[str]:
        if self.bpe is None:
            return []
        (directory / f"{stem}.spm").write_bytes(self.bpe.proto)
        return [f"{stem}.spm"]

    def load(self, directory: Path, stem: str) -> None:
        if self.cfg.subword == "bpe":
            self.bpe = SentencePieceModel((directory / f"{stem}.spm").read_bytes())


class SentencePieceTokenizer(Tokenizer):
    def __init__(self, cfg: TokenizerConfig):
        super().__init__(cfg)
        self.model: SentencePieceModel | None = None

    def tokenize(self, text: str) -> list[str]:
        text = korean.normalize(text)
        return self.model.encode(text) if text else []  # type: ignore[union-attr]

    def detokenize(self, tokens: list[str]) -> str:
        return self.model.decode(tokens)  # type: ignore[union-attr]

    def fit(self, texts: Iterable[str]) -> Vocabulary:
        normalized = (korean.normalize(t) for t in texts)
        self.model = SentencePieceModel.train(normalized, self.cfg.vocab_size, dummy_prefix=True)
        return Vocabulary(self.model.pieces())

    def save(self, directory: Path, stem: str) -> list[str]:
        (directory / f"{stem}.spm").write_bytes(self.model.proto)  # type: ignore[union-attr]
        return [f"{stem}.spm"]

    def load(self, directory: Path, stem: str) -> None:
        self.model = SentencePieceModel((directory / f"{stem}.spm").read_bytes())


_KINDS = {"mecab": MecabTokenizer, "sentencepiece": SentencePieceTokenizer}


def build_tokenizer(cfg: TokenizerConfig) -> Tokenizer:
    if cfg.kind not in _KINDS:
        raise ConfigurationError(f"tokenizer kind {cfg.kind!r}; valid: {', '.join(_KINDS)}")
    if cfg.kind == "sentencepiece" and cfg.subword != "none":
        raise ConfigurationError("subword: only the mecab tokenizer takes subword (bpe)")
    return _KINDS[cfg.kind](cfg)
