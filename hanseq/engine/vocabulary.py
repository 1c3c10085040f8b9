"""Token <-> id maps with the four specials every head shares."""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable
from pathlib import Path

PAD, UNK, BOS, EOS = "<pad>", "<unk>", "<bos>", "<eos>"
SPECIALS = (PAD, UNK, BOS, EOS)
PAD_ID, UNK_ID, BOS_ID, EOS_ID = range(4)


class Vocabulary:
    """Ids 0-3 are the specials; the rest follow in the order given (most frequent first)."""

    def __init__(self, tokens: Iterable[str]):
        self.itos: list[str] = list(SPECIALS)
        self.itos += [t for t in dict.fromkeys(tokens) if t not in SPECIALS]
        self.stoi: dict[str, int] = {t: i for i, t in enumerate(self.itos)}

    @classmethod
    def from_counts(
        cls, counts: Counter[str], min_freq: int = 1, max_size: int | None = None
    ) -> Vocabulary:
        ranked = sorted((t for t, c in counts.items() if c >= min_freq), key=lambda t: -counts[t])
        return cls(ranked[:max_size] if max_size else ranked)

    def __len__(self) -> int:
        return len(self.itos)

    def encode(self, tokens: list[str]) -> list[int]:
        return [self.stoi.get(t, UNK_ID) for t in tokens]

    def decode(self, ids: Iterable[int]) -> list[str]:
        """Ids -> tokens, stopping at EOS; padding and BOS are dropped."""
        out = []
        for i in ids:
            if i == EOS_ID:
                break
            if i not in (PAD_ID, BOS_ID):
                out.append(self.itos[i])
        return out

    def save(self, path: Path) -> None:
        path.write_text("".join(t + "\n" for t in self.itos), encoding="utf-8")

    @classmethod
    def load(cls, path: Path) -> Vocabulary:
        return cls(path.read_text(encoding="utf-8").split("\n")[:-1])
