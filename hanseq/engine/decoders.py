"""Attention decoders: a conditional language model over the target, one step at a time.

A step reads the previous target token, updates the RNN, attends over the source (a fresh
context every step) and emits a Luong "attentional vector" that the generator turns into
logits. With input feeding, that vector is also an input to the next step, so the decoder
knows what it attended to before; "peeky" also feeds the encoder's summary at every step.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from hanseq.engine.attention import build_attention
from hanseq.engine.config import ModelConfig
from hanseq.engine.encoders import EncoderOutput
from hanseq.engine.pointer import CopySources
from hanseq.engine.quantize import Int8Decoder
from hanseq.engine.shortlist import RowShortlist
from hanseq.engine.vocabulary import PAD_ID

Hidden = Tensor | tuple[Tensor, Tensor]  # layers x batch x hidden (GRU) or (h, c) (LSTM)


@dataclass
class Memory:
    """The encoder's output as one decoder reads it; fixed for the whole search. Decoder rows
    may be r times its rows: r consecutive rows then read one source (beam search)."""

    values: Tensor  # batch x src_len x enc_size
    keys: Tensor  # batch x src_len x (attention's key size)
    mask: Tensor  # batch x src_len
    summary: Tensor  # batch x enc_size: mean of the source states
    copy: CopySources | None = None  # what the sources can copy (copy heads only)
    shortlist: RowShortlist | None = None  # the columns decoding computes (engine/shortlist.py)

    def index_select(self, index: Tensor) -> Memory:
        def rows(t: Tensor) -> Tensor:
            return t.index_select(0, index)

        copy = None if self.copy is None else self.copy.index_select(index)
        short = None if self.shortlist is None else self.shortlist.index_select(index)
        return Memory(
            rows(self.values), rows(self.keys), rows(self.mask), rows(self.summary), copy, short
        )

    def token_ids(self, columns: Tensor) -> Tensor:
        """Columns of a step's output -> target ids (the same unless a shortlist is on)."""
        return columns if self.shortlist is None else self.shortlist.columns[columns]

    def width(self, width: int) -> Memory:
        """Padded (or cut) to ``width`` source positions; cut only past every row's end."""
        extra = width - self.values.size(1)
        if extra == 0:
            return self
        if extra < 0:
            return Memory(
                self.values[:, :width],
                self.keys[:, :width],
                self.mask[:, :width],
                self.summary,
                None if self.copy is None else self.copy.width(width),
                self.shortlist,
            )
        return Memory(
            F.pad(self.values, (0, 0, 0, extra)),
            F.pad(self.keys, (0, 0, 0, extra)),
            F.pad(self.mask, (0, extra)),
            self.summary,
            None if self.copy is None else self.copy.width(width),
            self.shortlist,
        )

    @staticmethod
    def cat(a: Memory, b: Memory) -> Memory:
        """Rows of ``a`` then rows of ``b``, padded to the wider of the two."""
        width = max(a.values.size(1), b.values.size(1))
        a, b = a.width(width), b.width(width)
        copy = None if a.copy is None or b.copy is None else CopySources.cat(a.copy, b.copy)
        short = None
        if a.shortlist is not None and b.shortlist is not None:
            short = RowShortlist.cat(a.shortlist, b.shortlist)
        return Memory(
            torch.cat([a.values, b.values]),
            torch.cat([a.keys, b.keys]),
            torch.cat([a.mask, b.mask]),
            torch.cat([a.summary, b.summary]),
            copy,
            short,
        )


@dataclass
class DecoderState:
    hidden: Hidden
    feed: Tensor  # batch x output_size: the last attentional vector (input feeding)

    def index_select(self, index: Tensor) -> DecoderState:
        hidden: Hidden
        if isinstance(self.hidden, tuple):
            h, c = self.hidden
            hidden = (h.index_select(1, index), c.index_select(1, index))
        else:
            hidden = self.hidden.index_select(1, index)
        return DecoderState(hidden, self.feed.index_select(0, index))

    @staticmethod
    def cat(a: DecoderState, b: DecoderState) -> DecoderState:
        hidden: Hidden
        if isinstance(a.hidden, tuple) and isinstance(b.hidden, tuple):
            hidden = (
                torch.cat([a.hidden[0], b.hidden[0]], 1),
                torch.cat([a.hidden[1], b.hidden[1]], 1),
            )
        else:
            hidden = torch.cat([a.hidden, b.hidden], 1)  # type: ignore[list-item]
        return DecoderState(hidden, torch.cat([a.feed, b.feed]))


