"""One bundle from heads trained apart on one frozen encoder.

Runs that start from the same bundle with ``freeze_encoder: true`` keep its encoder bit for
bit, so a head trained in one of them reads exactly the encoder of the others: two runs can
train different heads side by side (one CPU core each) and their heads be put back together.
``hanseq export --head TASK=BUNDLE`` does that; here it is checked that the encoders really are
one (the source side and every non-head tensor equal), so no head is ever served on an encoder
it was not trained on.
"""

from __future__ import annotations

from typing import Any

import torch

from hanseq.engine.bundle import Bundle, BundleError, model_for


def take_heads(bundle: Bundle, donors: dict[str, Bundle]) -> None:
    """Replace ``bundle``'s head of each task with the donor's (its weights, target side,
    shortlist and manifest entry); a donor whose encoder is not ``bundle``'s is refused."""
    for task, donor in donors.items():
        _check_same_encoder(bundle, donor, task)
    targets = {**bundle.targets, **{t: d.targets[t] for t, d in donors.items()}}
    model = model_for(bundle.model_cfg, bundle.source, targets)
    state = {n: v for n, v in bundle.model.state_dict().items() if not _in_heads(n, donors)}
    for task, donor in donors.items():
        prefix = f"heads.{task}."
        state.update({n: v for n, v in donor.model.state_dict().items() if n.startswith(prefix)})
    model.load_state_dict(state)
    for task in targets:
        owner = donors.get(task, bundle)
        model.head(task).lexicon = owner.model.head(task).lexicon
    model.eval()
    bundle.model, bundle.targets = model, targets
    bundle.manifest = _manifest(bundle.manifest, donors)


def _check_same_encoder(bundle: Bundle, donor: Bundle, task: str) -> None:
    where = f"--head {task}={donor.path}"
    if task not in donor.targets:
        raise BundleError(f"{where}: that bundle has no task {task!r} ({', '.join(donor.tasks)})")
    if donor.model_cfg != bundle.model_cfg:
        raise BundleError(f"{where}: its model section is not {bundle.path}'s")
    if donor.source.vocab.itos != bundle.source.vocab.itos:
        raise BundleError(f"{where}: its source vocabulary is not {bundle.path}'s")
    mine, theirs = bundle.model.state_dict(), donor.model.state_dict()
    for name, tensor in mine.items():
        if name.startswith("heads."):
            continue
        if name not in theirs or not torch.equal(tensor, theirs[name]):
            raise BundleError(
                f"{where}: its encoder differs from {bundle.path}'s (first at {name}); "
                "heads can only be combined from runs on one frozen encoder (freeze_encoder)"
            )


def _in_heads(name: str, donors: dict[str, Bundle]) -> bool:
    return any(name.startswith(f"heads.{task}.") for task in donors)


def _manifest(manifest: dict[str, Any], donors: dict[str, Bundle]) -> dict[str, Any]:
    """The task entries of the donated heads are the donors' (their scores, decoding
    defaults, context turns); ``training.heads_from`` says which bundle each came from."""
    out = {**manifest, "tasks": dict(manifest["tasks"])}
    for task, donor in donors.items():
        out["tasks"][task] = donor.manifest["tasks"][task]
    training = dict(out.get("training", {}))
    training["heads_from"] = {
        task: {
            "id": d.id,
            "version": d.version,
            "steps": d.manifest.get("training", {}).get("steps"),
            "data_fingerprint": d.manifest.get("training", {}).get("data_fingerprint"),
        }
        for task, d in donors.items()
    }
    out["training"] = training
    return out
