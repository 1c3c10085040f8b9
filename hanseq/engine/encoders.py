"""Encoders: source ids -> one state per source position plus a final summary state."""

from __future__ import annotations

import functools
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass

import torch
from torch import Tensor, nn
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence

from hanseq.engine.config import ModelConfig
from hanseq.engine.precision import cpu_has_bf16
from hanseq.engine.vocabulary import PAD_ID


@dataclass
class EncoderOutput:
    states: Tensor  # batch x src_len x output_size
    final: Tensor  # batch x output_size: the last layer's final state, both directions
    final_cell: Tensor | None  # batch x output_size (LSTM only)
    mask: Tensor  # batch x src_len, True on real tokens
    ids: Tensor  # batch x src_len: the source ids (a copy head looks up their target twins)


class Encoder(nn.Module):
    output_size: int


class RecurrentEncoder(Encoder):
    """Embeddings -> (bi)LSTM/GRU over packed sequences, so padding never enters the RNN."""

    def __init__(self, cfg: ModelConfig, vocab_size: int):
        super().__init__()
        directions = 2 if cfg.bidirectional else 1
        self.output_size = cfg.hidden_size
        self.directions = directions
        self.embed = nn.Embedding(vocab_size, cfg.embedding_dim, padding_idx=PAD_ID)
        rnn = nn.LSTM if cfg.rnn == "lstm" else nn.GRU
        self.rnn = rnn(
            cfg.embedding_dim,
            cfg.hidden_size // directions,
            num_layers=cfg.encoder_layers,
            batch_first=True,
            bidirectional=cfg.bidirectional,
            dropout=cfg.dropout if cfg.encoder_layers > 1 else 0.0,
        )
        self.dropout = nn.Dropout(cfg.dropout)

    def forward(self, src: Tensor, src_len: Tensor) -> EncoderOutput:
        """src: batch x src_len ids; src_len: batch (every length >= 1)."""
        x = self.dropout(self.embed(src))
        packed = pack_padded_sequence(x, src_len.cpu(), batch_first=True, enforce_sorted=False)
        with _fp32_rnn() if torch.is_autocast_enabled("cpu") else nullcontext():
            out, hidden = self.rnn(packed)
        states, _ = pad_packed_sequence(out, batch_first=True, total_length=src.size(1))
        h, c = hidden if isinstance(hidden, tuple) else (hidden, None)
        return EncoderOutput(
            states=self.dropout(states),
            final=self._last_layer(h),
            final_cell=None if c is None else self._last_layer(c),
            mask=src != PAD_ID,
            ids=src,
        )

    def _last_layer(self, h: Tensor) -> Tensor:
        """(layers*directions) x batch x hidden -> batch x (directions*hidden), last layer."""
        last = h[-self.directions :]  # directions x batch x hidden
        return torch.cat(list(last), dim=-1)


def build_encoder(cfg: ModelConfig, vocab_size: int) -> Encoder:
    return RecurrentEncoder(cfg, vocab_size)


def _fp32_rnn() -> AbstractContextManager:
    """Under CPU autocast: the RNN in fp32 where the CPU lacks bf16 units. oneDNN's bf16 LSTM
    needs them (on an AVX2-only CPU ``mixed_precision: bf16`` failed to create its primitive);
    the rest of the step stays in bf16."""
    return nullcontext() if _has_bf16() else torch.autocast("cpu", enabled=False)


@functools.cache
def _has_bf16() -> bool:
    return cpu_has_bf16()
