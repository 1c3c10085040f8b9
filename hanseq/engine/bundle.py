"""Model bundles: a directory with ``bundle.json``, tokenizer/vocabulary files and
``weights.safetensors`` (no pickle is ever loaded).

``bundle.json`` records a SHA-256 of every other file; loading recomputes them and refuses a
bundle whose files are missing, damaged or from another bundle, naming the file.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file

from hanseq.engine.config import ModelConfig, TokenizerConfig, from_dict
from hanseq.engine.dialogue import MARK_PATTERN, MARKS, USER_MARK, split_marks
from hanseq.engine.heads import Seq2Seq, build_model
from hanseq.engine.manifest import FORMAT_VERSION, MANIFEST, WEIGHTS
from hanseq.engine.options import InvalidOptions, decoding_defaults
from hanseq.engine.pointer import copy_maps
from hanseq.engine.shortlist import LexicalTable
from hanseq.engine.tokenizers import Tokenizer, build_tokenizer
from hanseq.engine.vocabulary import Vocabulary


class BundleError(ValueError):
    """A bundle cannot be used; the message names the file and what is wrong."""


@dataclass
class Side:
    """A tokenizer and its vocabulary: the source side or one task's target side."""

    tokenizer: Tokenizer
    vocab: Vocabulary

    def tokenize(self, text: str) -> list[str]:
        """Text -> tokens; where the vocabulary has the dialogue speaker marks (a bundle
        trained with context), a mark in the text stays one token."""
        if USER_MARK not in self.vocab.stoi or not MARK_PATTERN.search(text):
            return self.tokenizer.tokenize(text)
        tokens: list[str] = []
        for part in split_marks(text):
            tokens += [part] if part in MARKS else self.tokenizer.tokenize(part)
        return tokens

    def save(self, directory: Path, stem: str) -> dict[str, Any]:
        self.vocab.save(directory / f"{stem}.vocab")
        files = [f"{stem}.vocab", *self.tokenizer.save(directory, stem)]
        return {"tokenizer": dataclasses.asdict(self.tokenizer.cfg), "files": files}

    @classmethod
    def load(cls, directory: Path, stem: str, cfg: TokenizerConfig) -> Side:
        tokenizer = build_tokenizer(cfg)
        tokenizer.load(directory, stem)
        return cls(tokenizer, Vocabulary.load(directory / f"{stem}.vocab"))


@dataclass
class Bundle:
    path: Path
    manifest: dict[str, Any]
    model: Seq2Seq
    model_cfg: ModelConfig
    source: Side
    targets: dict[str, Side]

    @property
    def id(self) -> str:
        return self.manifest["id"]

    @property
    def version(self) -> str:
        return self.manifest["version"]

    @property
    def tasks(self) -> list[str]:
        return list(self.targets)

    def decoding(self, task: str) -> dict[str, float | int]:
        """The task's default decoding options (manifest ``tasks.<task>.decoding``), checked."""
        raw = self.manifest.get("tasks", {}).get(task, {}).get("decoding")
        try:
            return decoding_defaults(raw)
        except InvalidOptions as e:
            raise BundleError(f"{self.path / MANIFEST}: tasks.{task}: {e}") from None

    def context_turns(self, task: str) -> int:
        """Turns of history the task's source was trained with (0: the message alone)."""
        return int(self.manifest.get("tasks", {}).get(task, {}).get("context_turns", 0))


def save_bundle(
    directory: Path,
    model: Seq2Seq,
    model_cfg: ModelConfig,
    source: Side,
    targets: dict[str, Side],
    info: dict[str, Any],
    dtype: torch.dtype = torch.float32,
    lexicons: dict[str, LexicalTable] | None = None,
) -> Path:
    """Write a bundle; ``info`` (id, version, data fingerprint, scores, ...) goes in the manifest.

    ``dtype=torch.float16`` halves the size on disk; loading always returns float32 weights.
    ``lexicons``: a task's vocabulary-shortlist table (engine/shortlist.py), saved with it.
    """
    directory.mkdir(parents=True, exist_ok=True)
    manifest: dict[str, Any] = {"format_version": FORMAT_VERSION, **info}
    manifest["model"] = dataclasses.asdict(model_cfg)
    manifest["source"] = source.save(directory, "source")
    manifest["tasks"] = {
        task: {**info.get("tasks", {}).get(task, {}), **side.save(directory, f"target.{task}")}
        for task, side in targets.items()
    }
    for task, lexicon in (lexicons or {}).items():
        name = f"shortlist.{task}.safetensors"
        lexicon.save(directory / name)
        manifest["tasks"][task]["shortlist"] = name
        manifest["tasks"][task]["files"].append(name)
    save_file(_unique_tensors(model, dtype), str(directory / WEIGHTS))
    names = [WEIGHTS, *manifest["source"]["files"]]
    names += [f for t in manifest["tasks"].values() for f in t["files"]]
    manifest["sha256"] = {name: _sha256(directory / name) for name in names}
    (directory / MANIFEST).write_text(json.dumps(manifest, indent=2, ensure_ascii=False) + "\n")
    return directory


