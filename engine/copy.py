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

import torch
from torch import Tensor, nn

from engine.vocabulary import EOS_ID, SPECIALS, Vocabulary

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


class CopyGate(nn.Module):
    """g = sigmoid(w . vector + b), then the mixed distribution as log-probabilities."""

    def __init__(self, vector_size: int, mapping: Tensor):
        super().__init__()
        self.gate = nn.Linear(vector_size, 1)
        # Rebuilt from the vocabularies whenever the model is built, so not in the weights.
        self.register_buffer("mapping", mapping, persistent=False)
        self.mapping: Tensor

    def source_targets(self, src: Tensor) -> Tensor:
        """batch x src_len source ids -> the target id each position copies (or NOT_COPYABLE)."""
        return self.mapping[src]

    def forward(self, logits: Tensor, vector: Tensor, weights: Tensor, targets: Tensor) -> Tensor:
        """logits: batch x V (generator), weights: batch x src_len attention, targets: the
        source_targets of the same rows -> log-probabilities, batch x V."""
        g = torch.sigmoid(self.gate(vector))  # batch x 1
        width = logits.size(1)
        columns = torch.where(targets == NOT_COPYABLE, width, targets)  # sink: one extra column
        copied = logits.new_zeros(logits.size(0), width + 1)
        copied.scatter_add_(1, columns, weights.to(logits.dtype))
        probs = g * torch.softmax(logits, -1) + (1 - g) * copied[:, :width]
        # Clamped so that label smoothing (a mean over every column) stays finite; columns
        # at -inf in the logits (inference padding) are put back to -inf by the caller.
        return torch.log(probs.clamp_min(1e-12))
