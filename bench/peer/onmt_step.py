"""Time OpenNMT-py training steps on random batches of a fixed shape (runs in the peer venv).

    bench/peer/.venv/bin/python bench/peer/onmt_step.py CHECKPOINT SRC_LEN TGT_LEN [STEPS]

Forward, generator, label-smoothed loss, backward and an Adam step, as onmt_train does them;
prints one JSON line {"ms_per_step": ...}. bench/peer.py step-cost runs hanseq's side.
"""

from __future__ import annotations

import json
import sys
import time
import warnings

import torch
from onmt.inputters.inputter import dict_to_vocabs
from onmt.model_builder import build_base_model


def main() -> None:
    checkpoint, src_len, tgt_len = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
    steps = int(sys.argv[4]) if len(sys.argv) > 4 else 20
    torch.set_num_threads(1)
    warnings.simplefilter("ignore")
    ck = torch.load(checkpoint, map_location="cpu")
    model = build_base_model(ck["opt"], dict_to_vocabs(ck["vocab"]))
    model.train()
    torch.manual_seed(0)
    batch = 64
    src = torch.randint(10, 8000, (batch, src_len, 1))
    tgt = torch.randint(10, 8000, (batch, tgt_len + 1, 1))  # BOS + target: tgt_len steps
    lengths = torch.full((batch,), src_len)
    gold = torch.randint(10, 8000, (batch * tgt_len,))
    optim = torch.optim.Adam(model.parameters(), lr=1e-3)
    loss_fn = torch.nn.CrossEntropyLoss(label_smoothing=0.1)

    def step() -> None:
        out, _ = model(src, tgt, lengths, with_align=False)
        loss = loss_fn(model.generator(out.reshape(-1, out.size(-1))), gold)
        optim.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optim.step()

    for _ in range(3):
        step()
    start = time.perf_counter()
    for _ in range(steps):
        step()
    json.dump({"ms_per_step": (time.perf_counter() - start) / steps * 1000}, sys.stdout)
    print()


if __name__ == "__main__":
    main()
