"""The model: one shared Korean encoder, one decoder + generator head per task."""

from __future__ import annotations

import torch
from torch import Tensor, nn

from hanseq.engine import shapes
from hanseq.engine.columns import ColumnGenerator
from hanseq.engine.config import ConfigurationError, ModelConfig
from hanseq.engine.decoders import DecoderState, Memory, RecurrentDecoder, build_decoder
from hanseq.engine.encoders import Encoder, EncoderOutput, build_encoder
from hanseq.engine.particles import Agreement
from hanseq.engine.pointer import CopyGate, CopySources
from hanseq.engine.quantize import Int8Linear
from hanseq.engine.shortlist import LexicalTable, RowShortlist
from hanseq.engine.vocabulary import PAD_ID


class TaskHead(nn.Module):
    """Decoder + generator over this task's target vocabulary."""

    def __init__(
        self, cfg: ModelConfig, vocab_size: int, enc_size: int, copy_mapping: Tensor | None = None
    ):
        super().__init__()
        self.decoder: RecurrentDecoder = build_decoder(cfg, vocab_size, enc_size)
        self.generator = nn.Linear(self.decoder.output_size, vocab_size)
        if cfg.tie_embeddings:  # sizes match by construction: output_size == embedding_dim
            self.generator.weight = self.decoder.embed.weight
        self.copy = (
            None if copy_mapping is None else CopyGate(self.decoder.output_size, copy_mapping)
        )

        self._packed: tuple[tuple, Tensor, Tensor] | None = None  # see _inference_logits
        self._short: tuple[tuple, ColumnGenerator] | None = None  # _shortlist_logits
        self.int8: Int8Linear | None = None  # engine.quantize: a frozen int8 copy, if asked
        self.lexicon: LexicalTable | None = None  # engine.shortlist: from the bundle, if any
        self.byte_kinds: Tensor | None = None  # engine.utf8: whole characters, if byte pieces
        self.agreement: Agreement | None = None  # engine.particles: Korean particle forms

    def prepare(self, enc: EncoderOutput, shortlist: bool = False) -> tuple[Memory, DecoderState]:
        """``shortlist``: decode over the columns this head's lexicon allows these sources
        (when it has one; never while training)."""
        memory, state = self.decoder.prepare(enc)
        if self.copy is not None:
            memory.copy = self.copy.sources(enc.ids)
        if shortlist and self.lexicon is not None and not torch.is_grad_enabled():
            copyable = None if self.copy is None else self.copy.mapping[enc.ids]
            memory.shortlist = self.lexicon.rows(enc.ids, copyable)
        return memory, state

    def step(
        self, prev: Tensor, state: DecoderState, memory: Memory
    ) -> tuple[Tensor, DecoderState, Tensor]:
        """-> logits (batch x vocab), new state, attention (batch x src_len).

        A copy head returns log-probabilities instead (engine/copy.py): the same
        distribution under the log-softmax every caller applies. Without gradients the
        logits may have a few extra columns past the vocabulary, at -inf: they never win and
        add nothing to a softmax. With a shortlist in ``memory`` the columns are its columns
        (``memory.token_ids`` turns them into ids), -inf where a row may not go."""
        vector, state, weights = self.decoder.step(prev, state, memory)
        short = memory.shortlist
        if torch.is_grad_enabled():
            logits = self.generator(vector)
        elif short is not None:
            logits = self._shortlist_logits(vector, short)
        else:
            logits = self._inference_logits(vector)
        sources = memory.copy
        if sources is not None and short is not None:
            sources = CopySources(short.positions(sources.ids), sources.positions)
        return self._copied(logits, vector, weights, sources), state, weights

    def log_probs(self, out: Tensor) -> Tensor:
        """step()'s output as log-probabilities: a copy head's already are (one pass over the
        vocabulary saved per step, ~4% of greedy decoding)."""
        return out.float() if self.copy is not None else torch.log_softmax(out.float(), -1)

    def unroll(
        self, inputs: Tensor, state: DecoderState, memory: Memory, keep: Tensor | None = None
    ) -> Tensor:
        """Training: every step of a known input sequence -> logits, batch x tgt_len x vocab,
        or, given ``keep`` (batch x tgt_len, True on real target tokens), only those rows:
        kept x vocab. The generator (and the copy gate) run once over all steps, one large
        matrix product instead of one per step, and never on padding (but for the few rows
        that put the count on engine/shapes.py's grid): the output layer is most of a step's
        arithmetic."""
        vectors, weights = self.decoder.unroll(inputs, state, memory)
        rows = None if keep is None else _kept_rows(keep)
        logits = self.generator(_pick(vectors, rows))
        if self.copy is not None:
            assert memory.copy is not None, "a copy head's memory comes from its own prepare()"
            ids = memory.copy.ids.unsqueeze(1).expand(*inputs.shape, -1)
            mass = memory.copy.mass(weights)  # all steps in one product
            logits = self.copy(logits, _pick(vectors, rows), _pick(mass, rows), _pick(ids, rows))
        if keep is None:
            return logits.view(*inputs.shape, -1)
        return logits[: int(keep.sum())]  # the grid's extra rows go before the loss

    def predict(self, vector: Tensor, weights: Tensor, memory: Memory, rows: Tensor) -> Tensor:
        """Logits (or a copy head's log-probabilities) of these ``rows`` of a step only."""
        sources = None if memory.copy is None else memory.copy.index_select(rows)
        return self._copied(self.generator(vector[rows]), vector[rows], weights[rows], sources)

    def _copied(
        self, logits: Tensor, vector: Tensor, weights: Tensor, sources: CopySources | None
    ) -> Tensor:
        """A copy head's log-probabilities from the generator's logits; a plain head's logits."""
        if self.copy is None:
            return logits
        assert sources is not None, "a copy head's memory comes from its own prepare()"
        return self.copy(logits, vector, sources.mass(weights), sources.row_ids(vector.size(0)))

    def forget_packed(self) -> None:
        """Drop the generator's packed copies (below); the next decoding packs them afresh.
        Their keys see a weight replaced or changed by an ordinary in-place op, but not one
        that a fused optimizer step rewrote: torch's fused Adam leaves the version counter as
        it was. So the trainer calls this before every validation."""
        self._packed = self._short = None

    def _shortlist_logits(self, vector: Tensor, short: RowShortlist) -> Tensor:
        """The generator over the shortlist's columns only, each row masked to its own set.
        The columns' weights are packed as they first appear and kept while rows come and
        go (engine/columns.py); rebuilt when the weights change (validation runs between
        training steps) or int8 is switched on."""
        weight = self.generator.weight
        key = (weight.data_ptr(), weight._version, weight.dtype, weight.device, self.int8)
        if self._short is None or self._short[0] != key:
            generator = ColumnGenerator(weight, self.generator.bias, self.int8 is not None)
            self._short = (key, generator)
        logits = self._short[1](vector, short.columns)
        rows, batch = logits.size(0), short.allowed.size(0)  # r rows per source (a beam)
        grouped = logits.view(batch, rows // batch, -1)
        return grouped.masked_fill(~short.allowed.unsqueeze(1), float("-inf")).view(rows, -1)

    def _inference_logits(self, vector: Tensor) -> Tensor:
        """The generator as one addmm on a transposed weight padded to a multiple of 16
        columns: measured on this project's CPU at batch 64, a vocabulary of 8,003 took 43%
        longer than 8,016, and the transposed layout another 16% off. Rebuilt whenever the
        weights change (validation runs between training steps)."""
        if self.int8 is not None:
            return self.int8(vector)
        weight, bias = self.generator.weight, self.generator.bias
        key = (weight.data_ptr(), weight._version, weight.dtype, weight.device)
        if self._packed is None or self._packed[0] != key:
            vocab = weight.size(0)
            padded = -(-vocab // 16) * 16
            wt = weight.new_zeros(weight.size(1), padded)
            wt[:, :vocab] = weight.t()
            b = weight.new_full((padded,), float("-inf"))
            b[:vocab] = bias if bias is not None else 0.0
            self._packed = (key, wt, b)
        _, wt, b = self._packed
        return torch.addmm(b, vector, wt)


class Seq2Seq(nn.Module):
    def __init__(self, encoder: Encoder, heads: dict[str, TaskHead]):
        super().__init__()
        self.encoder = encoder
        self.heads = nn.ModuleDict(heads)

    @property
    def tasks(self) -> list[str]:
        return list(self.heads.keys())

    def forget_packed(self) -> None:
        """Every head's packed generator copies dropped (TaskHead.forget_packed)."""
        for head in self.heads.values():
            head.forget_packed()  # type: ignore[operator]

    def head(self, task: str) -> TaskHead:
        if task not in self.heads:
            raise KeyError(f"unknown task {task!r}; this model has: {', '.join(self.tasks)}")
        return self.heads[task]  # type: ignore[return-value]

    def encode(self, src: Tensor, src_len: Tensor) -> EncoderOutput:
        return self.encoder(src, src_len)

    def forward(
        self,
        task: str,
        src: Tensor,
        src_len: Tensor,
        tgt_in: Tensor,
        gold_ratio: float = 1.0,
        keep: Tensor | None = None,
    ) -> Tensor:
        """Training pass -> logits (batch x tgt_len x vocab), or only the ``keep`` positions'
        (kept x vocab; see TaskHead.unroll).

        ``tgt_in`` is BOS + target. Each step reads the gold previous token with probability
        ``gold_ratio``, else the model's own previous prediction (scheduled sampling, decided
        per token as in Bengio et al., 2015); 1.0 is plain teacher forcing.
        """
        head = self.head(task)
        memory, state = head.prepare(self.encode(src, src_len))
        if gold_ratio < 1.0:
            tgt_in = self._scheduled_inputs(head, memory, state, tgt_in, gold_ratio)
        return head.unroll(tgt_in, state, memory, keep)

    @staticmethod
    def _scheduled_inputs(
        head: TaskHead, memory: Memory, state: DecoderState, gold: Tensor, gold_ratio: float
    ) -> Tensor:
        """The inputs scheduled sampling feeds: each step reads the previous gold token with
        probability ``gold_ratio`` and the model's own argmax otherwise. The predictions are
        constants to the loss either way (no gradient flows through an argmax), so they come
        from a pass without gradients, and the pass that learns then runs on the mixed inputs
        as on gold ones (one embedding lookup, one output product). The coins are tossed
        first, so this pass runs the output layer only on the rows that will read their own
        prediction, only for the sentences that have one (few, early in a schedule), and
        stops after the last such step."""
        own = torch.rand(gold.shape, device=gold.device) >= gold_ratio
        own[:, 0] = False  # the first input is always BOS
        own &= gold != PAD_ID
        if not bool(own.any()):
            return gold
        # Sentences and predicted rows at the grid's sizes (engine/shapes.py): the others
        # among them only keep the size; their inputs stay gold.
        sentences = shapes.on_grid(own.any(1))
        own, inputs = own[sentences], gold[sentences].clone()
        memory, state = memory.index_select(sentences), state.index_select(sentences)
        with torch.no_grad():
            for t in range(1, int(own.any(0).nonzero().max()) + 1):
                vector, state, weights = head.decoder.step(inputs[:, t - 1], state, memory)
                if bool(own[:, t].any()):
                    rows = shapes.on_grid(own[:, t])
                    guess = head.predict(vector, weights, memory, rows).argmax(-1)
                    inputs[rows, t] = torch.where(own[rows, t], guess, inputs[rows, t])
        mixed = gold.clone()
        mixed[sentences] = inputs
        return mixed


def build_model(
    cfg: ModelConfig,
    src_vocab: int,
    tgt_vocabs: dict[str, int],
    copy_maps: dict[str, Tensor] | None = None,
) -> Seq2Seq:
    """``copy_maps`` (task -> engine.pointer.copy_map of its vocabularies) when ``cfg.copy``."""
    if not tgt_vocabs:
        raise ConfigurationError("tasks: a model needs at least one task head")
    maps: dict[str, Tensor | None] = {t: None for t in tgt_vocabs}
    if cfg.copy:
        if copy_maps is None or set(copy_maps) != set(tgt_vocabs):
            raise ConfigurationError("model.copy: every task head needs its copy map")
        maps.update(copy_maps)
    encoder = build_encoder(cfg, src_vocab)
    heads = {t: TaskHead(cfg, v, encoder.output_size, maps[t]) for t, v in tgt_vocabs.items()}
    model = Seq2Seq(encoder, heads)
    if cfg.init_scale > 0:
        initialize(model, cfg.init_scale)
    return model


def initialize(model: nn.Module, scale: float) -> None:
    """Every parameter ~ U(-scale, scale), padding embeddings zero: the classic recurrent
    seq2seq initialisation (OpenNMT-py's default too). PyTorch's own draws embeddings from
    N(0, 1), which starts a tied generator off uniform (initial loss 9.7 nats against ln V =
    9.0 at 8,000 pieces)."""
    with torch.no_grad():
        for param in model.parameters():
            param.uniform_(-scale, scale)
        for module in model.modules():
            if isinstance(module, nn.Embedding) and module.padding_idx is not None:
                module.weight[module.padding_idx].zero_()


def _kept_rows(keep: Tensor) -> Tensor:
    """The flat positions where ``keep`` is True, in order, then the first of them repeated
    up to the grid's row count (engine/shapes.py: a count that repeats across steps lets
    oneDNN reuse the output layer's kernels under bf16)."""
    rows = keep.reshape(-1).nonzero().squeeze(1)
    extra = shapes.tokens(rows.numel()) - rows.numel()
    return torch.cat([rows, rows[:1].expand(extra)]) if extra and rows.numel() else rows


def _pick(values: Tensor, rows: Tensor | None) -> Tensor:
    """batch x steps x ... -> (batch * steps) x ..., or only ``rows`` of it."""
    flat = values.reshape(-1, *values.shape[2:])
    return flat if rows is None else flat.index_select(0, rows)
