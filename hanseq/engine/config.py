"""YAML -> validated, typed config. Every mistake is one ``ConfigurationError`` naming the key.

The structure mirrors ``configs/*.yaml``; each field's comment there says what it does.
"""

from __future__ import annotations

import dataclasses
import json
import os
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import yaml

from hanseq.engine.manifest import MANIFEST


class ConfigurationError(ValueError):
    """A config key is unknown, missing, of the wrong type or out of range."""


@dataclass
class TokenizerConfig:
    kind: Literal["mecab", "sentencepiece"] = "mecab"
    subword: Literal["none", "bpe"] = "none"  # mecab only: BPE pieces inside morphemes
    vocab_size: int = 8000  # BPE / SentencePiece pieces
    min_freq: int = 1  # mecab without subwords: rarer morphemes become <unk>
    max_size: int = 30000  # mecab without subwords: cap on the vocabulary


@dataclass
class TaskConfig:
    train: str = ""
    valid: str = ""
    target: TokenizerConfig = field(default_factory=TokenizerConfig)
    weight: float = 1.0  # how often this task's batches are drawn in multi-task training
    origin_weights: dict[str, float] = field(default_factory=dict)  # per-origin sampling weight
    metric: Literal["bleu", "chrf", "rouge_l"] | None = None  # None: bleu for translate
    context_turns: int = 0  # > 0: the source holds the last N turns before it (engine/dialogue)
    train_context: str = ""  # *.context.jsonl: the history of each multi-turn train pair
    valid_context: str = ""  # the same for the valid split


@dataclass
class DataConfig:
    root: str = "../shared/corpora"  # env HANSEQ_CORPORA wins; relative to the config file
    max_source_length: int = 200  # tokens; longer inputs are truncated with a counted warning
    max_target_length: int = 120
    strict: bool = False  # a malformed line is an error instead of being skipped


@dataclass
class ModelConfig:
    rnn: Literal["lstm", "gru"] = "lstm"
    embedding_dim: int = 256
    hidden_size: int = 256  # decoder size = encoder output size (split over directions)
    encoder_layers: int = 1
    decoder_layers: int = 1
    bidirectional: bool = True
    attention: Literal["dot", "general", "bahdanau"] = "general"
    input_feeding: bool = True
    peeky: bool = False  # also feed the encoder summary to every decoder step
    tie_embeddings: bool = True  # generator weights = target embeddings
    copy: bool = False  # pointer-generator heads: copy source pieces the target vocab shares
    dropout: float = 0.2
    init_scale: float = 0.1  # every weight ~ U(-s, s) (Sutskever et al., 2014); 0 = PyTorch's


@dataclass
class TeacherForcingConfig:
    schedule: Literal["constant", "linear", "exponential", "inverse_sigmoid"] = "constant"
    start: float = 1.0  # ratio of gold previous tokens at step 0
    end: float = 1.0  # floor (linear, exponential) of the ratio
    steps: int = 10000  # linear: steps from start to end
    k: float = 0.9995  # exponential: ratio = k**step; inverse_sigmoid: k/(k+exp(step/k))


# A name of its own: `hanseq train --mixed-precision` offers exactly these.
MixedPrecision = Literal["auto", "off", "bf16", "fp16"]


@dataclass
class TrainingConfig:
    output_dir: str = "runs/model"
    seed: int = 1
    batch_size: int = 64  # sentences per step (per process)
    max_steps: int = 10000
    max_minutes: float = 0.0  # > 0: stop after this wall time, then finish as usual
    learning_rate: float = 1e-3
    warmup_steps: int = 500
    lr_decay: Literal["constant", "inverse_sqrt", "linear", "cosine"] = "inverse_sqrt"
    min_learning_rate: float = 1e-5
    label_smoothing: float = 0.1
    clip_grad_norm: float = 1.0
    teacher_forcing: TeacherForcingConfig = field(default_factory=TeacherForcingConfig)
    valid_every: int = 500
    valid_max_examples: int = 500  # per task; 0 = the whole valid split
    patience: int = 8  # validations without improvement before stopping; 0 = never stop early
    keep_checkpoints: int = 3  # best checkpoints kept on disk
    average_checkpoints: int = 1  # the shipped weights average this many best checkpoints
    mixed_precision: MixedPrecision = "auto"  # auto: bf16/fp16 on CUDA
    device: str = "auto"  # auto | cpu | cuda | cuda:N
    progress: bool = True


