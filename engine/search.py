"""Decoding: batched greedy, beam search and sampling over one task head.

The encoder runs once per batch. Scores are summed log-probabilities (EOS included) divided by
the GNMT length penalty ``((5 + length) / 6) ** alpha``; alpha 0 leaves them raw. Beam size 1
is greedy. Attention weights (target step x source position) come back when asked for.
"""

from __future__ import annotations

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


@torch.inference_mode()
def search(
    model: Seq2Seq, task: str, src: Tensor, src_len: Tensor, opts: SearchOptions
) -> list[list[Hypothesis]]:
    """src: batch x src_len ids -> for every row, its n-best hypotheses, best first."""
    opts.validate()
    head = model.head(task)
    memory, state = head.prepare(model.encode(src, src_len))
    if opts.beam_size == 1:
        return _greedy_or_sample(head, memory, state, opts)
    return _beam(head, memory, state, opts)


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
    stuck = torch.isinf(logp).all(-1)  # everything banned: ending is the only way out
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
    head: TaskHead, memory: Memory, state: DecoderState, opts: SearchOptions
) -> list[list[Hypothesis]]:
    batch = memory.values.size(0)
    device = memory.values.device
    prev = torch.full((batch,), BOS_ID, dtype=torch.long, device=device)
    finished = torch.zeros(batch, dtype=torch.bool, device=device)
    scores = torch.zeros(batch, device=device)
    history = torch.empty(batch, 0, dtype=torch.long, device=device)
    weights: list[Tensor] = []
    generators = _generators(batch, opts, device) if opts.sampling else None
    for step in range(opts.max_length):
        logits, state, attn = head.step(prev, state, memory)
        logp = _constrain(torch.log_softmax(logits.float(), -1), history, step, opts)
        token = logp.argmax(-1) if generators is None else _sample(logits, logp, opts, generators)
        token = token.masked_fill(finished, PAD_ID)
        scores += logp.gather(1, token.unsqueeze(1)).squeeze(1).masked_fill(finished, 0.0)
        history = torch.cat([history, token.unsqueeze(1)], 1)
        if opts.return_attention:
            weights.append(attn.float())
        finished |= token == EOS_ID
        if bool(finished.all()):
            break
        prev = token
    attention = torch.stack(weights, 1) if weights else None
    return [[_hypothesis(history[i], float(scores[i]), attention, i, opts)] for i in range(batch)]


def _hypothesis(
    row: Tensor, raw: float, attention: Tensor | None, i: int, opts: SearchOptions
) -> Hypothesis:
    ids = row.tolist()
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


def _beam(
    head: TaskHead, memory: Memory, state: DecoderState, opts: SearchOptions
) -> list[list[Hypothesis]]:
    k, batch, device = opts.beam_size, memory.values.size(0), memory.values.device
    expand = torch.arange(batch, device=device).repeat_interleave(k)
    memory, state = memory.index_select(expand), state.index_select(expand)
    scores = torch.zeros(batch, k, device=device)
    scores[:, 1:] = NEG_INF  # all beams start identical: keep one until they diverge
    scores = scores.view(-1)
    history = torch.empty(batch * k, 0, dtype=torch.long, device=device)
    attn_history = memory.values.new_zeros(batch * k, 0, memory.values.size(1))
    prev = torch.full((batch * k,), BOS_ID, dtype=torch.long, device=device)
    found: list[list[Hypothesis]] = [[] for _ in range(batch)]
    done = [False] * batch
    offsets = (torch.arange(batch, device=device) * k).unsqueeze(1)
    for step in range(opts.max_length):
        logits, state, attn = head.step(prev, state, memory)
        logp = _constrain(torch.log_softmax(logits.float(), -1), history, step, opts)
        vocab = logp.size(-1)
        cand = (scores.unsqueeze(1) + logp).view(batch, k * vocab)
        top_scores, top_index = cand.topk(2 * k, dim=1)  # batch x 2k
        origin, token = top_index // vocab, top_index % vocab
        if opts.return_attention:
            attn_history = torch.cat([attn_history, attn.float().unsqueeze(1)], 1)
        _collect_finished(
            found, done, top_scores, origin + offsets, token, history, attn_history, step, opts
        )
        alive = top_scores.masked_fill(token == EOS_ID, NEG_INF)  # at most k EOS among 2k
        scores_k, pick = alive.topk(k, dim=1)
        chosen = (origin.gather(1, pick) + offsets).view(-1)
        prev = token.gather(1, pick).view(-1)
        scores = scores_k.view(-1)
        history = torch.cat([history.index_select(0, chosen), prev.unsqueeze(1)], 1)
        attn_history = attn_history.index_select(0, chosen)
        state = state.index_select(chosen)
        _mark_done(found, done, scores_k, opts)
        if all(done):
            break
    return [sorted(f, key=lambda h: -h.score)[: opts.n_best] for f in found]


def _collect_finished(
    found: list[list[Hypothesis]],
    done: list[bool],
    top_scores: Tensor,
    origin: Tensor,
    token: Tensor,
    history: Tensor,
    attn_history: Tensor,
    step: int,
    opts: SearchOptions,
) -> None:
    """Hypotheses ending in EOS within the top k candidates leave the beam, scored."""
    k = opts.beam_size
    ends = (token[:, :k] == EOS_ID) & torch.isfinite(top_scores[:, :k])
    penalty = length_penalty(step + 1, opts.length_penalty)
    for b, j in ends.nonzero().tolist():
        if done[b]:
            continue
        row = int(origin[b, j])
        attn = attn_history[row] if opts.return_attention else None
        score = float(top_scores[b, j]) / penalty
        found[b].append(Hypothesis(history[row].tolist(), score, attn))


def _mark_done(
    found: list[list[Hypothesis]], done: list[bool], alive: Tensor, opts: SearchOptions
) -> None:
    """An input is done once its n_best-th finished hypothesis beats every live one's best
    possible score: log-probs only fall, so a live score divided by the largest length
    penalty ahead is an upper bound. (Stopping at beam_size finished hypotheses instead, as
    some toolkits do, lets early junk endings cut off a confident path still running.)"""
    best_penalty = length_penalty(opts.max_length, max(opts.length_penalty, 0.0))
    for b, hyps in enumerate(found):
        if done[b] or len(hyps) < opts.n_best:
            continue
        bound = float(alive[b, 0]) / best_penalty
        nth_best = sorted((h.score for h in hyps), reverse=True)[opts.n_best - 1]
        done[b] = nth_best >= bound
