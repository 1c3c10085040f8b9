"""``hanseq train``: multi-task training of the shared encoder and its heads -> a bundle.

Each step draws a task by weight (the same task on every rank), takes a batch of it and trains
with scheduled sampling and label smoothing. Every ``valid_every`` steps rank 0 decodes part of
each valid split, logs one JSON line, keeps the best checkpoints and decides on early stopping.
At the end the best checkpoints are averaged into the bundle's weights.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import signal
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch.nn.parallel import DistributedDataParallel
from tqdm import tqdm

from hanseq.engine import distributed as dist_utils
from hanseq.engine.bundle import Bundle, Side, load_bundle, model_for, save_bundle
from hanseq.engine.config import Config, ConfigurationError
from hanseq.engine.data import (
    BatchStream,
    DataError,
    Encoded,
    Example,
    encode,
    fingerprint,
    read_tsv,
    with_context,
)
from hanseq.engine.dialogue import MARKS, read_histories, split_marks
from hanseq.engine.heads import Seq2Seq
from hanseq.engine.manifest import new_version
from hanseq.engine.metrics import task_scores
from hanseq.engine.options import SearchOptions
from hanseq.engine.pipeline import Pipeline
from hanseq.engine.schedules import learning_rate_factor, teacher_forcing_ratio
from hanseq.engine.shortlist import LexicalTable
from hanseq.engine.stopping import StopRequest, TrainingInterrupted
from hanseq.engine.tokenizers import VocabularyTooSmall, build_tokenizer
from hanseq.engine.vocabulary import PAD_ID, Vocabulary
from hanseq.engine.widen import widen

log = logging.getLogger(__name__)


@dataclass
class TaskData:
    train: Encoded
    valid: list[Example]
    files: list[Path]


@dataclass
class History:
    """Validation results so far: decides best checkpoints and early stopping."""

    records: list[dict] = field(default_factory=list)

    def best(self) -> float:
        return max((r["score"] for r in self.records), default=-math.inf)

    def since_best(self) -> int:
        best = self.best()
        last = max(i for i, r in enumerate(self.records) if r["score"] == best)
        return len(self.records) - 1 - last


def train(cfg: Config, resume: bool = True) -> Path:
    ctx = dist_utils.setup(cfg.training.device)
    try:
        return Trainer(cfg, ctx).run(resume)
    finally:
        dist_utils.teardown(ctx)


_PRECISION_NAMES: dict[torch.dtype | None, str] = {torch.bfloat16: "bf16", torch.float16: "fp16"}


class Trainer:
    def __init__(self, cfg: Config, ctx: dist_utils.Context):
        self.cfg, self.ctx, self.t = cfg, ctx, cfg.training
        self.out = Path(self.t.output_dir)
        if not self.out.is_absolute():
            self.out = Path(cfg.base_dir) / self.out
        self.ckpt_dir = self.out / "checkpoints"
        torch.manual_seed(self.t.seed + ctx.rank)
        base_path = cfg.base_bundle()
        self.base: Bundle | None = load_bundle(base_path) if base_path else None
        self.source, self.targets, self.tasks = self._prepare_data()
        # The heads of init_from's bundle this run does not train: carried into the new
        # bundle as they are (exactly, with freeze_encoder).
        self.carried: dict[str, Side] = {}
        if self.base is not None:
            self.carried = {t: s for t, s in self.base.targets.items() if t not in self.targets}
        self.model: Seq2Seq = model_for(cfg.model, self.source, {**self.carried, **self.targets})
        self.frozen: dict[str, torch.Tensor] = {}
        if self.base is not None:
            self._start_from_base(self.base)
        self.model.to(ctx.device)
        self.net: torch.nn.Module = self.model
        if ctx.distributed:  # with several heads, the others are idle in a step
            self.net = DistributedDataParallel(
                self.model, find_unused_parameters=len(cfg.tasks) > 1
            )
        trained = [p for p in self.model.parameters() if p.requires_grad]
        # fused: one kernel per parameter for the whole update instead of ~10 elementwise
        # passes; on this project's CPU a step over 10 M parameters took 17 ms against 114
        # (bench/README.md, "The peer", v2: training throughput).
        self.optimizer = torch.optim.Adam(trained, lr=self.t.learning_rate, fused=True)
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(
            self.optimizer, lambda s: learning_rate_factor(self.t, s)
        )
        self.amp = dist_utils.autocast_dtype(self.t.mixed_precision, ctx.device)
        self.scaler = torch.amp.GradScaler(enabled=self.amp == torch.float16)
        self.streams = {
            task: BatchStream(
                d.train, self.t.batch_size, cfg.tasks[task].origin_weights, self.t.seed, ctx.rank
            )
            for task, d in self.tasks.items()
        }
        self.step, self.history = 0, History()
        self.before_seconds = 0.0  # training time of the runs this one resumed
        self._started = time.monotonic()

    def _start_from_base(self, base: Bundle) -> None:
        """The base bundle's weights into every head it has (new heads keep their random
        start); with freeze_encoder, its encoder and the heads this run does not train take no
        gradient at all (a head it does train, new or the bundle's, learns on that encoder)."""
        state = base.model.state_dict()
        if base.model_cfg.hidden_size != self.cfg.model.hidden_size:  # checked by the config
            state = widen(state, base.model_cfg, self.cfg.model, self.t.seed)
        missing, unexpected = self.model.load_state_dict(state, strict=False)
        new = tuple(f"heads.{t}." for t in self.targets if t not in base.targets)
        if unexpected or any(not name.startswith(new) for name in missing):
            raise ConfigurationError(f"init_from: {base.path}'s weights do not fit this model")
        if not self.cfg.freeze_encoder:
            untouched = ", ".join(self.carried)
            if untouched and self.ctx.is_main:
                tqdm.write(
                    f"warning: {untouched} not trained in this run: their answers change as "
                    "the shared encoder does (freeze_encoder keeps them exactly)"
                )
            return
        trained = tuple(f"heads.{t}." for t in self.targets)
        for name, param in self.model.named_parameters():
            if not name.startswith(trained):
                param.requires_grad_(False)
                self.frozen[name] = param.detach().clone()

    # ---- data -----------------------------------------------------------------------------
    def _prepare_data(self) -> tuple[Side, dict[str, Side], dict[str, TaskData]]:
        root, strict = self.cfg.corpora_root(), self.cfg.data.strict
        raw: dict[str, tuple[list[Example], list[Example], list[Path]]] = {}
        for task, tcfg in self.cfg.tasks.items():
            train_path = self._path(root, tcfg.train)
            train_ex, report = read_tsv(train_path, strict)
            if report.skipped and self.ctx.is_main:
                tqdm.write(f"warning: {report.summary()}")
            valid_ex = read_tsv(self._path(root, tcfg.valid), strict)[0] if tcfg.valid else []
            files = [train_path]
            if tcfg.context_turns:
                train_ex = self._context(task, train_ex, self._path(root, tcfg.train_context))
                files.append(self._path(root, tcfg.train_context))
                if tcfg.valid_context:
                    valid_ex = self._context(task, valid_ex, self._path(root, tcfg.valid_context))
            raw[task] = (train_ex, valid_ex, files)
        source, targets = self._tokenizers(raw)
        data = {}
        for task, (train_ex, valid_ex, files) in raw.items():
            enc = encode(
                train_ex,
                source,
                targets[task],
                self.cfg.data.max_source_length,
                self.cfg.data.max_target_length,
            )
            if enc.truncated and self.ctx.is_main:
                tqdm.write(
                    f"warning: {task}: {enc.truncated} training pair(s) longer than "
                    "data.max_source_length / max_target_length were truncated"
                )
            data[task] = TaskData(enc, valid_ex, files)
        return source, targets, data

    def _context(self, task: str, examples: list[Example], path: Path) -> list[Example]:
        """Multi-turn pairs get their history as speaker-marked source (engine/dialogue)."""
        turns = self.cfg.tasks[task].context_turns
        examples, changed = with_context(examples, read_histories(path), turns)
        if self.ctx.is_main:
            tqdm.write(f"{task}: {changed} of {len(examples)} pairs read with their history")
        return examples

    @staticmethod
    def _path(root: Path, name: str) -> Path:
        path = Path(name)
        path = path if path.is_absolute() else root / path
        if not path.is_file():
            raise DataError(
                f"data file not found: {path} (corpora root: {root}; set "
                "data.root in the config or HANSEQ_CORPORA)"
            )
        return path

    def _tokenizers(self, raw: dict) -> tuple[Side, dict[str, Side]]:
        """Fit on the training split once (rank 0); later runs and other ranks load them."""
        vocab_dir = self.out / "vocab"
        done = vocab_dir / "done"
        if self.ctx.is_main and not done.exists() and self.base is not None:
            self._base_tokenizers(self.base, raw, vocab_dir)
        elif self.ctx.is_main and not done.exists():
            vocab_dir.mkdir(parents=True, exist_ok=True)
            sources = [ex.source for train, _, _ in raw.values() for ex in train]
            src_tok = build_tokenizer(self.cfg.source)
            # Speaker marks are tokens of their own, never learnt as text (engine/dialogue).
            with _vocabulary_key("source.vocab_size"):
                vocab = src_tok.fit(part for s in sources for part in split_marks(s))
            if any(t.context_turns for t in self.cfg.tasks.values()):
                vocab = Vocabulary([*vocab.itos, *MARKS])
            Side(src_tok, vocab).save(vocab_dir, "source")
            for task, (train, _, _) in raw.items():
                self._fit_target(task, train, vocab_dir)
            done.touch()
        dist_utils.barrier(self.ctx)
        source = Side.load(vocab_dir, "source", self.cfg.source)
        targets = {t: Side.load(vocab_dir, f"target.{t}", self.cfg.tasks[t].target) for t in raw}
        return source, targets

    def _base_tokenizers(self, base: Bundle, raw: dict, vocab_dir: Path) -> None:
        """The base bundle's source side and the targets of the tasks it has, unchanged (the
        encoder's embeddings index its vocabulary); a new task's target is fit as usual."""
        vocab_dir.mkdir(parents=True, exist_ok=True)
        contextual = [t for t in raw if self.cfg.tasks[t].context_turns]
        if contextual and MARKS[0] not in base.source.vocab.stoi:
            raise ConfigurationError(
                f"tasks.{contextual[0]}.context_turns: init_from's encoder was trained without "
                "the dialogue speaker marks, so it cannot read history; set context_turns: 0"
            )
        base.source.save(vocab_dir, "source")
        for task, (train, _, _) in raw.items():
            if task in base.targets:
                base.targets[task].save(vocab_dir, f"target.{task}")
                continue
            self._fit_target(task, train, vocab_dir)
        (vocab_dir / "done").touch()

    def _fit_target(self, task: str, train: list[Example], vocab_dir: Path) -> None:
        """A task's target tokenizer, fit on its training targets and saved for the run."""
        tok = build_tokenizer(self.cfg.tasks[task].target)
        with _vocabulary_key(f"tasks.{task}.target.vocab_size"):
            Side(tok, tok.fit(ex.target for ex in train)).save(vocab_dir, f"target.{task}")

    # ---- loop -----------------------------------------------------------------------------
    def run(self, resume: bool) -> Path:
        if resume:
            self._resume()
        started = self._started = time.monotonic()
        if self.ctx.is_main:  # each invocation: where it began, and with which budget
            self._log({"event": "start", "step": self.step, "max_minutes": self.t.max_minutes})
        with (
            tqdm(
                total=self.t.max_steps,
                initial=self.step,
                disable=not self._show_progress(),
                desc="train",
                unit="step",
                dynamic_ncols=True,
            ) as bar,
            StopRequest() as signalled,
        ):
            self._loop(bar, started, signalled)
        dist_utils.barrier(self.ctx)
        return self._finish() if self.ctx.is_main else self.out / "bundle"

    def _loop(self, bar: tqdm, started: float, signalled: StopRequest) -> None:
        """Train until max_steps, the time budget or early stopping; a signal raises
        TrainingInterrupted after the step it arrived in."""
        tokens, window = 0, time.monotonic()
        loss_sum, loss_tokens = 0.0, 0  # since the last validation: one batch's loss is noise
        stop = False
        while self.step < self.t.max_steps and not stop:
            loss, n_tokens = self._train_step()
            self.step += 1
            # rank 0's signal decides: every rank stops after the same step
            if dist_utils.broadcast_flag(self.ctx, signalled.signum is not None):
                self._interrupted(signalled.signum or signal.SIGTERM)
            tokens += n_tokens
            loss_sum, loss_tokens = loss_sum + loss * n_tokens, loss_tokens + n_tokens
            bar.update(1)
            if self.step % 10 == 0:
                rate = tokens / max(time.monotonic() - window, 1e-9)
                bar.set_postfix(self._postfix(loss, rate, started))
                tokens, window = 0, time.monotonic()
            out_of_time = (
                self.t.max_minutes > 0 and time.monotonic() - started > 60 * self.t.max_minutes
            )
            if self.step % self.t.valid_every == 0 or self.step == self.t.max_steps or out_of_time:
                stop = self._validate_and_checkpoint(loss_sum / max(loss_tokens, 1)) or out_of_time
                loss_sum, loss_tokens = 0.0, 0
                stop = dist_utils.broadcast_flag(self.ctx, stop)

    def _interrupted(self, signum: int) -> None:
        """SIGTERM or Ctrl-C: the step that ran is kept (no validation: a pod's grace period
        is ~30 s), and the same command resumes from it."""
        if self.ctx.is_main:
            self._save_last(self._state())
            self._log({"event": "stopped", "step": self.step, "signal": signum})
        dist_utils.barrier(self.ctx)
        raise TrainingInterrupted(signum, self.step, self.ckpt_dir / "last.pt")

    def _postfix(self, loss: float, rate: float, started: float) -> dict[str, str]:
        postfix = {
            "loss": f"{loss:.3f}",
            "tok_s": f"{rate:,.0f}",
            "lr": f"{self.scheduler.get_last_lr()[0]:.2e}",
        }
        if self.t.max_minutes > 0:  # the step ETA is wrong when the time budget ends first
            left = max(60 * self.t.max_minutes - (time.monotonic() - started), 0)
            postfix["budget_left"] = f"{int(left // 60)}:{int(left % 60):02d}"
        return postfix

    def _show_progress(self) -> bool:
        return self.t.progress and self.ctx.is_main

    def _pick_task(self) -> str:
        names = list(self.tasks)
        weights = np.array([self.cfg.tasks[n].weight for n in names])
        rng = np.random.default_rng([self.t.seed, self.step])  # same on every rank
        return names[int(rng.choice(len(names), p=weights / weights.sum()))]

    def _train_step(self) -> tuple[float, int]:
        self.model.train()
        task = self._pick_task()
        batch = next(self.streams[task]).to(self.ctx.device)
        ratio = teacher_forcing_ratio(self.t.teacher_forcing, self.step)
        real = batch.tgt_out != PAD_ID  # the output layer never runs on padding
        with dist_utils.autocast(self.amp, self.ctx.device):
            logits = self.net(task, batch.src, batch.src_len, batch.tgt_in, ratio, real)
        loss = F.cross_entropy(
            logits.float(), batch.tgt_out[real], label_smoothing=self.t.label_smoothing
        )
        self.optimizer.zero_grad(set_to_none=True)
        self.scaler.scale(loss).backward()
        self.scaler.unscale_(self.optimizer)
        torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.t.clip_grad_norm)
        self.scaler.step(self.optimizer)
        self.scaler.update()
        self.scheduler.step()
        return loss.item(), batch.target_tokens

    # ---- validation and checkpoints ------------------------------------------------------
    def validate(self) -> dict[str, dict[str, float]]:
        """Greedy-decode each task's valid subset and score it."""
        self.model.eval()
        self.model.forget_packed()  # decode with this step's weights, not the last packing
        pipeline = Pipeline(
            self.model,
            self.source,
            self.targets,
            self.cfg.data.max_source_length,
            warn_truncated=False,
        )
        opts = SearchOptions(max_length=self.cfg.data.max_target_length)
        scores = {}
        for task, data in self.tasks.items():
            examples = valid_subset(data.valid, self.t.valid_max_examples)
            if not examples:
                continue
            outputs = pipeline.generate(task, [ex.source for ex in examples], opts)
            scores[task] = task_scores(
                task, [o.text for o in outputs], [ex.target for ex in examples]
            )
        return scores

    def _combined(self, scores: dict[str, dict[str, float]]) -> float:
        values = [s[self.cfg.task_metric(t)] for t, s in scores.items()]
        return sum(values) / len(values) if values else -float(self.step)

    def _validate_and_checkpoint(self, train_loss: float) -> bool:
        """Rank 0 only. Returns True when early stopping says stop."""
        if not self.ctx.is_main:
            return False
        scores = self.validate()
        record: dict[str, Any] = {
            "event": "validation",
            "step": self.step,
            "score": self._combined(scores),
            "scores": scores,
            "train_loss": train_loss,
            "lr": self.scheduler.get_last_lr()[0],
            "gold_ratio": teacher_forcing_ratio(self.t.teacher_forcing, self.step),
            "precision": _PRECISION_NAMES.get(self.amp, "fp32"),  # what autocast ran in
            "minutes": self._minutes(),  # wall time since the first run started, resumes summed
        }
        self.history.records.append(record)
        self._log(record)
        tqdm.write(
            f"step {self.step}: "
            + ", ".join(
                f"{t} {self.cfg.task_metric(t)} {s[self.cfg.task_metric(t)]:.2f}"
                for t, s in scores.items()
            )
        )
        self._save_checkpoint(record["score"])
        patience = self.t.patience
        return bool(patience) and self.history.since_best() >= patience

    def _minutes(self) -> float:
        return round((self.before_seconds + time.monotonic() - self._started) / 60, 2)

    def _log(self, record: dict) -> None:
        self.out.mkdir(parents=True, exist_ok=True)
        with (self.out / "log.jsonl").open("a", encoding="utf-8") as f:
            f.write(json.dumps(record, ensure_ascii=False) + "\n")

    def _state(self) -> dict:
        return {
            "model": self.model.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "scaler": self.scaler.state_dict(),
            "step": self.step,
            "streams": {t: s.state() for t, s in self.streams.items()},
            "history": self.history.records,
            "rng": torch.get_rng_state(),
            "seconds": self.before_seconds + time.monotonic() - self._started,
        }

    def _save_checkpoint(self, score: float) -> None:
        state = self._state()
        self._save_last(state)
        ranked = sorted(self.history.records, key=lambda r: -r["score"])
        keep = {r["step"] for r in ranked[: self.t.keep_checkpoints]}
        if self.step in keep:
            torch.save(
                {"model": state["model"], "score": score}, self.ckpt_dir / f"step-{self.step}.pt"
            )
        for path in self.ckpt_dir.glob("step-*.pt"):
            if int(path.stem.split("-")[1]) not in keep:
                path.unlink()

    def _save_last(self, state: dict[str, Any]) -> None:
        """The checkpoint a run resumes from, replaced atomically (a kill mid-write leaves the
        previous one)."""
        self.ckpt_dir.mkdir(parents=True, exist_ok=True)
        torch.save(state, self.ckpt_dir / "last.pt.tmp")
        (self.ckpt_dir / "last.pt.tmp").replace(self.ckpt_dir / "last.pt")

    def _resume(self) -> None:
        path = self.ckpt_dir / "last.pt"
        if not path.is_file():
            return
        state = torch.load(path, map_location=self.ctx.device, weights_only=True)
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        self.scaler.load_state_dict(state["scaler"])
        self.step = state["step"]
        for task, s in state["streams"].items():
            self.streams[task].restore(s)
        self.history.records = state["history"]
        self.before_seconds = float(state.get("seconds", 0.0))
        torch.set_rng_state(state["rng"].cpu())
        if self.ctx.is_main:
            tqdm.write(f"resumed from {path} at step {self.step}")

    # ---- the bundle -------------------------------------------------------------------------
    def _final_weights(self) -> tuple[list[int], dict[str, dict[str, float]]]:
        """Average the best checkpoints, but keep the best single one if averaging scores
        lower (checkpoints far apart, early in training, average badly)."""
        ranked = sorted(self.history.records, key=lambda r: -r["score"])
        best = [r["step"] for r in ranked[: self.t.average_checkpoints]]
        paths = [p for p in (self.ckpt_dir / f"step-{s}.pt" for s in best) if p.is_file()]
        self._load_average(paths)
        scores = self.validate()
        if len(paths) > 1:  # what averaging did, for the tuning tables
            self._log(
                {
                    "event": "averaging",
                    "steps": best,
                    "averaged": self._combined(scores),
                    "best_single": ranked[0]["score"],
                }
            )
        if len(paths) > 1 and self._combined(scores) < ranked[0]["score"]:
            tqdm.write(
                f"averaging {best} scored {self._combined(scores):.2f} < "
                f"{ranked[0]['score']:.2f} of step {best[0]} alone: keeping that one"
            )
            self._load_average(paths[:1])
            best, scores = best[:1], ranked[0]["scores"]
        return best, scores

    def _load_average(self, paths: list[Path]) -> None:
        self.model.load_state_dict(average_checkpoints(paths))
        if self.frozen:  # averaging equal tensors may still round: the base's, bit for bit
            self.model.load_state_dict(self.frozen, strict=False)

    def _finish(self) -> Path:
        best, scores = self._final_weights()
        self._log({"event": "final", "averaged_steps": best, "scores": scores})
        files = [f for d in self.tasks.values() for f in d.files]
        info: dict[str, Any] = {
            "id": self.cfg.name,
            **new_version(),
            "max_source_length": self.cfg.data.max_source_length,
            "max_target_length": self.cfg.data.max_target_length,
            "training": {
                "steps": self.step,
                "averaged_steps": best,
                "data_fingerprint": fingerprint(files),
                "data_files": [f.name for f in files],
            },
            "tasks": {
                **self._carried_entries(),
                **{
                    t: {
                        **self._base_entry(t),  # a fine-tuned head keeps its decoding defaults
                        "metric": self.cfg.task_metric(t),
                        "valid_scores": s,
                        "context_turns": self.cfg.tasks[t].context_turns,
                    }
                    for t, s in scores.items()
                },
            },
        }
        if self.base is not None:
            info["training"]["init_from"] = {
                "id": self.base.id,
                "version": self.base.version,
                "freeze_encoder": self.cfg.freeze_encoder,
                "hidden_size": self.base.model_cfg.hidden_size,  # below ours: widened
            }
        lexicons = {
            t: lexicon(d.train, self.source, self.targets[t]) for t, d in self.tasks.items()
        }
        for task in self.carried:
            held = self.base.model.head(task).lexicon if self.base is not None else None
            if held is not None:
                lexicons[task] = held
        bundle = save_bundle(
            self.out / "bundle",
            self.model,
            self.cfg.model,
            self.source,
            {**self.carried, **self.targets},
            info,
            lexicons=lexicons,
        )
        tqdm.write(f"bundle written to {bundle}")
        return bundle

    def _base_entry(self, task: str) -> dict[str, Any]:
        """What the base bundle's manifest says of a task beyond its files (metric, scores,
        context, decoding defaults); empty for a task it lacks."""
        if self.base is None:
            return {}
        entry = self.base.manifest["tasks"].get(task, {})
        return {k: v for k, v in entry.items() if k not in ("tokenizer", "files", "shortlist")}

    def _carried_entries(self) -> dict[str, dict[str, Any]]:
        return {t: self._base_entry(t) for t in self.carried}