@dataclass
class Config:
    name: str = "hanseq"
    data: DataConfig = field(default_factory=DataConfig)
    source: TokenizerConfig = field(default_factory=TokenizerConfig)
    tasks: dict[str, TaskConfig] = field(default_factory=dict)
    model: ModelConfig = field(default_factory=ModelConfig)
    training: TrainingConfig = field(default_factory=TrainingConfig)
    # A bundle to start from: its encoder, its tokenizers and its heads (engine/training.py).
    # Its source side and model shape are inherited (a section given must match them); a task
    # it has is fine-tuned, a new name is a new head on its encoder.
    init_from: str = ""
    freeze_encoder: bool = False  # with init_from: the encoder and untrained heads stay exact
    base_dir: str = "."  # where the config file lives; relative paths start there

    def corpora_root(self) -> Path:
        root = Path(os.environ.get("HANSEQ_CORPORA") or self.data.root)
        return root if root.is_absolute() else Path(self.base_dir) / root

    def base_bundle(self) -> Path | None:
        """``init_from`` as a path (relative to the config file), or None."""
        if not self.init_from:
            return None
        path = Path(self.init_from)
        return path if path.is_absolute() else Path(self.base_dir) / path

    def task_metric(self, task: str) -> str:
        return self.tasks[task].metric or ("bleu" if task == "translate" else "rouge_l")


def load_config(path: str | Path) -> Config:
    path = Path(path)
    if not path.is_file():
        raise ConfigurationError(f"config file not found: {path}")
    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except yaml.YAMLError as e:
        raise ConfigurationError(f"{path}: not valid YAML: {e}") from None
    cfg = from_dict(Config, raw, "")
    cfg.base_dir = str(path.resolve().parent)
    if cfg.init_from:
        inherit(cfg, raw)
    validate(cfg)
    return cfg


def inherit(cfg: Config, raw: dict[str, Any]) -> None:
    """Take the source side, the model shape and the targets of the tasks it has from the
    ``init_from`` bundle; a section the config gives must be the bundle's (``raw``: the YAML,
    to tell a section given from a default)."""
    base = cfg.base_bundle()
    assert base is not None
    manifest = _manifest_of(base)
    cfg.source = from_dict(TokenizerConfig, manifest["source"]["tokenizer"], "source")
    _must_match("source", raw.get("source"), cfg.source, "a head on its encoder reads its tokens")
    base_model = from_dict(ModelConfig, manifest["model"], "model")
    cfg.model = dataclasses.replace(base_model)
    given = raw.get("model")
    size = base_model.hidden_size
    if isinstance(given, dict) and given.get("hidden_size", size) != size:  # engine/widen.py
        cfg.model.hidden_size = given["hidden_size"]
        given = {k: v for k, v in given.items() if k != "hidden_size"}
        why = can_widen(base_model, cfg.model)
        if why is None and cfg.freeze_encoder:
            why = "freeze_encoder keeps an encoder that growing changes"
        if why is not None:
            raise ConfigurationError(f"model.hidden_size: cannot grow init_from's model: {why}")
    _must_match("model", given, cfg.model, "the encoder's shape is the bundle's")
    for name, task in cfg.tasks.items():
        entry = manifest["tasks"].get(name)
        if entry is None:
            continue  # a new head
        target = from_dict(TokenizerConfig, entry["tokenizer"], f"tasks.{name}.target")
        given = raw.get("tasks", {}).get(name, {}).get("target")
        _must_match(f"tasks.{name}.target", given, target, "fine-tuning keeps the head's")
        task.target = target


def can_widen(old: ModelConfig, new: ModelConfig) -> str | None:
    """Why ``old`` cannot grow into ``new`` (None when it can): only the hidden size may
    differ, and only upwards (engine/widen.py grows the weights; this is torch-free)."""
    for key, value in vars(new).items():
        if key != "hidden_size" and getattr(old, key) != value:
            return f"model.{key} differs ({getattr(old, key)!r} -> {value!r})"
    if new.hidden_size < old.hidden_size:
        return f"model.hidden_size can only grow ({old.hidden_size} -> {new.hidden_size})"
    if new.attention == "dot":
        return "model.attention: dot cannot be widened (the scores would change)"
    directions = 2 if new.bidirectional else 1
    if new.hidden_size % directions:
        return f"model.hidden_size {new.hidden_size} must split over {directions} directions"
    return None


def _must_match(where: str, given: Any, inherited: Any, why: str) -> None:
    """Each key a config section gives must hold the bundle's value (an absent one takes it)."""
    if not isinstance(given, dict):
        return  # absent (a type error in it was named when the config was read)
    for key, value in given.items():
        if getattr(inherited, key, value) != value:
            raise ConfigurationError(
                f"{where}.{key}: {value!r} is not init_from's bundle's {getattr(inherited, key)!r}"
                f" ({why}); leave it out to take the bundle's"
            )