class RecurrentDecoder(nn.Module):
    def __init__(self, cfg: ModelConfig, vocab_size: int, enc_size: int):
        super().__init__()
        self.cfg = cfg
        self.output_size = cfg.embedding_dim  # attentional vector; equals embeddings for tying
        self.embed = nn.Embedding(vocab_size, cfg.embedding_dim, padding_idx=PAD_ID)
        peek = enc_size if cfg.peeky else 0
        feed = self.output_size if cfg.input_feeding else 0
        rnn = nn.LSTM if cfg.rnn == "lstm" else nn.GRU
        self.rnn = rnn(
            cfg.embedding_dim + feed + peek,
            cfg.hidden_size,
            num_layers=cfg.decoder_layers,
            batch_first=True,
            dropout=cfg.dropout if cfg.decoder_layers > 1 else 0.0,
        )
        self.attention = build_attention(cfg.attention, cfg.hidden_size, enc_size)
        self.bridge = nn.Linear(enc_size, cfg.hidden_size)
        self.bridge_cell = nn.Linear(enc_size, cfg.hidden_size) if cfg.rnn == "lstm" else None
        self.combine = nn.Linear(cfg.hidden_size + enc_size + peek, self.output_size)
        self.dropout = nn.Dropout(cfg.dropout)
        self.int8: Int8Decoder | None = None  # engine.quantize: frozen int8 copies, if asked

    def prepare(self, enc: EncoderOutput) -> tuple[Memory, DecoderState]:
        """Keys projected once; initial state from the encoder's final state (the bridge)."""
        mask = enc.mask.unsqueeze(-1).to(enc.states.dtype)
        summary = (enc.states * mask).sum(1) / mask.sum(1).clamp(min=1)
        memory = Memory(enc.states, self.attention.project_keys(enc.states), enc.mask, summary)
        h0 = self._layers(torch.tanh(self.bridge(enc.final)))
        hidden: Hidden = h0
        if self.bridge_cell is not None and enc.final_cell is not None:
            hidden = (h0, self._layers(torch.tanh(self.bridge_cell(enc.final_cell))))
        feed = enc.states.new_zeros(enc.states.size(0), self.output_size)
        return memory, DecoderState(hidden, feed)

    def _layers(self, h: Tensor) -> Tensor:
        """batch x hidden -> layers x batch x hidden (every layer starts from the bridge)."""
        return h.unsqueeze(0).repeat(self.cfg.decoder_layers, 1, 1).contiguous()

    def step(
        self, prev: Tensor, state: DecoderState, memory: Memory
    ) -> tuple[Tensor, DecoderState, Tensor]:
        """prev: batch ids -> attentional vector (batch x output_size), new state,
        attention weights (batch x src_len)."""
        return self._advance(self.dropout(self.embed(prev)), state, memory)

    def unroll(self, inputs: Tensor, state: DecoderState, memory: Memory) -> tuple[Tensor, Tensor]:
        """Every step of a known input sequence (training): batch x tgt_len ids ->
        attentional vectors (batch x tgt_len x output_size), weights (batch x tgt_len x src_len).

        The inputs are embedded in one lookup: on the CPU, the backward of each per-step
        lookup zero-fills a vocabulary-sized gradient, and those fills were a third of a
        training step. An LSTM's gates from the embeddings are one product over all steps
        too (``_embedded_gates``): only the input feed and the recurrent state are per step."""
        embedded = self.dropout(self.embed(inputs))
        split = self._embedded_gates(embedded)
        vectors, weights = [], []
        # unbind, not [:, t]: the backward of each slice would zero-fill the whole sequence
        for t, step_input in enumerate(embedded.unbind(1)):
            pre = None if split is None else (split[0][t], split[1])
            vector, state, w = self._advance(step_input, state, memory, pre)
            vectors.append(vector)
            weights.append(w)
        return torch.stack(vectors, 1), torch.stack(weights, 1)

    def _embedded_gates(self, embedded: Tensor) -> tuple[tuple[Tensor, ...], Tensor] | None:
        """The first LSTM layer's gates from the embedded inputs, both biases in, per step:
        one batch*steps-row product instead of a 64-row one each step (bench/README.md, "The
        peer", v2: training throughput); and the weights of the rest of its input and of its
        state, side by side, for one product a step. None for a GRU, whose cell takes its
        input whole."""
        if self.cfg.rnn != "lstm":
            return None
        w_ih, w_hh, b_ih, b_hh = [getattr(self.rnn, f"{name}_l0") for name in _RNN_WEIGHTS]
        size = self.cfg.embedding_dim
        gates = F.linear(embedded, w_ih[:, :size], b_ih + b_hh).unbind(1)
        return gates, torch.cat([w_ih[:, size:], w_hh], 1).t()

    def _advance(
        self, embedded: Tensor, state: DecoderState, memory: Memory, pre: Pre | None = None
    ) -> tuple[Tensor, DecoderState, Tensor]:
        """``pre``: the first layer's gates from ``embedded`` and the weights for the rest
        (unroll); ``embedded`` is then not an input of the cell again."""
        inputs = [] if pre is not None else [embedded]
        if self.cfg.input_feeding:
            inputs.append(state.feed)
        summary = []
        if self.cfg.peeky:  # one per row (a beam's rows share their source's memory)
            share = embedded.size(0) // memory.summary.size(0)
            summary = [memory.summary.repeat_interleave(share, 0)]
        out, hidden = self._rnn_step(_cat(inputs + summary, embedded), state.hidden, pre)
        context, weights = self.attention(out, memory.keys, memory.values, memory.mask)
        parts = [out, context, *summary]
        int8 = self.int8 is not None and not torch.is_grad_enabled()
        combine = self.int8.combine if int8 else self.combine  # type: ignore[union-attr]
        vector = self.dropout(torch.tanh(combine(torch.cat(parts, -1))))
        return vector, DecoderState(hidden, vector), weights

    def _rnn_step(self, x: Tensor, hidden: Hidden, pre: Pre | None = None) -> tuple[Tensor, Hidden]:
        """One time step through every layer with the fused cell kernels and the weights of
        ``self.rnn``: nn.LSTM on a length-1 sequence costs ~4x more per step at batch 1.
        With ``pre`` (the first layer's gates from the embedding) ``x`` is the rest of that
        layer's input."""
        lstm = isinstance(hidden, tuple)
        int8 = self.int8 is not None and self.int8.cells and not torch.is_grad_enabled()
        hs, cs = [], []
        for layer in range(self.cfg.decoder_layers):
            weights = [getattr(self.rnn, f"{name}_l{layer}") for name in _RNN_WEIGHTS]
            if lstm and layer == 0 and pre is not None:  # unroll's, whatever int8 holds
                h, c = _lstm_rest(*pre, x, hidden[0][0], hidden[1][0])
                cs.append(c)
            elif lstm and int8:
                cell = self.int8.cells[layer]  # type: ignore[union-attr]
                h, c = cell(x, hidden[0][layer], hidden[1][layer])
                cs.append(c)
            elif lstm:
                h, c = torch.lstm_cell(x, (hidden[0][layer], hidden[1][layer]), *weights)
                cs.append(c)
            else:
                h = torch.gru_cell(x, hidden[layer], *weights)  # type: ignore[index]
            hs.append(h)
            x = h
            if layer < self.cfg.decoder_layers - 1:  # as nn.LSTM/GRU: dropout between layers
                x = F.dropout(x, self.cfg.dropout, self.training)
        new: Hidden = (torch.stack(hs), torch.stack(cs)) if lstm else torch.stack(hs)
        return x, new


