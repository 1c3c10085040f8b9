"""int8 output layers for CPU decoding (an option: ``quantize_generators(model)``).

The projection onto the target vocabulary is most of a decoder step's arithmetic (8,000
outputs against a few hundred for the recurrent cell). fbgemm's int8-weight, fp32-activation
matrix product makes whole decoding 1.19x (greedy) and 1.27x (beam 5) faster at batch 64 on
this project's CPU, for the same BLEU within 0.05 (bench/README.md, "The peer", second run;
bench/peer.py reports the scores of both paths, `bench/engine.py --int8` the speed at each
batch size).

torch 2.13 marks these fbgemm functions deprecated, with a one-time warning per process: it
is taken once here, silenced, so that it never lands in a caller's log (torch is pinned).
"""

from __future__ import annotations

import warnings

import torch
from torch import Tensor, nn


class Int8Linear:
    """A frozen copy of an nn.Linear (or of a tied embedding's weight) with int8 weights."""

    def __init__(self, weight: Tensor, bias: Tensor | None):
        weight = weight.detach().float().cpu().contiguous()
        self.out_features = weight.size(0)
        self.bias = (
            bias.detach().float().cpu().contiguous()
            if bias is not None
            else torch.zeros(self.out_features)
        )
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)
            self.weight, self.col_offsets, self.scale, self.zero_point = (
                torch.fbgemm_linear_quantize_weight(weight)
            )
            self.packed = torch.fbgemm_pack_quantized_matrix(self.weight)
            self(torch.zeros(1, weight.size(1)))  # takes the one-time deprecation warning

    def __call__(self, x: Tensor) -> Tensor:
        return torch.fbgemm_linear_int8_weight_fp32_activation(
            x.float(),
            self.weight,
            self.packed,
            self.col_offsets,
            self.scale,
            self.zero_point,
            self.bias,
        )


def available() -> bool:
    return "fbgemm" in torch.backends.quantized.supported_engines


def quantize_generators(model: nn.Module) -> int:
    """Give every task head of ``model`` (on the CPU) an int8 generator for inference;
    training and gradients keep the fp32 weights. -> the number of heads quantized."""
    if not available():
        raise RuntimeError("int8 decoding needs PyTorch's fbgemm backend (x86 CPUs)")
    heads = getattr(model, "heads", {})
    for head in heads.values():
        if next(head.parameters()).device.type != "cpu":
            raise RuntimeError("int8 decoding runs on the CPU; this model is on a GPU")
        head.int8 = Int8Linear(head.generator.weight, head.generator.bias)
    return len(heads)
