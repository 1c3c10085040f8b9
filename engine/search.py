"""Decoding: batched greedy, beam search and sampling over one task head.

The encoder runs once per batch. Scores are summed log-probabilities (EOS included) divided by
the GNMT length penalty ``((5 + length) / 6) ** alpha``; alpha 0 leaves them raw. Beam size 1
is greedy. Attention weights (target step x source position) come back when asked for.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor

from engine.decoders import DecoderState, Memory
from engine.heads import Seq2Seq, TaskHead
from engine.vocabulary import BOS_ID, EOS_ID, PAD_ID, UNK_ID

NEG_INF = float("-inf")


class InvalidOptions(ValueError):
    """A decoding option is out of range; the message names it and its limit."""


@dataclass
class SearchOptions:
    beam_size: int = 1
    n_best: int = 1
    max_length: int = 100  # generated tokens, EOS included
    min_length: int = 0  # EOS is forbidden before this many tokens
    length_penalty: float = 0.0  # alpha of the GNMT penalty; 0 = raw log-probability
    no_repeat_ngram: int = 0  # > 0: never repeat an n-gram of this size
    sampling: bool = False
    temperature: float = 1.0
    top_k: int = 0  # 0 = no top-k filter
    top_p: float = 1.0  # 1.0 = no nucleus filter
    seed: int | None = None  # sampling; every row of a batch uses its own generator
    return_attention: bool = False

    def validate(self) -> None:
        """Raise InvalidOptions naming the field and its limit."""
        checks = [
            (self.beam_size >= 1, "beam_size must be >= 1"),
            (1 <= self.n_best <= self.beam_size, "n_best must be between 1 and beam_size"),
            (self.max_length >= 1, "max_length must be >= 1"),
            (0 <= self.min_length < self.max_length, "min_length must be in [0, max_length)"),
            (self.temperature > 0, "temperature must be > 0"),
            (self.top_k >= 0, "top_k must be >= 0"),
            (0 < self.top_p <= 1, "top_p must be in (0, 1]"),
            (self.no_repeat_ngram >= 0, "no_repeat_ngram must be >= 0"),
            (not (self.sampling and self.beam_size > 1), "sampling needs beam_size 1"),
        ]
        for ok, message in checks:
            if not ok:
                raise InvalidOptions(message)


@dataclass
class Hypothesis:
    tokens: list[int]  # target ids, without BOS and EOS
    score: float
    attention: Tensor | None = None  # (len(tokens) + 1) x src_len, the EOS step included


def length_penalty(length: int, alpha: float) -> float:
    return ((5.0 + length) / 6.0) ** alpha if alpha else 1.0


@dataclass
class SearchHooks:
    """Ways for a caller to watch or steer a running search (the service uses both)."""

    # -> bool tensor, one per input row: True = the caller is gone, stop decoding that row.
    cancelled: Callable[[], Tensor] | None = None
    # (input rows still decoding, the token each just produced); greedy and sampling only.
    on_step: Callable[[Tensor, Tensor], None] | None = None


@torch.inference_mode()
def search(
    model: Seq2Seq,
    task: str,
    src: Tensor,
    src_len: Tensor,
    opts: SearchOptions,
    hooks: SearchHooks | None = None,
) -> list[list[Hypothesis]]:
    """src: batch x src_len ids -> for every row, its n-best hypotheses, best first.

    A row leaves the batch as soon as it is finished or cancelled (state and memory are
    compacted), so it costs nothing in the steps after. A cancelled row's result is partial.
    """
    opts.validate()
    head = model.head(task)
    memory, state = head.prepare(model.encode(src, src_len))
    hooks = hooks or SearchHooks()
    if opts.beam_size == 1:
        return _greedy_or_sample(head, memory, state, opts, hooks)
    return _beam(head, memory, state, opts, hooks)


def _constrain(logp: Tensor, history: Tensor, step: int, opts: SearchOptions) -> Tensor:
    """Apply min/max length and n-gram blocking to batch x vocab log-probs."""
    if step < opts.min_length:
        logp[:, EOS_ID] = NEG_INF
    if opts.no_repeat_ngram and history.size(1) >= opts.no_repeat_ngram:
        _ban_repeats(logp, history, opts.no_repeat_ngram)
    if step == opts.max_length - 1:  # the last step can only end the sentence
        logp[:, :EOS_ID] = NEG_INF
        logp[:, EOS_ID + 1 :] = NEG_INF
    logp[:, [PAD_ID, BOS_ID, UNK_ID]] = NEG_INF  # never shown to a person as output
    if opts.no_repeat_ngram:  # only n-gram blocking can ban every token of a row
        stuck = torch.isinf(logp).all(-1)  # then ending is the only way out
        logp[stuck, EOS_ID] = 0.0
    return logp


def _ban_repeats(logp: Tensor, history: Tensor, n: int) -> None:
    """Forbid every token that would complete an n-gram already in ``history`` (rows x t)."""
    grams = history.unfold(1, n, 1)  # rows x (t - n + 1) x n
    prefix = history[:, history.size(1) - (n - 1) :]  # rows x (n - 1)
    match = (grams[:, :, : n - 1] == prefix.unsqueeze(1)).all(-1)  # rows x (t - n + 1)
    rows, where = match.nonzero(as_tuple=True)
    logp[rows, grams[rows, where, n - 1]] = NEG_INF


def _greedy_or_sample(
    head: TaskHead, memory: Memory, state: DecoderState, opts: SearchOptions, hooks: SearchHooks
) -> list[list[Hypothesis]]:
    batch, src_len = memory.values.shape[:2]
    device = memory.values.device
    rows = torch.arange(batch, device=device)  # input row of each live row
    prev = torch.full((batch,), BOS_ID, dtype=torch.long, device=device)
    scores = torch.zeros(batch, device=device)
    out = torch.full((batch, opts.max_length), PAD_ID, dtype=torch.long, device=device)
    weights = torch.zeros(batch, opts.max_length, src_len) if opts.return_attention else None
    history = torch.empty(batch, 0, dtype=torch.long, device=device)  # live rows only
    generators = _generators(batch, opts, device) if opts.sampling else None
    for step in range(opts.max_length):
        logits, state, attn = head.step(prev, state, memory)
        logp = _constrain(torch.log_softmax(logits.float(), -1), history, step, opts)
        if generators is None:
            token = logp.argmax(-1)
        else:
            token = _sample(logits, logp, opts, [generators[i] for i in rows.tolist()])
        scores[rows] += logp.gather(1, token.unsqueeze(1)).squeeze(1)
        out[rows, step] = token
        if weights is not None:
            weights[rows, step] = attn.float().cpu()
        if hooks.on_step:
            hooks.on_step(rows, token)
        leave = token == EOS_ID
        if hooks.cancelled is not None:
            leave |= hooks.cancelled().to(device)[rows]
        if bool(leave.all()):
            break
        history = torch.cat([history, token.unsqueeze(1)], 1)
        if bool(leave.any()):
            keep = (~leave).nonzero().squeeze(1)
            rows, token, history = rows[keep], token[keep], history[keep]
            state, memory = state.index_select(keep), memory.index_select(keep)
        prev = token
    return [[_hypothesis(out[i], float(scores[i]), weights, i, opts)] for i in range(batch)]


def _hypothesis(
    row: Tensor, raw: float, attention: Tensor | None, i: int, opts: SearchOptions
) -> Hypothesis:
    ids = [t for t in row.tolist() if t != PAD_ID]
    tokens = ids[: ids.index(EOS_ID)] if EOS_ID in ids else ids
    length = len(tokens) + 1
    attn = attention[i, :length] if attention is not None else None
    return Hypothesis(tokens, raw / length_penalty(length, opts.length_penalty), attn)


def _generators(batch: int, opts: SearchOptions, device: torch.device) -> list[torch.Generator]:
    """One generator per row, all with the request's seed: a row samples the same tokens
    whether it is decoded alone or in a batch."""
    seed = opts.seed if opts.seed is not None else int(torch.randint(2**62, ()).item())
    return [torch.Generator(device=device).manual_seed(seed) for _ in range(batch)]


def _sample(
    logits: Tensor, logp: Tensor, opts: SearchOptions, generators: list[torch.Generator]
) -> Tensor:
    """Sample from softmax(logits / T), restricted to top-k / top-p and to allowed tokens."""
    scaled = (logits.float() / opts.temperature).masked_fill(torch.isinf(logp), NEG_INF)
    if opts.top_k:
        kth = scaled.topk(min(opts.top_k, scaled.size(-1)), -1).values[:, -1:]
        scaled = scaled.masked_fill(scaled < kth, NEG_INF)
    if opts.top_p < 1.0:
        ordered, order = scaled.sort(-1, descending=True)
        before = torch.softmax(ordered, -1).cumsum(-1) - torch.softmax(ordered, -1)
        drop = (before >= opts.top_p).scatter(1, order, before >= opts.top_p)
        scaled = scaled.masked_fill(drop, NEG_INF)
    probs = torch.softmax(scaled, -1)
    picks = [torch.multinomial(probs[i], 1, generator=g) for i, g in enumerate(generators)]
    return torch.cat(picks)


@dataclass
class _Beams:
    """Live beams of the inputs still being searched: k rows per input, in input order."""

    items: Tensor  # the input row of each live input
    scores: Tensor  # (live inputs * k): summed log-probs
    history: Tensor  # (live inputs * k) x t
    attention: Tensor  # (live inputs * k) x t x src_len (t = 0 unless asked for)

    def select(self, rows: Tensor) -> None:
        self.scores = self.scores.index_select(0, rows)
        self.history = self.history.index_select(0, rows)
        self.attention = self.attention.index_select(0, rows)


def _beam(
    head: TaskHead, memory: Memory, state: DecoderState, opts: SearchOptions, hooks: SearchHooks
) -> list[list[Hypothesis]]:
    k, batch, device = opts.beam_size, memory.values.size(0), memory.values.device
    expand = torch.arange(batch, device=device).repeat_interleave(k)
    memory, state = memory.index_select(expand), state.index_select(expand)
    scores = torch.zeros(batch, k, device=device)
    scores[:, 1:] = NEG_INF  # all beams start identical: keep one until they diverge
    beams = _Beams(
        items=torch.arange(batch, device=device),
        scores=scores.view(-1),
        history=torch.empty(batch * k, 0, dtype=torch.long, device=device),
        attention=memory.values.new_zeros(batch * k, 0, memory.values.size(1)),
    )
    prev = torch.full((batch * k,), BOS_ID, dtype=torch.long, device=device)
    found: list[list[Hypothesis]] = [[] for _ in range(batch)]
    for step in range(opts.max_length):
        live = beams.items.size(0)
        logits, state, attn = head.step(prev, state, memory)
        logp = _constrain(torch.log_softmax(logits.float(), -1), beams.history, step, opts)
        vocab = logp.size(-1)
        cand = (beams.scores.unsqueeze(1) + logp).view(live, k * vocab)
        top_scores, top_index = cand.topk(2 * k, dim=1)  # live x 2k
        offsets = (torch.arange(live, device=device) * k).unsqueeze(1)
        origin, token = top_index // vocab + offsets, top_index % vocab
        if opts.return_attention:
            beams.attention = torch.cat([beams.attention, attn.float().unsqueeze(1)], 1)
        _collect_finished(found, beams, top_scores, origin, token, step, opts)
        alive = top_scores.masked_fill(token == EOS_ID, NEG_INF)  # at most k EOS among 2k
        scores_k, pick = alive.topk(k, dim=1)
        chosen = origin.gather(1, pick).view(-1)
        prev = token.gather(1, pick).view(-1)
        beams.select(chosen)
        beams.scores = scores_k.view(-1)
        beams.history = torch.cat([beams.history, prev.unsqueeze(1)], 1)
        state = state.index_select(chosen)
        done = _done(found, beams.items, scores_k, opts, hooks)
        if step == opts.max_length - 1:
            done[:] = True
        _keep_partial(found, beams, done, k, opts)
        if bool(done.all()):
            break
        if bool(done.any()):  # finished inputs leave the batch with all their beams
            keep = (~done).nonzero().squeeze(1)
            rows = (keep.unsqueeze(1) * k + torch.arange(k, device=device)).view(-1)
            beams.items = beams.items[keep]
            beams.select(rows)
            prev, state, memory = prev[rows], state.index_select(rows), memory.index_select(rows)
    return [sorted(f, key=lambda h: -h.score)[: opts.n_best] for f in found]


def _collect_finished(
    found: list[list[Hypothesis]],
    beams: _Beams,
    top_scores: Tensor,
    origin: Tensor,
    token: Tensor,
    step: int,
    opts: SearchOptions,
) -> None:
    """Hypotheses ending in EOS within the top k candidates leave the beam, scored."""
    k = opts.beam_size
    ends = (token[:, :k] == EOS_ID) & torch.isfinite(top_scores[:, :k])
    penalty = length_penalty(step + 1, opts.length_penalty)
    for b, j in ends.nonzero().tolist():
        row = int(origin[b, j])
        attn = beams.attention[row] if opts.return_attention else None
        score = float(top_scores[b, j]) / penalty
        found[int(beams.items[b])].append(Hypothesis(beams.history[row].tolist(), score, attn))


def _keep_partial(
    found: list[list[Hypothesis]], beams: _Beams, done: Tensor, k: int, opts: SearchOptions
) -> None:
    """An input leaving with no finished hypothesis (cancelled) keeps its best live beam."""
    for b in done.nonzero().squeeze(1).tolist():
        item = int(beams.items[b])
        if not found[item]:
            row = b * k
            penalty = length_penalty(beams.history.size(1), opts.length_penalty)
            attn = beams.attention[row] if opts.return_attention else None
            score = float(beams.scores[row]) / penalty
            found[item].append(Hypothesis(beams.history[row].tolist(), score, attn))


def _done(
    found: list[list[Hypothesis]],
    items: Tensor,
    alive: Tensor,
    opts: SearchOptions,
    hooks: SearchHooks,
) -> Tensor:
    """Per live input: finished, or cancelled by the caller.

    Finished means its n_best-th finished hypothesis beats every live one's best possible
    score: log-probs only fall, so a live score divided by the largest length penalty ahead
    is an upper bound. (Stopping at beam_size finished hypotheses instead, as some toolkits
    do, lets early junk endings cut off a confident path that is still running.)
    """
    best_penalty = length_penalty(opts.max_length, max(opts.length_penalty, 0.0))
    done = torch.zeros(items.size(0), dtype=torch.bool)
    for b, item in enumerate(items.tolist()):
        hyps = found[item]
        if len(hyps) >= opts.n_best:
            nth_best = sorted((h.score for h in hyps), reverse=True)[opts.n_best - 1]
            done[b] = nth_best >= float(alive[b, 0]) / best_penalty
    if hooks.cancelled is not None:
        done |= hooks.cancelled().cpu()[items.cpu()]
    return done.to(items.device)
