"""int8 decoder products for CPU decoding (an option: ``quantize_decoders(model)``).

fbgemm's int8-weight, fp32-activation matrix product runs about twice as fast as fp32 on an
AVX2 CPU (64 rows x 512 x 1024: 0.52 against 1.01 ms). On a CPU with AMX int8 tiles oneDNN's
runs on them and fbgemm's does not: a bare 64 x 512 x 1024 product took 0.10 ms there against
fbgemm's 0.18 (0.30 against 0.41 with the per-row scaling below; bench/products.py), so
``backend()`` packs for oneDNN where the CPU lists ``amx_int8``.
Every matrix product of a decoder step gets an int8 copy: the output layer (the whole
vocabulary, or a shortlist's columns, quantized as columns first appear: engine/columns.py),
the LSTM cell (input and recurrent weights as one product over [input, hidden]) and the
attentional layer. The weights for training and gradients stay fp32. Scores stay within
noise (bench/README.md, "The peer", which reports both paths; `bench/engine.py --int8` the
speed at each batch size).
"""

from __future__ import annotations

import functools
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from hanseq.engine.cpu import cpu_info

BACKENDS = ("fbgemm", "onednn")
# CPU flags of a u8 x s8 dot product accumulated in 32 bits (VNNI, AMX): only there are full
# 8-bit activations safe on oneDNN. Without them oneDNN, like fbgemm, adds pairs of products in
# saturating 16-bit registers: on an AVX2-only AMD EPYC its 8-bit outputs were off by 28% of
# their range (64 x 80 x 128), 1.3% with the range reduced.
WIDE_INT8_FLAGS = ("avx512_vnni", "avx_vnni", "amx_int8")


@functools.cache
def backend() -> str:
    """The quantized engine for this CPU: oneDNN where it has AMX int8 tiles, else fbgemm."""
    amx = "amx_int8" in cpu_info()[1]
    return "onednn" if amx and "onednn" in torch.backends.quantized.supported_engines else "fbgemm"


@functools.cache
def _wide_int8() -> bool:
    return any(flag in cpu_info()[1] for flag in WIDE_INT8_FLAGS)


@contextmanager
def _packing_for(name: str) -> Iterator[None]:
    """Prepacking follows torch's global engine; the packed weight then carries its kernel."""
    before = torch.backends.quantized.engine
    torch.backends.quantized.engine = name
    try:
        yield
    finally:
        torch.backends.quantized.engine = before


class Int8Linear:
    """A frozen copy of an nn.Linear (or of a tied embedding's weight) with int8 weights.

    Weights are quantized per output row (symmetric: each row's largest magnitude is 127),
    or with one scale (``per_row=False``: packing 2,290 rows then took 1.7 ms against 8.3,
    for copies made while decoding; ``scale`` shares one across copies); activations per
    call, in 7 bits for fbgemm (``reduce_range``): on AVX2 without VNNI, fbgemm adds pairs of
    u8 x s8 products in saturating 16-bit registers, and full 8-bit activations overflow them
    (oneDNN accumulates in 32 bits where the CPU has VNNI or AMX: full 8 bits there, half the
    error; elsewhere it saturates as fbgemm does and reduces the range too). The
    older ``torch.fbgemm_linear_*`` functions did not reduce the range: on this project's CPU
    their outputs were off by up to 30% of the output's scale (64 x 80 x 128, weights from
    U(-0.1, 0.1)); these by under 1%, at the same speed."""

    def __init__(
        self,
        weight: Tensor,
        bias: Tensor | None,
        per_row: bool = True,
        scale: float | None = None,
        engine: str | None = None,
    ):
        """``scale``: with ``per_row=False``, the one scale to use (else this weight's own):
        several copies of parts of one weight then share one grid (engine/columns.py).
        ``engine``: fbgemm or onednn (default: ``backend()``, this CPU's faster one)."""
        weight = weight.detach().float().cpu().contiguous()
        self.out_features = weight.size(0)
        with warnings.catch_warnings():  # torch 2.13 marks qint8 tensors deprecated (once
            warnings.simplefilter("ignore", UserWarning)  # per process; torch is pinned)
            quantized = _quantize(weight, per_row, scale)
        self.bias = None if bias is None else bias.detach().float().cpu().contiguous()
        self.engine = engine or backend()
        if self.engine not in BACKENDS:
            raise ValueError(f"int8 engine must be one of {', '.join(BACKENDS)}")
        self.reduce_range = self.engine == "fbgemm" or not _wide_int8()
        with _packing_for(self.engine):
            self.packed = torch.ops.quantized.linear_prepack(quantized, None)
        self._anchor = torch.zeros(1, weight.size(1))
        self._anchor[0, 0], self._anchor[0, -1] = 1.0, -1.0

    def __call__(self, x: Tensor) -> Tensor:
        """x @ W.T + b, each row's activations quantized on a grid of its own.

        fbgemm quantizes a call's activations with one scale and zero point, from the whole
        batch's range, so a row's output would depend on the rows beside it (32 of 512
        greedy outputs changed with the batch's make-up). Each row is divided by its largest
        magnitude first, and an anchor row holding +1 and -1 fixes the range at [-1, 1], so
        every row gets the same grid whatever its neighbours; the products are linear, so
        multiplying back gives each row's result."""
        x = x.float()
        scale = x.abs().amax(1, keepdim=True).clamp(min=1e-12)
        rows = torch.cat([x / scale, self._anchor])
        out = torch.ops.quantized.linear_dynamic(rows, self.packed, self.reduce_range)[:-1] * scale
        return out if self.bias is None else out + self.bias


