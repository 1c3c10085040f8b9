"""What OpenNMT-py's training batches hold, against what its corpora mixer drew (peer venv).

    bench/peer/.venv/bin/python bench/peer/onmt_batches.py ONMT_YAML BUCKETS BUCKET WORKERS

Builds onmt_train's own training iterator from the config (as ``onmt_train -config`` does,
with ``bucket_size`` BUCKET) and reads every batch of its first BUCKETS buckets, as one of
WORKERS DataLoader workers reads them (each worker mixes its own 1/WORKERS of every corpus).
Counts the examples the weighted mixer drew for those buckets and the pieces of those and of
the batched ones; prints one JSON line.
bench/peer.py batches runs it and prints the table.
"""

from __future__ import annotations

import json
import sys
import warnings

from onmt.constants import CorpusTask, DefaultTokens
from onmt.inputters import dynamic_iterator
from onmt.inputters.dynamic_iterator import build_dynamic_dataset_iter
from onmt.opts import train_opts
from onmt.train_single import _init_train
from onmt.utils.parse import ArgumentParser

drawn = {"examples": 0, "src": 0, "tgt": 0}
_mixed = dynamic_iterator.WeightedMixer.__iter__


def _counted(self):
    """The mixer's examples as they leave it, before the batcher sees them."""
    for item in _mixed(self):  # (example, its transform, its corpus)
        ex = item[0]
        drawn["examples"] += 1
        drawn["src"] += _pieces(ex["src"])
        drawn["tgt"] += _pieces(ex["tgt"]) + 1  # + EOS, as the batches count it
        yield item


def _pieces(side) -> int:
    """A side as read (a line) or already split by its corpus reader (a list)."""
    return len(side.split() if isinstance(side, str) else side)


def main() -> None:
    config, buckets, bucket, workers = sys.argv[1], *map(int, sys.argv[2:5])
    warnings.simplefilter("ignore")
    dynamic_iterator.WeightedMixer.__iter__ = _counted
    parser = ArgumentParser(description="onmt_batches")
    train_opts(parser)
    opt, _ = parser.parse_known_args(
        ["-config", config, "-bucket_size", str(bucket), "-num_workers", "0"]
    )
    ArgumentParser.validate_train_opts(opt)
    ArgumentParser.update_model_opts(opt)
    ArgumentParser.validate_model_opts(opt)
    _, vocabs, transforms_cls = _init_train(opt)
    data = build_dynamic_dataset_iter(
        opt, transforms_cls, vocabs, task=CorpusTask.TRAIN, stride=workers, offset=0
    )
    pad = vocabs["tgt"][DefaultTokens.PAD]
    got = {"batches": 0, "examples": 0, "src": 0, "tgt": 0}
    counted, last = dict(drawn), -1  # the draws of the buckets read so far
    for batch, index in data:
        if index == buckets:  # the next bucket is drawn before its first batch
            break
        if index != last:
            counted, last = dict(drawn), index
        got["batches"] += 1
        got["examples"] += batch["srclen"].numel()
        got["src"] += int(batch["srclen"].sum())
        got["tgt"] += int((batch["tgt"][:, 1:, 0] != pad).sum())  # after BOS, EOS included
    json.dump({"drawn": counted, "batched": got}, sys.stdout)
    print()


if __name__ == "__main__":
    main()
