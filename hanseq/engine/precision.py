"""The number format a model decodes in, chosen per device and per CPU.

- ``fp32``: every product in fp32 (the reference).
- ``bf16`` (CPU or CUDA): weights and products in bfloat16; search still takes the
  log-softmax, scores and beam sums in fp32. Fast where the CPU has AMX tiles (oneDNN runs a
  bf16 matmul ~3x fp32 there). With AVX512-BF16 alone oneDNN runs it on vector instructions,
  measured slower than fp32 (bench/README.md: 0.6x for the products, 0.6-0.8x decoding, on a
  Xeon whose AMX the machine does not expose); with neither PyTorch emulates it, ~2.5x slower.
  It runs correctly everywhere, but ``auto`` picks it only with AMX.
- ``int8`` (CPU): the decoder's products in int8 (engine/quantize.py), the rest fp32.
- ``fp16`` (CUDA): weights in half precision.

``auto`` on a CPU: bf16 where the CPU lists ``amx_bf16``, fp32 elsewhere
(int8 is faster there but its outputs differ from fp32's on some inputs, so it is asked for,
not assumed; bench/README.md has both). The choice comes with the CPU flags that decided it,
for logs and benchmarks. Torch-free but for ``prepare``: the server process picks a worker's
precision with ``choose``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from hanseq.engine.cpu import cpu_info

if TYPE_CHECKING:
    import torch

CHOICES = ("auto", "fp32", "bf16", "int8")
BF16_CPU_FLAGS = ("amx_bf16", "avx512_bf16")  # bf16 instructions: oneDNN's bf16 kernels run
BF16_FAST_FLAG = "amx_bf16"  # ... and beat fp32: only on the tiles (measured, see above)
SHOWN_FLAGS = ("avx2", "avx512f", "avx512_bf16", "avx512_vnni", "amx_bf16", "amx_int8", "amx_tile")


@dataclass(frozen=True)
class Choice:
    precision: str  # fp32 | bf16 | int8 | fp16
    why: str  # e.g. "auto: amx_bf16 present"


def cpu_has_bf16(cpuinfo: str = "/proc/cpuinfo") -> bool:
    """Whether this CPU lists AMX-BF16 or AVX512-BF16 among its flags (Linux): whether
    oneDNN's bf16 kernels (the LSTM's among them) exist here at all."""
    return any(flag in cpu_info(cpuinfo)[1] for flag in BF16_CPU_FLAGS)


def cpu_bf16_pays(cpuinfo: str = "/proc/cpuinfo") -> bool:
    """Whether bf16 is faster than fp32 on this CPU: where it lists AMX-BF16 (Linux)."""
    return BF16_FAST_FLAG in cpu_info(cpuinfo)[1]


def describe_cpu(cpuinfo: str = "/proc/cpuinfo") -> str:
    """One line for benchmark tables: the model and the flags that decide the fast paths."""
    model, flags = cpu_info(cpuinfo)
    shown = [f for f in SHOWN_FLAGS if f in flags]
    return f"{model} ({', '.join(shown) or 'no AVX2'})"


def choose(setting: str, device: str, cpuinfo: str = "/proc/cpuinfo") -> Choice:
    """The precision ``setting`` means on ``device`` (cpu, cuda, cuda:N); a ValueError
    names what is wrong."""
    if setting not in CHOICES:
        raise ValueError(f"precision must be one of {', '.join(CHOICES)} (got {setting!r})")
    if device.startswith("cuda"):
        if setting == "int8":
            raise ValueError("int8 decoding is for CPUs; on CUDA use fp32, bf16 or auto")
        return Choice("fp16" if setting == "auto" else setting, f"{setting} on CUDA")
    if setting != "auto":
        return Choice(setting, f"{setting}, as asked")
    flags = cpu_info(cpuinfo)[1]
    if BF16_FAST_FLAG in flags:
        return Choice("bf16", f"auto: {BF16_FAST_FLAG} present")
    if "avx512_bf16" in flags:
        return Choice("fp32", "auto: avx512_bf16 without amx_bf16 (bf16 runs slower than fp32)")
    return Choice("fp32", "auto: no amx_bf16 or avx512_bf16 (bf16 would be emulated)")


def prepare(model: torch.nn.Module, precision: str) -> torch.nn.Module:
    """Put ``model`` (loaded in fp32) into ``precision`` for decoding, in place."""
    import torch

    if precision == "bf16":
        model.to(torch.bfloat16)
    elif precision == "fp16":
        model.half()
    elif precision == "int8":
        from hanseq.engine.quantize import quantize_decoders

        quantize_decoders(model)  # type: ignore[arg-type]
    elif precision != "fp32":
        raise ValueError(f"unknown precision {precision!r}")
    return model