@contextlib.contextmanager
def _vocabulary_key(key: str) -> Iterator[None]:
    """A vocabulary SentencePiece cannot learn becomes an error naming the config key and a
    size that works (what the data needs, rounded up to the next hundred)."""
    try:
        yield
    except VocabularyTooSmall as e:
        workable = -(-e.needed // 100) * 100
        raise ConfigurationError(
            f"{key}: {e.vocab_size} is too small for this data, which needs at least "
            f"{e.needed} pieces (its characters and 256 byte pieces); try {workable} or more"
        ) from None


def valid_subset(examples: list[Example], limit: int) -> list[Example]:
    """At most ``limit`` valid examples (0: all), taken from every origin in turn: a split's
    first lines are often one origin (v1's), and model selection must see all of them."""
    if not limit or limit >= len(examples):
        return examples
    by_origin: dict[str, list[Example]] = {}
    for ex in examples:
        by_origin.setdefault(ex.origin, []).append(ex)
    queues = list(by_origin.values())
    picked: list[Example] = []
    for i in range(max(len(q) for q in queues)):
        picked += [q[i] for q in queues if i < len(q)]
        if len(picked) >= limit:
            break
    return picked[:limit]


def lexicon(train: Encoded, source: Side, target: Side) -> LexicalTable:
    """A task's vocabulary-shortlist table, counted from its encoded train split."""
    return LexicalTable.build(train.sources, train.targets, len(source.vocab), len(target.vocab))


def lexicons_for(cfg: Config, source: Side, targets: dict[str, Side]) -> dict[str, LexicalTable]:
    """Shortlist tables for these target sides from the train splits ``cfg`` names, as the
    bundle's own tokenizers cut them (``hanseq export --shortlist`` on an older bundle)."""
    out = {}
    for task, target in targets.items():
        if task not in cfg.tasks:
            raise ConfigurationError(
                f"tasks: the config names no {task!r} task, which the bundle has"
            )
        path = Trainer._path(cfg.corpora_root(), cfg.tasks[task].train)
        examples = read_tsv(path, cfg.data.strict)[0]
        max_src, max_tgt = cfg.data.max_source_length, cfg.data.max_target_length
        out[task] = lexicon(encode(examples, source, target, max_src, max_tgt), source, target)
    return out


def average_checkpoints(paths: list[Path]) -> dict[str, torch.Tensor]:
    """Element-wise mean of the models in ``paths`` (Vaswani et al., 2017; Junczys-Dowmunt)."""
    if not paths:
        raise FileNotFoundError("no checkpoint to average; did training validate at all?")
    total: dict[str, torch.Tensor] = {}
    for path in paths:
        model = torch.load(path, map_location="cpu", weights_only=True)["model"]
        for name, tensor in model.items():
            total[name] = total.get(name, 0) + tensor.float()
    return {name: t / len(paths) for name, t in total.items()}
