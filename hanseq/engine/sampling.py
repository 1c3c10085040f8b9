"""Sampling one token per row: temperature, top-k and top-p (nucleus) filters over the tokens
the constraints allow, each row with its own seeded generator, so a row samples the same
tokens alone or in a batch."""

from __future__ import annotations

import torch
from torch import Tensor

from hanseq.engine.constraints import NEG_INF
from hanseq.engine.options import SearchOptions


def generators(batch: int, opts: SearchOptions, device: torch.device) -> list[torch.Generator]:
    """One generator per row, all with the request's seed: a row samples the same tokens
    whether it is decoded alone or in a batch."""
    seed = opts.seed if opts.seed is not None else int(torch.randint(2**62, ()).item())
    return [torch.Generator(device=device).manual_seed(seed) for _ in range(batch)]


def sample(
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