_RNN_WEIGHTS = ("weight_ih", "weight_hh", "bias_ih", "bias_hh")
Pre = tuple[Tensor, Tensor]  # an LSTM step's gates from its embedding, the rest's weights


def _cat(parts: list[Tensor], like: Tensor) -> Tensor:
    """The parts side by side; no parts (an LSTM's embedding gates precomputed, no input feed
    or summary): a batch x 0 input."""
    return torch.cat(parts, -1) if parts else like.new_zeros(like.size(0), 0)


def _lstm_rest(
    gates: Tensor, weight: Tensor, x: Tensor, h: Tensor, c: Tensor
) -> tuple[Tensor, Tensor]:
    """An LSTM cell given its gates from the embedding (both biases in): the rest of its input
    ``x`` and the state ``h`` add theirs in one product with ``weight`` ([x, h] x gates)."""
    gates = torch.addmm(gates, torch.cat([x, h], -1), weight)
    i, f, g, o = gates.chunk(4, 1)
    c = torch.sigmoid(f) * c + torch.sigmoid(i) * torch.tanh(g)
    return torch.sigmoid(o) * torch.tanh(c), c


def build_decoder(cfg: ModelConfig, vocab_size: int, enc_size: int) -> RecurrentDecoder:
    return RecurrentDecoder(cfg, vocab_size, enc_size)
