"""Growing a trained model's hidden size without changing what it computes (Net2WiderNet).

A model at hidden size 256 has been trained for many hours; one at 512 trained from scratch
needs as many again before it catches up (models/README.md, "Capacity"). Widening starts the
bigger model where the smaller one is: every new unit is a copy of an old one (the same
incoming weights, so the same activation at every step), and the weights that read a unit and
its copies share the old weight between them, so the layer above sums to what it summed
before (Chen, Goodfellow and Shlens, 2016, "Net2Net").

The shares are drawn at random per weight (they sum to 1 over a unit's copies), not halved:
with equal shares a unit and its copy get gradients that differ by a constant factor, which
Adam's per-weight scaling turns into equal updates, and the copies would never part.

Widened here: the encoder's RNN (each direction), every decoder's RNN, the bridges, the
attention's key (and, for Bahdanau, query and energy) layers and the combine layer's inputs.
The embeddings, the attentional vector (``embedding_dim``, tied to the generator) and the
copy gates keep their sizes. Dot attention cannot be widened this way (a query unit and its
copy would both meet the key's copy: the scores would double) and is refused.
"""

from __future__ import annotations

import torch
from torch import Tensor

from hanseq.engine.config import ModelConfig, can_widen

State = dict[str, Tensor]


def widen(state: State, old: ModelConfig, new: ModelConfig, seed: int = 0) -> State:
    """``state`` (a Seq2Seq of shape ``old``) -> the state of a Seq2Seq of shape ``new`` that
    computes the same outputs (exactly in eval mode, up to float rounding)."""
    why = can_widen(old, new)
    if why is not None:
        raise ValueError(f"cannot widen the model: {why}")
    gen = torch.Generator().manual_seed(seed)
    directions = 2 if new.bidirectional else 1
    g_dir = _mapping(old.hidden_size // directions, new.hidden_size // directions)
    g_enc = torch.cat([d * (old.hidden_size // directions) + g_dir for d in range(directions)])
    g_dec = _mapping(old.hidden_size, new.hidden_size)
    out = dict(state)
    gates = 4 if new.rnn == "lstm" else 3
    for layer in range(new.encoder_layers):
        inputs = None if layer == 0 else g_enc  # a layer above reads both directions
        for suffix in ("", "_reverse")[:directions]:
            _widen_rnn(out, "encoder.rnn.", f"_l{layer}{suffix}", gates, g_dir, inputs, 0, gen)
    heads = sorted({name.split(".")[1] for name in state if name.startswith("heads.")})
    for task in heads:
        _widen_decoder(out, f"heads.{task}.decoder.", new, gates, g_dec, g_enc, gen)
    return out


def _widen_decoder(
    out: State,
    prefix: str,
    cfg: ModelConfig,
    gates: int,
    g_dec: Tensor,
    g_enc: Tensor,
    gen: torch.Generator,
) -> None:
    # The first layer reads [embedding, input feed, encoder summary if peeky]: only the
    # summary's columns are hidden units.
    first = cfg.embedding_dim + (cfg.embedding_dim if cfg.input_feeding else 0)
    for layer in range(cfg.decoder_layers):
        inputs = (g_enc if cfg.peeky else None) if layer == 0 else g_dec
        _widen_rnn(
            out,
            f"{prefix}rnn.",
            f"_l{layer}",
            gates,
            g_dec,
            inputs,
            first if layer == 0 else 0,
            gen,
        )
    for bridge in ("bridge", "bridge_cell"):
        if f"{prefix}{bridge}.weight" in out:  # a unit's copy starts from the same state
            weight = _split_columns(out[f"{prefix}{bridge}.weight"], g_enc, 0, gen)
            out[f"{prefix}{bridge}.weight"] = weight[g_dec]
            out[f"{prefix}{bridge}.bias"] = out[f"{prefix}{bridge}.bias"][g_dec]
    _widen_attention(out, f"{prefix}attention.", cfg.attention, g_dec, g_enc, gen)
    # combine reads [decoder output, context, summary if peeky]
    combine = out[f"{prefix}combine.weight"]
    old_dec = int(g_dec.max()) + 1
    old_enc = int(g_enc.max()) + 1
    parts = [(combine[:, :old_dec], g_dec), (combine[:, old_dec : old_dec + old_enc], g_enc)]
    if cfg.peeky:
        parts.append((combine[:, old_dec + old_enc :], g_enc))
    out[f"{prefix}combine.weight"] = torch.cat([_split_columns(w, g, 0, gen) for w, g in parts], 1)


def _widen_attention(
    out: State, prefix: str, kind: str, g_dec: Tensor, g_enc: Tensor, gen: torch.Generator
) -> None:
    key = _split_columns(out[f"{prefix}key_layer.weight"], g_enc, 0, gen)
    if kind == "general":  # score = query . (W key): the query's copies share W's rows
        out[f"{prefix}key_layer.weight"] = _split_rows(key, g_dec, gen)
        return
    # Bahdanau: v . tanh(W_k key + W_q query), its hidden units are the decoder's size
    out[f"{prefix}key_layer.weight"] = key[g_dec]
    query = _split_columns(out[f"{prefix}query_layer.weight"], g_dec, 0, gen)
    out[f"{prefix}query_layer.weight"] = query[g_dec]
    out[f"{prefix}energy.weight"] = _split_columns(out[f"{prefix}energy.weight"], g_dec, 0, gen)


def _widen_rnn(
    out: State,
    prefix: str,
    suffix: str,
    gates: int,
    g_units: Tensor,
    g_inputs: Tensor | None,
    first: int,
    gen: torch.Generator,
) -> None:
    """One RNN layer: its units (rows, per gate) copied by ``g_units``; its recurrent
    columns split by ``g_units``; its input columns from ``first`` on split by ``g_inputs``
    (None: the input does not grow)."""
    w_ih, w_hh = f"{prefix}weight_ih{suffix}", f"{prefix}weight_hh{suffix}"
    if g_inputs is not None:
        out[w_ih] = _split_columns(out[w_ih], g_inputs, first, gen)
    out[w_hh] = _split_columns(out[w_hh], g_units, 0, gen)
    for name in (w_ih, w_hh, f"{prefix}bias_ih{suffix}", f"{prefix}bias_hh{suffix}"):
        out[name] = _gate_rows(out[name], gates, g_units)


def _mapping(old: int, new: int) -> Tensor:
    """New unit -> the old unit it copies: the old ones in place, then copies in turn."""
    return torch.arange(new) % old


def _gate_rows(t: Tensor, gates: int, g: Tensor) -> Tensor:
    """Rows stacked gate by gate (PyTorch's RNN layout) -> each gate's rows copied by ``g``."""
    per_gate = t.view(gates, t.size(0) // gates, *t.shape[1:])
    return per_gate[:, g].reshape(gates * len(g), *t.shape[1:])


def _shares(like: Tensor, g: Tensor, dim: int, gen: torch.Generator) -> Tensor:
    """Random positive shares, shaped ``like``, summing to 1 over each old unit's copies
    along ``dim`` (a unit without copies gets exactly 1)."""
    draw = torch.rand(like.shape, generator=gen, dtype=torch.float64) + 0.5
    total = torch.zeros_like(draw).index_add_(dim, g, draw)
    total = total.narrow(dim, 0, int(g.max()) + 1).index_select(dim, g)
    return (draw / total).to(like.dtype)


def _split_columns(w: Tensor, g: Tensor, first: int, gen: torch.Generator) -> Tensor:
    """Columns ``first:`` read units that grow by ``g``: copied, each sharing its old weight."""
    head, grown = w[:, :first], w[:, first:][:, g]
    return torch.cat([head, grown * _shares(grown, g, 1, gen)], 1)


def _split_rows(w: Tensor, g: Tensor, gen: torch.Generator) -> Tensor:
    grown = w[g]
    return grown * _shares(grown, g, 0, gen)
