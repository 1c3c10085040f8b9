"""The copy mechanism (pointer-generator, See et al. 2017) as an option of a task head.

Small corpora leave many words of a summary or a reply too rare to generate well, though they
stand right there in the source. A copy head mixes two distributions at every step:

    p(w) = g * generator(w) + (1 - g) * sum of attention on the source positions holding w

with a gate g in (0, 1) computed from the decoder's attentional vector (which already mixes
the decoder state and the fresh context). Source and target have different vocabularies, so
a source piece is copyable when the target vocabulary has the same string: Korean morphemes
for respond/summarize, and for translate the Latin names, numbers and placeholders
("GIMP", "%s", "{0}") that UI strings carry over untranslated. The rest of the attention mass
falls in a sink column and the result is renormalized by the log-softmax every caller applies.

The head returns log-probabilities where a plain head returns logits; both give the same
distribution under (log-)softmax, so search, sampling and the training loss are unchanged.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from hanseq.engine.vocabulary import EOS_ID, PAD_ID, SPECIALS, Vocabulary

NOT_COPYABLE = -1  # in a copy map: this source piece has no target-side twin


def copy_map(source: Vocabulary, target: Vocabulary) -> Tensor:
    """source id -> the target id of the same piece, or NOT_COPYABLE.

    Of the specials only EOS maps (attending the source's end says "stop"); padding carries
    no weight and <unk> copies nothing."""
    ids = [target.stoi.get(piece, NOT_COPYABLE) for piece in source.itos]
    for special in SPECIALS:
        ids[source.stoi[special]] = NOT_COPYABLE
    ids[EOS_ID] = EOS_ID
    return torch.tensor(ids, dtype=torch.long)


def copy_maps(source: Vocabulary, targets: dict[str, Vocabulary]) -> dict[str, Tensor]:
    return {task: copy_map(source, target) for task, target in targets.items()}


@dataclass
class CopySources:
    """The copyable pieces of a batch of sources, found once per batch: each row's distinct
    target ids, and which source positions hold each (so a step sums attention per id)."""

    ids: Tensor  # batch x U: distinct target ids per row; padded with PAD_ID (copies nothing)
    positions: Tensor  # batch x src_len x U: 1.0 where the position holds that id

    @staticmethod
    def of(targets: Tensor) -> CopySources:
        """targets: batch x src_len target ids (NOT_COPYABLE where none)."""
        batch, length = targets.shape
        none = targets == NOT_COPYABLE
        keyed = torch.where(none, torch.iinfo(torch.long).max, targets)
        ordered, order = keyed.sort(1)
        starts = torch.ones_like(ordered, dtype=torch.bool)
        starts[:, 1:] = ordered[:, 1:] != ordered[:, :-1]
        group = starts.long().cumsum(1) - 1  # rank of each sorted position's id in its row
        width = int(group.max()) + 1 if length else 0
        ids = targets.new_full((batch, width), PAD_ID)
        ids.scatter_(1, group, torch.where(ordered == torch.iinfo(torch.long).max, PAD_ID, ordered))
        slot = torch.empty_like(group).scatter_(1, order, group)  # back in source order
        positions = torch.zeros(batch, length, width, device=targets.device)
        positions.scatter_(2, slot.unsqueeze(2), (~none).float().unsqueeze(2))
        return CopySources(ids, positions)

    def index_select(self, index: Tensor) -> CopySources:
        return CopySources(self.ids.index_select(0, index), self.positions.index_select(0, index))

    def width(self, width: int) -> CopySources:
        """Source positions padded (holding nothing) or cut to ``width``."""
        extra = width - self.positions.size(1)
        if extra <= 0:
            return CopySources(self.ids, self.positions[:, :width])
        return CopySources(self.ids, F.pad(self.positions, (0, 0, 0, extra)))

    @staticmethod
    def cat(a: CopySources, b: CopySources) -> CopySources:
        """Rows of ``a`` then of ``b`` (same source width), distinct ids padded to the wider."""
        u = max(a.ids.size(1), b.ids.size(1))

        def ids(c: CopySources) -> Tensor:
            return F.pad(c.ids, (0, u - c.ids.size(1)), value=PAD_ID)

        def positions(c: CopySources) -> Tensor:
            return F.pad(c.positions, (0, u - c.positions.size(2)))

        return CopySources(torch.cat([ids(a), ids(b)]), torch.cat([positions(a), positions(b)]))

    def mass(self, weights: Tensor) -> Tensor:
        """Attention ((batch * r) x src_len: r rows per source, or batch x steps x src_len)
        -> the attention on each distinct id ((batch * r) x U, or batch x steps x U)."""
        if weights.dim() == 2:
            grouped = weights.view(self.ids.size(0), -1, weights.size(1))
            mass = torch.bmm(grouped, self.positions.to(weights.dtype))
            return mass.view(weights.size(0), -1)
        return torch.bmm(weights, self.positions.to(weights.dtype))

    def row_ids(self, rows: int) -> Tensor:
        """``ids`` for ``rows`` decoder rows (r consecutive rows per source)."""
        share = rows // self.ids.size(0)
        return self.ids if share == 1 else self.ids.repeat_interleave(share, 0)


class CopyGate(nn.Module):
    """g = sigmoid(w . vector + b), then the mixed distribution as log-probabilities.

    Computed as log(g) + log_softmax(logits) everywhere, then corrected at the few columns
    the source can copy: log(g p + (1 - g) c) = log(g p) + softplus(log((1 - g) c) - log(g p)).
    Two passes over the vocabulary instead of the eight a dense mixture takes (measured: the
    dense form made a training step 40% slower)."""

    def __init__(self, vector_size: int, mapping: Tensor):
        super().__init__()
        self.gate = nn.Linear(vector_size, 1)
        # Rebuilt from the vocabularies whenever the model is built, so not in the weights.
        self.register_buffer("mapping", mapping, persistent=False)
        self.mapping: Tensor

    def sources(self, src: Tensor) -> CopySources:
        """batch x src_len source ids -> what those sources can copy."""
        return CopySources.of(self.mapping[src])

    def forward(self, logits: Tensor, vector: Tensor, mass: Tensor, ids: Tensor) -> Tensor:
        """logits: rows x V (generator); mass: rows x U attention on each copyable id, ids: the
        rows' ids (CopySources) -> log-probabilities, rows x V (they sum to less than 1 when
        attention falls on pieces that cannot be copied: every caller renormalizes)."""
        gate = self.gate(vector).float()  # rows x 1
        out = torch.log_softmax(logits.float(), -1) + F.logsigmoid(gate)
        here = out.gather(1, ids)
        copied = mass.float() > 0
        log_mass = torch.log(torch.where(copied, mass.float(), 1.0))  # no log(0) in backward
        delta = F.softplus(log_mass + F.logsigmoid(-gate) - here)
        return out.scatter_add(1, ids, torch.where(copied, delta, 0.0))