def _quantize(weight: Tensor, per_row: bool, scale: float | None = None) -> Tensor:
    if not per_row:
        scale = scale or max(float(weight.abs().max()) / 127, 1e-12)
        return torch.quantize_per_tensor(weight, scale, 0, torch.qint8)
    scales = (weight.abs().amax(1) / 127).clamp(min=1e-12).double()
    zeros = torch.zeros(weight.size(0), dtype=torch.long)
    return torch.quantize_per_channel(weight, scales, zeros, 0, torch.qint8)


class Int8LSTMCell:
    """One LSTM layer's step with its two products as one int8 product over [x, h]."""

    def __init__(self, w_ih: Tensor, w_hh: Tensor, b_ih: Tensor, b_hh: Tensor):
        self.gates = Int8Linear(torch.cat([w_ih, w_hh], 1), b_ih + b_hh)

    def __call__(self, x: Tensor, h: Tensor, c: Tensor) -> tuple[Tensor, Tensor]:
        i, f, g, o = self.gates(torch.cat([x, h], 1)).chunk(4, 1)  # PyTorch's gate order
        c = torch.sigmoid(f) * c + torch.sigmoid(i) * torch.tanh(g)
        return torch.sigmoid(o) * torch.tanh(c), c


@dataclass
class Int8Decoder:
    cells: list[Int8LSTMCell]  # one per layer; empty for GRU decoders (they stay fp32)
    combine: Int8Linear  # the attentional layer


def available() -> bool:
    return "fbgemm" in torch.backends.quantized.supported_engines


def quantize_decoders(model: nn.Module) -> int:
    """Give every task head of ``model`` (on the CPU) int8 copies of its decoder's products
    for inference; training and gradients keep the fp32 weights. -> the heads quantized."""
    if not available():
        raise RuntimeError("int8 decoding needs PyTorch's fbgemm backend (x86 CPUs)")
    heads = getattr(model, "heads", {})
    for head in heads.values():
        if next(head.parameters()).device.type != "cpu":
            raise RuntimeError("int8 decoding runs on the CPU; this model is on a GPU")
        head.int8 = Int8Linear(head.generator.weight, head.generator.bias)
        decoder = head.decoder
        cells = []
        if isinstance(decoder.rnn, nn.LSTM):
            cells = [
                Int8LSTMCell(*(getattr(decoder.rnn, f"{n}_l{layer}") for n in _LSTM_WEIGHTS))
                for layer in range(decoder.rnn.num_layers)
            ]
        combine = Int8Linear(decoder.combine.weight, decoder.combine.bias)
        decoder.int8 = Int8Decoder(cells, combine)
    return len(heads)


_LSTM_WEIGHTS = ("weight_ih", "weight_hh", "bias_ih", "bias_hh")
