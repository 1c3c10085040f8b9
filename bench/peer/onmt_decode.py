"""Decode a file with an OpenNMT-py model and time only the decoding (runs in the peer venv).

    bench/peer/.venv/bin/python bench/peer/onmt_decode.py -model M.pt -src in.txt \
        -output out.txt -beam_size 5 -batch_size 64 -threads 1

Takes onmt_translate's options plus -threads; prints one JSON line {"seconds": ...}: the
time of infer_file() alone, model loading excluded, as bench/peer.py times hanseq.
"""

from __future__ import annotations

import json
import sys
import time

import torch
from onmt.inference_engine import InferenceEnginePY
from onmt.opts import translate_opts
from onmt.utils.misc import set_random_seed
from onmt.utils.parse import ArgumentParser


def main() -> None:
    parser = ArgumentParser(description="onmt_decode.py")
    translate_opts(parser)
    parser.add_argument("-threads", type=int, default=1)
    opt = parser.parse_args()
    torch.set_num_threads(opt.threads)
    ArgumentParser.validate_translate_opts(opt)
    ArgumentParser._get_all_transform_translate(opt)
    ArgumentParser._validate_transforms_opts(opt)
    ArgumentParser.validate_translate_opts_dynamic(opt)
    set_random_seed(opt.seed, False)
    engine = InferenceEnginePY(opt)
    start = time.perf_counter()
    engine.infer_file()
    seconds = time.perf_counter() - start
    engine.terminate()
    json.dump({"seconds": seconds}, sys.stdout)
    print()


if __name__ == "__main__":
    main()