def _unique_tensors(model: Seq2Seq, dtype: torch.dtype) -> dict[str, torch.Tensor]:
    """state_dict without the aliases of tied weights (safetensors refuses shared storage)."""
    seen: set[int] = set()
    out = {}
    for name, tensor in model.state_dict().items():
        if tensor.data_ptr() in seen:
            continue
        seen.add(tensor.data_ptr())
        out[name] = tensor.detach().to("cpu", dtype).contiguous()
    return out


def load_bundle(
    directory: str | Path, device: str | torch.device = "cpu", shortlist: bool = True
) -> Bundle:
    """``shortlist=False`` leaves a bundle's shortlist tables unused: greedy and beam search
    then compute every column of the target vocabulary."""
    directory = Path(directory)
    manifest = read_manifest(directory)
    verify_files(directory, manifest)
    try:
        source = Side.load(directory, "source", _tokenizer_cfg(manifest["source"], "source"))
        targets = {
            t: Side.load(directory, f"target.{t}", _tokenizer_cfg(e, t))
            for t, e in manifest["tasks"].items()
        }
        model_cfg = from_dict(ModelConfig, manifest["model"], "model")
    except (KeyError, ValueError, OSError) as e:
        raise BundleError(f"{directory / MANIFEST}: inconsistent bundle: {e}") from None
    model = model_for(model_cfg, source, targets)
    _load_weights(model, directory / WEIGHTS)
    model.to(device).eval()
    for task, entry in manifest["tasks"].items():
        if shortlist and entry.get("shortlist"):
            path = directory / entry["shortlist"]
            try:
                model.head(task).lexicon = LexicalTable.load(path).to(torch.device(device))
            except Exception as e:  # safetensors raises its own error types
                raise BundleError(f"{path}: cannot read the shortlist table: {e}") from None
    return Bundle(directory, manifest, model, model_cfg, source, targets)


def model_for(model_cfg: ModelConfig, source: Side, targets: dict[str, Side]) -> Seq2Seq:
    """A freshly initialised model for these sides: one head per target, sized to its
    vocabulary, with the copy maps between the source's vocabulary and each target's."""
    return build_model(
        model_cfg,
        len(source.vocab),
        {t: len(s.vocab) for t, s in targets.items()},
        copy_maps(source.vocab, {t: s.vocab for t, s in targets.items()}),
    )


def _tokenizer_cfg(entry: dict[str, Any], where: str) -> TokenizerConfig:
    return from_dict(TokenizerConfig, entry["tokenizer"], where)


def read_manifest(directory: Path) -> dict[str, Any]:
    path = directory / MANIFEST
    if not path.is_file():
        raise BundleError(f"{path}: not found; is {directory} a hanseq bundle?")
    try:
        manifest = json.loads(path.read_text(encoding="utf-8"))
    except (ValueError, UnicodeDecodeError) as e:
        raise BundleError(f"{path}: not valid JSON: {e}") from None
    version = manifest.get("format_version") if isinstance(manifest, dict) else None
    if version != FORMAT_VERSION:
        raise BundleError(f"{path}: format_version {version!r}; this hanseq reads {FORMAT_VERSION}")
    return manifest


def verify_files(directory: Path, manifest: dict[str, Any]) -> None:
    hashes = manifest.get("sha256")
    if not isinstance(hashes, dict) or WEIGHTS not in hashes:
        raise BundleError(f"{directory / MANIFEST}: no sha256 list of the bundle's files")
    for name, expected in hashes.items():
        path = directory / name
        if not path.is_file():
            raise BundleError(f"{path}: missing from the bundle")
        if _sha256(path) != expected:
            raise BundleError(
                f"{path}: content hash does not match {MANIFEST}; damaged or "
                "replaced, refusing to load"
            )


def _load_weights(model: Seq2Seq, path: Path) -> None:
    try:
        tensors = load_file(str(path))
    except Exception as e:  # safetensors raises its own error types
        raise BundleError(f"{path}: cannot read weights: {e}") from None
    tensors = {k: v.float() for k, v in tensors.items()}
    missing, unexpected = model.load_state_dict(tensors, strict=False)
    expected_missing = set(model.state_dict()) - set(_unique_tensors(model, torch.float32))
    if set(missing) - expected_missing or unexpected:
        raise BundleError(
            f"{path}: weights do not fit the architecture in {MANIFEST} "
            f"(missing {sorted(set(missing) - expected_missing)[:3]}, "
            f"unexpected {sorted(unexpected)[:3]})"
        )


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()
