"""Rules every search applies to one step's distribution: length limits, n-gram blocking,
whole UTF-8 characters (utf8.py) and never-shown tokens (sampling's own filters are in
sampling.py).

Each row carries its own step count, so rows that started at different steps (continuous
batching) share one call.
"""

from __future__ import annotations

import torch
from torch import Tensor

from hanseq.engine.options import SearchOptions
from hanseq.engine.particles import Agreement
from hanseq.engine.shortlist import RowShortlist
from hanseq.engine.utf8 import NEG_INF, keep_whole
from hanseq.engine.vocabulary import BOS_ID, EOS_ID, PAD_ID, UNK_ID


def constrain(
    logp: Tensor,
    history: Tensor,
    steps: Tensor,
    opts: SearchOptions,
    shortlist: RowShortlist | None = None,
    byte_kinds: Tensor | None = None,
    agreement: Agreement | None = None,
) -> Tensor:
    """Apply min/max length, n-gram blocking, whole UTF-8 characters (``byte_kinds``:
    engine/utf8.py, for a vocabulary with byte pieces) and Korean particle forms
    (``agreement``: engine/particles.py) to rows x vocab log-probs, in place.

    ``steps``: tokens each row has produced so far; ``history``: those tokens, right-aligned
    (rows that have fewer are PAD on the left, which no n-gram of real tokens matches).
    With a ``shortlist`` the columns are its columns; the specials keep theirs (its first).
    """
    if opts.min_length:
        logp[steps < opts.min_length, EOS_ID] = NEG_INF
    if opts.no_repeat_ngram and history.size(1) >= opts.no_repeat_ngram:
        ban_repeats(logp, history, opts.no_repeat_ngram, shortlist)
    if byte_kinds is not None:
        keep_whole(logp, history, byte_kinds, None if shortlist is None else shortlist.columns)
    if agreement is not None:
        agreement.apply(logp, history, shortlist)
    last = steps >= opts.max_length - 1  # the last step can only end the sentence
    if bool(last.any()):
        eos = logp[last, EOS_ID]
        logp[last] = NEG_INF
        logp[last, EOS_ID] = eos
    logp[:, [PAD_ID, BOS_ID, UNK_ID]] = NEG_INF  # never shown to a person as output
    if opts.no_repeat_ngram:  # only n-gram blocking can ban every token of a row
        stuck = torch.isinf(logp).all(-1)  # then ending is the only way out
        logp[stuck, EOS_ID] = 0.0
    return logp


def ban_repeats(
    logp: Tensor, history: Tensor, n: int, shortlist: RowShortlist | None = None
) -> None:
    """Forbid every token that would complete an n-gram already in ``history`` (rows x t)."""
    grams = history.unfold(1, n, 1)  # rows x (t - n + 1) x n
    prefix = history[:, history.size(1) - (n - 1) :]  # rows x (n - 1)
    match = (grams[:, :, : n - 1] == prefix.unsqueeze(1)).all(-1)  # rows x (t - n + 1)
    rows, where = match.nonzero(as_tuple=True)
    banned = grams[rows, where, n - 1]
    if shortlist is not None:  # an id outside the columns cannot be output anyway
        columns = shortlist.positions(banned)
        inside = shortlist.columns[columns] == banned
        rows, banned = rows[inside], columns[inside]
    logp[rows, banned] = NEG_INF