def _manifest_of(bundle: Path) -> dict[str, Any]:
    """The bundle's manifest, read without torch; an error naming init_from otherwise."""
    path = bundle / MANIFEST
    try:
        manifest = json.loads(path.read_text(encoding="utf-8"))
        manifest["source"]["tokenizer"], manifest["model"], manifest["tasks"]  # noqa: B018
    except (OSError, ValueError, KeyError, TypeError) as e:
        why = "no bundle.json" if not path.is_file() else f"unreadable bundle.json ({e})"
        raise ConfigurationError(f"init_from: {bundle} is not a hanseq bundle: {why}") from None
    return manifest


def from_dict(cls: type, raw: Any, where: str) -> Any:
    """Build dataclass ``cls`` from a mapping; unknown keys and wrong types are errors."""
    if not isinstance(raw, dict):
        raise ConfigurationError(f"{where or 'config'}: expected a mapping, got {raw!r}")
    hints = typing.get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls)]
    for key in raw:
        if key not in names:
            raise ConfigurationError(
                f"unknown key '{_join(where, key)}'; valid keys: {', '.join(names)}"
            )
    return cls(**{k: _coerce(hints[k], v, _join(where, k)) for k, v in raw.items()})


def _coerce(hint: Any, value: Any, where: str) -> Any:
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if isinstance(hint, type) and dataclasses.is_dataclass(hint):
        return from_dict(hint, value, where)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        return _coerce(next(a for a in args if a is not type(None)), value, where)
    if origin is Literal:
        if value not in args:
            choices = ", ".join(str(a) for a in args)
            raise ConfigurationError(f"{where}: {value!r} is not one of: {choices}")
        return value
    if origin is dict:
        if not isinstance(value, dict):
            raise ConfigurationError(f"{where}: expected a mapping, got {value!r}")
        return {str(k): _coerce(args[1], v, _join(where, str(k))) for k, v in value.items()}
    return _scalar(hint, value, where)


def _scalar(hint: type, value: Any, where: str) -> Any:
    if hint is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if not isinstance(value, hint) or (hint is int and isinstance(value, bool)):
        raise ConfigurationError(f"{where}: expected {hint.__name__}, got {value!r}")
    return value


def _join(where: str, key: str) -> str:
    return f"{where}.{key}" if where else key


def validate(cfg: Config) -> None:
    """Range checks that types cannot express."""
    if not cfg.tasks:
        raise ConfigurationError("tasks: at least one task is needed (translate, respond, ...)")
    for name, task in cfg.tasks.items():
        if not name.isidentifier():
            raise ConfigurationError(f"tasks.{name}: a task name must be a plain identifier")
        if not task.train:
            raise ConfigurationError(f"tasks.{name}.train: a training file is required")
        if task.weight <= 0:
            raise ConfigurationError(f"tasks.{name}.weight: must be > 0")
        if task.context_turns < 0:
            raise ConfigurationError(f"tasks.{name}.context_turns: must be >= 0")
        if task.context_turns and not task.train_context:
            raise ConfigurationError(
                f"tasks.{name}.train_context: context_turns needs the multi-turn history "
                "(a *.context.jsonl file)"
            )
    _positive(cfg.model, "model", ["embedding_dim", "hidden_size", "encoder_layers"])
    _positive(cfg.training, "training", ["batch_size", "max_steps", "valid_every"])
    _positive(cfg.data, "data", ["max_source_length", "max_target_length"])
    if cfg.model.bidirectional and cfg.model.hidden_size % 2:
        raise ConfigurationError("model.hidden_size: must be even with a bidirectional encoder")
    if not 0 <= cfg.model.dropout < 1:
        raise ConfigurationError("model.dropout: must be in [0, 1)")
    if not 0 <= cfg.training.label_smoothing < 1:
        raise ConfigurationError("training.label_smoothing: must be in [0, 1)")
    if cfg.freeze_encoder and not cfg.init_from:
        raise ConfigurationError(
            "freeze_encoder: needs init_from (the bundle whose encoder to keep)"
        )
    if cfg.training.average_checkpoints > max(cfg.training.keep_checkpoints, 1):
        raise ConfigurationError("training.average_checkpoints: must be <= keep_checkpoints")


def _positive(section: Any, where: str, keys: list[str]) -> None:
    for key in keys:
        if getattr(section, key) <= 0:
            raise ConfigurationError(f"{where}.{key}: must be > 0")
