"""PyTorch baselines of the five presets: the step that softmcl_jax/train.py takes.

    python baselines/torch_train.py --config=configs/softmcl.py [--steps=N] [--workdir=DIR] \
        [--config.a.b=value ...]

What users compare the JAX trainer against. ``TorchTrainer.step(batch)`` computes, in PyTorch with
transformers' encoders and the independent loss references of ``baselines/torch_losses.py``,
exactly what ``softmcl_jax.train.train_step`` computes for ``config.objective``, provided the
objective is one of the five presets. Which one is read from the active terms (those with
``config.objective.<term>.weight > 0``; see :func:`preset_of`):

* ``softmcl`` (soft_sentence + soft_word [+ mlm]): MLM on ``mlm_input_ids`` + sentence- and
  word-level soft-label contrast of the online encoder on that MLM-corrupted input against
  momentum keys (an EMA copy, no gradient) on the clean ``input_ids``, with ring-buffer queues
  written after the update;
* ``simcse`` (infonce) and ``softcse`` (softcse): two dropout views of the batch stacked in one
  forward;
* ``retrofit`` (supcon + vsp): SupCon on a projection + VSP against a frozen copy;
* ``lcl`` (ce + weighting_ce + lcl): classifier and weighting heads + label-aware contrast.

Each preset's encoder passes and heads are written out here, where the JAX side derives them
from the terms' pass and head knobs; a config that moves them is refused (:data:`STRUCTURE`).
The hyper-parameters (weights, temperatures, label dimensions and weights, queue sizes, words per
sentence, SoftCSE's mode and strength, VSP's mode, ...) are read from ``config.objective.<term>``.
The loss is ``sum_t weight_t * loss_t`` summed in the JAX registry's order; the metrics are named
as JAX names them: ``loss/<term>`` (unweighted), ``loss``, ``grad_norm``, ``learning_rate``,
``words_per_sentence``, ``accuracy/<head>``.

* the encoder is transformers' ``AutoModelForMaskedLM`` (when the mlm term is on) or
  ``AutoModel``; heads are :class:`MLPHead` (``Linear -> exact GELU -> Linear`` or one ``Linear``),
  pooling and word gathering as ``softmcl_jax.models.heads``;
* the optimizer is optax's ``chain(clip_by_global_norm, adamw(warmup-cosine schedule,
  mask=ndim>1))`` (see :func:`make_optimizer`), then ``ema = mu * ema + (1 - mu) * params``
  (``mu = config.momentum.decay``) over every trainable parameter, heads included.

Same initial weights as the JAX trainer: heads come from ``init_heads_from`` (the JAX heads'
params; the JAX trainer draws them from the seed), and the encoder from ``model_dir``, which for
exact parity should be written by ``softmcl_jax.models.save_pretrained`` from the JAX params (the
JAX loader initialises heads a checkpoint lacks, e.g. MiniLM's MLM head; torch would draw
different ones). The CLI does that, uses the JAX trainer's data pipeline (numpy batches, same
order and MLM masks for the same seed) and writes ``metrics.jsonl`` in the same format, so its
curve lies on top of ``main.py``'s with dropout off (with dropout on they differ by the dropout
masks only: the two frameworks cannot draw the same ones).

For timing (``benchmarks/accelerator.py``): ``compiled=True`` (CLI ``--compile``) runs the
encoders through ``torch.compile``; ``config.model.dtype = "bfloat16"`` runs them under bf16
autocast; ``mlm_at_targets=True`` computes the MLM logits at the ``data.mlm_max_predictions``
scored positions per row only, as the JAX step does, instead of at every position (the same
loss: positions without a target add nothing to it).
"""

from __future__ import annotations

import copy
import dataclasses
import json
import math
import os
import sys
import time
from collections.abc import Callable, Iterable, Mapping
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
import transformers
from torch import Tensor, nn

if __package__ in (None, ""):  # run as a script: make `baselines` and `softmcl_jax` importable
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from baselines import torch_losses as T  # noqa: E402

# ---------------------------------------------------------------------- which preset the terms make

# The loss terms in the order of the JAX registry (softmcl_jax.terms.TERMS), which is the order
# the weighted terms are summed in: the total then rounds as JAX's does.
TERM_ORDER = ("soft_sentence", "soft_word", "mlm", "infonce", "softcse", "supcon", "vsp", "lcl",
              "ce", "weighting_ce")
# preset -> (the terms it needs on, the terms it may also have on).
PRESET_TERMS: dict[str, tuple[frozenset[str], frozenset[str]]] = {
    "softmcl": (frozenset({"soft_sentence", "soft_word"}), frozenset({"mlm"})),
    "simcse": (frozenset({"infonce"}), frozenset()),
    "softcse": (frozenset({"softcse"}), frozenset()),
    "retrofit": (frozenset({"supcon", "vsp"}), frozenset()),
    "lcl": (frozenset({"ce", "weighting_ce", "lcl"}), frozenset()),
}
_CONTRAST = dict(query="online/clean", key="online/clean/2", head="projection")
# The encoder passes and heads the implementations below hard-code, per term. The JAX side
# follows whatever these knobs say; here another value is refused rather than silently computed
# as the preset would.
STRUCTURE: dict[str, dict[str, str]] = {
    "soft_sentence": dict(query="online/masked", key="ema/clean", head="sentence"),
    "soft_word": dict(query="online/masked", key="ema/clean", head="word"),
    "infonce": _CONTRAST,
    "softcse": _CONTRAST,
    "supcon": dict(of="online/clean", head="projection"),
    "vsp": dict(of="online/clean", to="frozen/clean"),
    "lcl": dict(of="online/clean", weighting_head="weighting", head=""),
    "ce": dict(of="online/clean", head="classifier"),
    "weighting_ce": dict(of="online/clean", head="weighting"),
}


def active_terms(config: Any) -> list[str]:
    """The terms with ``weight > 0``, sorted by name."""
    return sorted(t for t in config.objective if config.objective[t].weight > 0)


def preset_of(config: Any) -> str:
    """The preset that ``config.objective``'s active terms make up.

    Raises ``ValueError`` for any other set of terms, and for a preset term whose passes or heads
    differ from the preset's (:data:`STRUCTURE`).
    """
    scheduled = sorted(t for t in config.objective
                       if config.objective[t].get("weight_end") is not None
                       and config.objective[t].weight_end != config.objective[t].weight)
    if scheduled:
        raise ValueError(f"config.objective.{scheduled[0]}.weight_end is set: the PyTorch "
                         "baseline has constant term weights only")
    active = frozenset(active_terms(config))
    name = next((n for n, (needed, optional) in PRESET_TERMS.items()
                 if needed <= active <= needed | optional), None)
    if name is None:
        known = "; ".join(f"{n}: {' + '.join(sorted(need))}"
                          + (f" [+ {' + '.join(sorted(opt))}]" if opt else "")
                          for n, (need, opt) in PRESET_TERMS.items())
        raise ValueError(f"the PyTorch baseline implements the five presets only ({known}); "
                         "the active terms (config.objective.<term>.weight > 0) are "
                         f"{sorted(active)}")
    for term in sorted(active & STRUCTURE.keys()):
        for knob, want in STRUCTURE[term].items():
            got = config.objective[term][knob]
            if got != want:
                raise ValueError(f"config.objective.{term}.{knob}={got!r}: the PyTorch "
                                 f"baseline's {name} preset computes this term with "
                                 f"{knob}={want!r} only")
    return name


def mlm_on(config: Any) -> bool:
    """Whether the encoder needs its MLM head (``AutoModelForMaskedLM``)."""
    return config.objective.mlm.weight > 0


def batch_keys(config: Any, preset: str) -> tuple[str, ...]:
    """The batch arrays ``preset``'s implementation reads."""
    keys = ["input_ids", "attention_mask", "valid"]
    o = config.objective
    if preset == "softmcl":
        keys += ["mlm_input_ids", *(f"sentence_{d}" for d in o.soft_sentence.labels),
                 "token_valence_mask", *(f"token_{d}" for d in o.soft_word.labels)]
        if mlm_on(config):
            keys.append("mlm_labels")
    elif preset in ("retrofit", "lcl"):
        keys.append("labels")
    return tuple(dict.fromkeys(keys))

# --------------------------------------------------------------------------------------- heads


class MLPHead(nn.Module):
    """``Linear(hidden) -> exact GELU -> Linear(out)``; with ``hidden == 0`` one ``Linear(out)``.

    The twin of ``softmcl_jax.models.heads.MLPHead`` (same init distribution: N(0, 0.02) weights,
    zero biases); :meth:`load_flax` copies that module's params for the same initial weights.
    """

    def __init__(self, width: int, out: int, hidden: int = 0):
        super().__init__()
        self.hidden = nn.Linear(width, hidden) if hidden else None
        self.out = nn.Linear(hidden or width, out)
        for layer in (self.hidden, self.out):
            if layer is not None:
                nn.init.normal_(layer.weight, std=0.02)
                nn.init.zeros_(layer.bias)

    def forward(self, x: Tensor) -> Tensor:
        if self.hidden is not None:
            x = F.gelu(self.hidden(x))  # approximate="none": the erf GELU, as the Flax head
        return self.out(x)

    @torch.no_grad()
    def load_flax(self, params: Mapping[str, Any]) -> None:
        """Copy Flax ``{"hidden"?: {kernel, bias}, "out": {kernel, bias}}`` (kernel: (in, out))."""
        names = {"out"} | ({"hidden"} if self.hidden is not None else set())
        if set(params) != names:
            raise ValueError(f"head params have {sorted(params)}, this head needs {sorted(names)}")
        for name in names:
            layer, p = getattr(self, name), params[name]
            kernel = torch.tensor(np.asarray(p["kernel"], np.float32)).T
            if kernel.shape != layer.weight.shape:
                raise ValueError(f"{name}: kernel.T {tuple(kernel.shape)} != weight "
                                 f"{tuple(layer.weight.shape)}")
            layer.weight.copy_(kernel)
            layer.bias.copy_(torch.tensor(np.asarray(p["bias"], np.float32)))



def make_heads(config: Any, preset: str, hidden_size: int) -> nn.ModuleDict:
    """The heads of ``preset``, sized as ``softmcl_jax.objective.build_model`` sizes them."""
    dim = config.head.dim
    projection = lambda: MLPHead(hidden_size, dim, hidden_size)
    if preset == "softmcl":
        return nn.ModuleDict({"sentence": projection(), "word": projection()})
    if preset in ("simcse", "softcse", "retrofit"):
        return nn.ModuleDict({"projection": projection()})
    if preset == "lcl":
        n = config.data.num_labels
        return nn.ModuleDict({"classifier": MLPHead(hidden_size, n),
                              "weighting": MLPHead(hidden_size, n, hidden_size)})
    raise ValueError(f"preset {preset!r} is not one of {sorted(PRESET_TERMS)}")


def pool(hidden: Tensor, attention_mask: Tensor, how: str) -> Tensor:
    """(B, L, H) -> (B, H): first token (``"cls"``) or mean over real tokens, in fp32."""
    hidden = hidden.float()
    if how == "cls":
        return hidden[:, 0]
    if how == "mean":
        m = attention_mask[..., None].float()
        return (hidden * m).sum(1) / m.sum(1).clamp(min=1.0)
    raise ValueError(f"pooling must be 'cls' or 'mean', got {how!r}")


def gather_words(hidden: Tensor, token_mask: Tensor, per_sentence: int
                 ) -> tuple[Tensor, Tensor, Tensor]:
    """First ``per_sentence`` flagged tokens per row: vectors (B*W, H), positions (B, W), valid.

    A stable sort of "not flagged" puts the flagged positions first in their original order;
    rows with fewer flags are padded with unflagged positions marked invalid (as the JAX code).
    """
    b = token_mask.shape[0]
    order = torch.argsort((~token_mask).to(torch.int8), dim=1, stable=True)[:, :per_sentence]
    valid = torch.take_along_dim(token_mask, order, dim=1)
    vectors = torch.take_along_dim(hidden, order[..., None], dim=1)
    return vectors.reshape(b * per_sentence, -1), order, valid.reshape(-1)


def mlm_head(encoder: nn.Module) -> Callable[[Tensor], Tensor]:
    """The masked-LM head of a transformers ``*ForMaskedLM``: hidden (..., H) -> logits (..., V).

    For logits at the scored positions only (:func:`mlm_targets`), as the JAX step computes them
    with ``data.mlm_max_predictions > 0``; the model's own forward projects every position.
    """
    if hasattr(encoder, "lm_predictions"):  # DeBERTa-v2/v3: the decoder is the input embedding
        embeddings = encoder.get_input_embeddings()
        return lambda h: encoder.lm_predictions(h, embeddings)
    for name in ("cls", "lm_head"):  # BERT (and legacy DeBERTa-v2 heads); RoBERTa
        if hasattr(encoder, name):
            return getattr(encoder, name)
    if hasattr(encoder, "generator_lm_head"):  # ELECTRA's generator
        return lambda h: encoder.generator_lm_head(encoder.generator_predictions(h))
    raise ValueError(f"no masked-LM head known for {type(encoder).__name__}")


IGNORE_INDEX = -100  # softmcl_jax.data.masking.IGNORE_INDEX: a position with nothing to predict


def mlm_targets(hidden: Tensor, labels: Tensor, per_row: int) -> tuple[Tensor, Tensor]:
    """The first ``per_row`` scored positions (label != -100) of each row: their hidden states
    (B, M, H) and labels (B, M) (-100 where a row has fewer); the JAX ``scored_positions``."""
    scored = labels != IGNORE_INDEX
    order = torch.argsort((~scored).to(torch.int8), dim=1, stable=True)[:, :per_row]
    kept = torch.take_along_dim(scored, order, dim=1)
    picked = torch.where(kept, torch.take_along_dim(labels, order, dim=1), IGNORE_INDEX)
    return torch.take_along_dim(hidden, order[..., None], dim=1), picked


# ----------------------------------------------------------------------------------- optimizer


def learning_rate(step: int, config: Any) -> float:
    """``softmcl_jax.train.learning_rate_schedule``: linear 0 -> peak over ``warmup_steps``,
    then cosine (``optimizer.decay="cosine"``, optax's ``warmup_cosine_decay_schedule``) or a
    straight line (``"linear"``) from peak to ``end_learning_rate`` over ``decay_steps -
    warmup_steps`` with ``decay_steps = max(total_steps, warmup_steps + 1)``; ``step`` is the
    number of updates already applied (optax evaluates it before counting).
    """
    o = config.optimizer
    peak, end, warmup = float(o.learning_rate), float(o.end_learning_rate), int(o.warmup_steps)
    decay_steps = max(int(config.total_steps), warmup + 1)
    if step < warmup:
        return peak * step / warmup
    t = min(step - warmup, decay_steps - warmup)
    if o.decay == "linear":
        return peak + (end - peak) * t / (decay_steps - warmup)
    alpha = 0.0 if peak == 0.0 else end / peak
    cosine = 0.5 * (1.0 + math.cos(math.pi * t / (decay_steps - warmup)))
    return peak * ((1.0 - alpha) * cosine + alpha)


@torch.no_grad()
def clip_by_global_norm_(grads: list[Tensor], max_norm: float) -> Tensor:
    """``optax.clip_by_global_norm`` in place; returns the norm before clipping.

    Not ``torch.nn.utils.clip_grad_norm_``: that one scales by ``max_norm / (norm + 1e-6)``;
    optax scales by ``max_norm / norm``, and only when ``norm >= max_norm``.
    """
    norm = torch.sqrt(sum(g.float().square().sum() for g in grads))
    if norm >= max_norm:
        for g in grads:
            g.div_(norm).mul_(max_norm)
    return norm


def make_optimizer(params: Iterable[nn.Parameter], config: Any) -> torch.optim.AdamW:
    """``optax.adamw(..., mask=ndim > 1)``: ``torch.optim.AdamW`` with two parameter groups.

    The update is the same: optax computes ``p - lr * (m_hat / (sqrt(v_hat) + eps) + wd * p)``
    with ``m_hat = m / (1 - b1^t)``, ``v_hat = v / (1 - b2^t)``, ``t`` counting from 1 and eps
    outside the square root; torch computes ``p * (1 - lr * wd) - (lr / (1 - b1^t)) * m /
    (sqrt(v) / sqrt(1 - b2^t) + eps)``, which is the same expression rearranged (rounding
    differs in the last bit). Weight decay skips 1-D leaves (biases, LayerNorm scales), as the
    optax mask does. ``lr`` is set before each step from :func:`learning_rate`.
    """
    o = config.optimizer
    params = list(params)
    groups = [{"params": [p for p in params if p.ndim > 1], "weight_decay": o.weight_decay},
              {"params": [p for p in params if p.ndim <= 1], "weight_decay": 0.0}]
    return torch.optim.AdamW(groups, lr=0.0, betas=(o.b1, o.b2), eps=o.eps)


# -------------------------------------------------------------------------------------- queues


@dataclasses.dataclass
class Queue:
    """Ring buffer of past keys: ``softmcl_jax.train.Queue`` with a Python ``ptr``."""

    keys: Tensor  # (K, head.dim)
    values: Tensor  # (K, D) label dimensions of the soft-label terms, (K,) zeros for InfoNCE's
    valid: Tensor  # (K,) bool
    ptr: int = 0

    @torch.no_grad()
    def push(self, keys: Tensor, values: Tensor, valid: Tensor) -> None:
        """Overwrite the n slots at ``ptr`` (n divides K, checked at start-up) and advance."""
        n = keys.shape[0]
        self.keys[self.ptr:self.ptr + n] = keys.detach()
        self.values[self.ptr:self.ptr + n] = values.detach()
        self.valid[self.ptr:self.ptr + n] = valid
        self.ptr = (self.ptr + n) % self.keys.shape[0]


# ------------------------------------------------------------------------------ the presets' steps

Batch = dict[str, Tensor]
Enqueue = tuple[Tensor, Tensor, Tensor]  # (keys, values, valid)
# ({term: unweighted loss}, other metrics, {queue (term) name: what to write after the update})
PresetOut = tuple[dict[str, Tensor], dict[str, Tensor], dict[str, Enqueue]]


def softmcl(tr: TorchTrainer, b: Batch) -> PresetOut:
    """MLM + sentence- and word-level soft-label contrast: queries from the online encoder on the
    MLM-corrupted input, keys from the momentum copy on the clean input, plus the queues."""
    o = tr.config.objective
    ss, sw = o.soft_sentence, o.soft_word
    mask, valid = b["attention_mask"], b["valid"]
    # With tr.mlm_at_targets the MLM logits come after the contrasts, at the scored positions.
    hidden, logits = tr.encode(tr.online, b["mlm_input_ids"], mask,
                               mlm=mlm_on(tr.config) and not tr.mlm_at_targets)
    with torch.no_grad():  # the momentum encoder gives no gradient
        k_hidden, _ = tr.encode(tr.ema, b["input_ids"], mask, mlm=False)
    heads, ema_heads = tr.online["heads"], tr.ema["heads"]
    losses, enqueue = {}, {}

    # A sentence takes part when it has every label dimension (an absent one is < 0).
    s_labels = torch.stack([b[f"sentence_{d}"].float() for d in ss.labels], dim=-1)  # (B, D)
    s_valid = valid & (s_labels >= 0).all(-1)
    q_s = heads[ss.head](pool(hidden, mask, tr.pooling))
    with torch.no_grad():
        k_s = ema_heads[ss.head](pool(k_hidden, mask, tr.pooling))
    losses["soft_sentence"] = T.soft_label_contrastive(
        q_s, k_s, s_labels, temperature=ss.temperature, label_temperature=ss.label_temperature,
        label_weights=tuple(ss.label_weights), valid=s_valid,
        **tr.queue_args("soft_sentence", "queue_valence"))
    enqueue["soft_sentence"] = (k_s, s_labels, s_valid)

    # Words are the tokens the valence lexicon flags; token_valence is 0 where absent, the other
    # dimensions are < 0 where the word has no rating, which leaves the word out.
    t_mask = b["token_valence_mask"] & valid[:, None]
    for d in sw.labels:
        if d != "valence":
            t_mask = t_mask & (b[f"token_{d}"] >= 0)
    t_labels = torch.stack([b[f"token_{d}"].float() for d in sw.labels], dim=-1)  # (B, L, D)
    q_vec, pos, w_valid = gather_words(hidden, t_mask, sw.max_words_per_sentence)
    k_vec = torch.take_along_dim(k_hidden, pos[..., None], dim=1).reshape(q_vec.shape)
    w_labels = torch.take_along_dim(t_labels, pos[..., None], dim=1).reshape(-1, len(sw.labels))
    q_w = heads[sw.head](q_vec.float())
    with torch.no_grad():
        k_w = ema_heads[sw.head](k_vec.float())
    losses["soft_word"] = T.soft_label_contrastive(
        q_w, k_w, w_labels, temperature=sw.temperature, label_temperature=sw.label_temperature,
        label_weights=tuple(sw.label_weights), valid=w_valid,
        **tr.queue_args("soft_word", "queue_valence"))
    enqueue["soft_word"] = (k_w, w_labels, w_valid)
    metrics = {"words_per_sentence": w_valid.sum() / valid.sum().clamp(min=1)}

    if mlm_on(tr.config):
        labels = b["mlm_labels"]
        if logits is None:
            at, labels = mlm_targets(hidden, labels, tr.config.data.mlm_max_predictions)
            with tr.autocast():
                logits = tr.mlm_head(at)
        losses["mlm"] = T.masked_lm_loss(logits.float(), labels)
    return losses, metrics, enqueue


def _two_views(tr: TorchTrainer, b: Batch, head: str) -> tuple[Tensor, Tensor]:
    """One forward of the batch stacked twice: the views differ only in their dropout masks."""
    ids, mask = b["input_ids"], b["attention_mask"]
    hidden, _ = tr.encode(tr.online, torch.cat([ids, ids]), torch.cat([mask, mask]), mlm=False)
    z = tr.online["heads"][head](pool(hidden, torch.cat([mask, mask]), tr.pooling))
    q, k = z.chunk(2)
    return q, k


def _keys_only(k: Tensor, valid: Tensor) -> Enqueue:
    """InfoNCE's queue entries: keys without labels (zeros, the JAX layout)."""
    return k, torch.zeros(k.shape[0], device=k.device), valid


def simcse(tr: TorchTrainer, b: Batch) -> PresetOut:
    """InfoNCE between two dropout views; the second view of a sentence is its positive."""
    t = tr.config.objective.infonce
    q, k = _two_views(tr, b, t.head)
    loss = T.info_nce(q, k, temperature=t.temperature, valid=b["valid"],
                      **tr.queue_args("infonce"))
    return {"infonce": loss}, {}, {"infonce": _keys_only(k, b["valid"])}


def softcse(tr: TorchTrainer, b: Batch) -> PresetOut:
    """SimCSE with negatives down-weighted (or softened) by their similarity to the anchor."""
    t = tr.config.objective.softcse
    q, k = _two_views(tr, b, t.head)
    loss = T.soft_cse(q, k, temperature=t.temperature, mode=t.mode, strength=t.strength,
                      valid=b["valid"], **tr.queue_args("softcse"))
    return {"softcse": loss}, {}, {"softcse": _keys_only(k, b["valid"])}


def _labelled(b: Batch) -> tuple[Tensor, Tensor]:
    """(labels clipped to >= 0, the valid rows that have a label)."""
    labels = b["labels"]
    return labels.clamp(min=0), b["valid"] & (labels >= 0)


def retrofit(tr: TorchTrainer, b: Batch) -> PresetOut:
    """SupCon on a projection of the sentence vectors + VSP against the frozen encoder's."""
    o = tr.config.objective
    ids, mask = b["input_ids"], b["attention_mask"]
    hidden, _ = tr.encode(tr.online, ids, mask, mlm=False)
    emb = pool(hidden, mask, tr.pooling)
    with torch.no_grad():
        frozen = pool(tr.encode(tr.frozen, ids, mask, mlm=False)[0], mask, tr.pooling)
    labels, labelled = _labelled(b)
    supcon = T.supervised_contrastive(tr.online["heads"][o.supcon.head](emb), labels,
                                      temperature=o.supcon.temperature, valid=labelled)
    # VSP needs no label: it preserves the space over every real row.
    vsp = T.vector_space_preservation(emb, frozen, valid=b["valid"], mode=o.vsp.mode)
    return {"supcon": supcon, "vsp": vsp}, {}, {}


def _cross_entropy(logits: Tensor, labels: Tensor, valid: Tensor) -> Tensor:
    """Mean over the valid rows; 0 (with a zero gradient) without one, as the JAX loss."""
    if not bool(valid.any()):
        return logits.sum() * 0.0
    return F.cross_entropy(logits[valid].float(), labels[valid])


def _accuracy(logits: Tensor, labels: Tensor, valid: Tensor) -> Tensor:
    return ((logits.argmax(-1) == labels) & valid).sum() / valid.sum().clamp(min=1)


def lcl(tr: TorchTrainer, b: Batch) -> PresetOut:
    """Classifier and weighting-network cross-entropies + label-aware contrast of the sentence
    vectors, negatives weighted by the weighting network's class probabilities."""
    o = tr.config.objective
    ids, mask = b["input_ids"], b["attention_mask"]
    hidden, _ = tr.encode(tr.online, ids, mask, mlm=False)
    emb = pool(hidden, mask, tr.pooling)
    heads = tr.online["heads"]
    logits, w_logits = heads[o.ce.head](emb), heads[o.weighting_ce.head](emb)
    labels, valid = _labelled(b)
    class_weights = torch.softmax(w_logits.float(), dim=-1)
    if o.lcl.detach_class_weights:
        class_weights = class_weights.detach()
    losses = {
        "lcl": T.label_aware_contrastive(emb, labels, class_weights,
                                         temperature=o.lcl.temperature, valid=valid),
        "ce": _cross_entropy(logits, labels, valid),
        "weighting_ce": _cross_entropy(w_logits, labels, valid),
    }
    metrics = {f"accuracy/{o.ce.head}": _accuracy(logits, labels, valid),
               f"accuracy/{o.weighting_ce.head}": _accuracy(w_logits, labels, valid)}
    return losses, metrics, {}


PRESETS: dict[str, Callable[[Any, Batch], PresetOut]] = {
    "softmcl": softmcl, "simcse": simcse, "softcse": softcse, "retrofit": retrofit, "lcl": lcl,
}


# ------------------------------------------------------------------------------------- trainer


class TorchTrainer:
    """The JAX trainer's state and step, in PyTorch.

    Args:
      config: the same ``ml_collections`` config the JAX trainer takes (``configs/*.py``); its
        objective must be one of the five presets (:func:`preset_of`).
      model_dir: a transformers folder. For parity, one written by
        ``softmcl_jax.models.save_pretrained(pretrained, params, dir, with_mlm_head=True)`` when
        the mlm term is on (so the MLM head is the JAX one), without the head otherwise.
      init_heads_from: the JAX heads' initial params ``{name: flax params}`` (e.g.
        ``state.params["heads"]``); None draws fresh ones from ``config.seed`` (torch's RNG).
      device: torch device.
      compiled: ``torch.compile`` the encoders (and the MLM head at the targets).
      mlm_at_targets: MLM logits at the scored positions only (``data.mlm_max_predictions``
        per row; every position when that is 0), not at all B x L.
    """

    def __init__(self, config: Any, model_dir: str, *,
                 init_heads_from: Mapping[str, Any] | None = None,
                 device: str | torch.device = "cpu", compiled: bool = False,
                 mlm_at_targets: bool = False):
        self.preset = preset_of(config)
        if config.model.dtype not in ("float32", "bfloat16"):
            raise ValueError("the PyTorch baseline runs in float32 or bfloat16 (autocast) only "
                             f"(config.model.dtype={config.model.dtype!r})")
        self.bf16 = config.model.dtype == "bfloat16"
        # The JAX trainer's start-up checks (and messages), e.g. a queue size that is not a
        # multiple of the keys written per step: config validation, not computation, so the
        # reference need not restate it.
        from softmcl_jax import objective

        objective.plan(config)
        self.config, self.device = config, torch.device(device)
        self.pooling = config.model.pooling
        self.batch_keys = batch_keys(config, self.preset)
        torch.manual_seed(config.seed)
        self.mlm = mlm_on(config)
        auto = transformers.AutoModelForMaskedLM if self.mlm else transformers.AutoModel
        encoder = auto.from_pretrained(model_dir, dtype=torch.float32)
        heads = make_heads(config, self.preset, encoder.config.hidden_size)
        if init_heads_from is not None:
            if set(init_heads_from) != set(heads):
                raise ValueError(f"init_heads_from has heads {sorted(init_heads_from)}, "
                                 f"{self.preset} needs {sorted(heads)}")
            for name, head in heads.items():
                head.load_flax(init_heads_from[name])
        self.online = nn.ModuleDict({"encoder": encoder, "heads": heads}).to(self.device)
        self.online.train()
        self.params = list(self.online.parameters())  # tied weights appear once
        # The momentum encoder is an EMA of every trainable parameter, heads included.
        self.ema = self._frozen_copy(self.online) if self.preset == "softmcl" else None
        self.frozen = (self._frozen_copy(nn.ModuleDict({"encoder": encoder}))
                       if self.preset == "retrofit" else None)
        self.queues = {}
        for term in active_terms(config):
            size = config.objective[term].get("queue_size", 0)
            if size:
                labels = config.objective[term].get("labels")
                values = (size, len(labels)) if labels is not None else (size,)
                self.queues[term] = Queue(
                    keys=torch.zeros(size, config.head.dim, device=self.device),
                    values=torch.zeros(values, device=self.device),
                    valid=torch.zeros(size, dtype=torch.bool, device=self.device))
        self.optimizer = make_optimizer(self.params, config)
        self.step_count = 0
        self.mlm_at_targets = (mlm_at_targets and self.mlm
                               and config.data.mlm_max_predictions > 0)
        self.mlm_head = mlm_head(encoder) if self.mlm_at_targets else None
        if compiled:
            self._compile()

    def _compile(self) -> None:
        """``torch.compile`` the modules :meth:`encode` calls (in place: the parameters, state
        dict and EMA updates are unchanged), and the MLM head at the targets.

        The encoders and the head are the step's FLOPs; the losses index by boolean masks
        (data-dependent shapes) and the queue pointer is a Python int, so a compiled whole step
        would break its graph there anyway. Compiled after the EMA and frozen copies are taken:
        a deep copy of a compiled module would call the original's compiled forward.
        """
        online = self.online["encoder"]
        (online if self.mlm and not self.mlm_at_targets else online.base_model).compile()
        for copy_ in (self.ema, self.frozen):
            if copy_ is not None:
                copy_["encoder"].base_model.compile()
        if self.mlm_head is not None:
            self.mlm_head = torch.compile(self.mlm_head)

    def autocast(self) -> torch.autocast:
        """bf16 matmuls for ``model.dtype = "bfloat16"`` (parameters, heads and losses stay fp32,
        as in the JAX step); a no-op context in fp32."""
        return torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.bf16)

    @staticmethod
    def _frozen_copy(module: nn.Module) -> nn.Module:
        # eval(): the momentum and frozen encoders run with train=False in JAX (no dropout).
        return copy.deepcopy(module).eval().requires_grad_(False)

    def encode(self, module: nn.ModuleDict, ids: Tensor, mask: Tensor, *, mlm: bool
               ) -> tuple[Tensor, Tensor | None]:
        """(last hidden state (B, L, H), MLM logits (B, L, V) or None) of ``module``'s encoder."""
        enc = module["encoder"]
        with self.autocast():
            if mlm:
                out = enc(input_ids=ids, attention_mask=mask, output_hidden_states=True)
                return out.hidden_states[-1], out.logits
            return enc.base_model(input_ids=ids, attention_mask=mask).last_hidden_state, None

    def queue_args(self, term: str, values_key: str | None = None) -> dict[str, Tensor]:
        """``term``'s queue as loss keyword arguments; {} without one."""
        q = self.queues.get(term)
        if q is None:
            return {}
        args = {"queue_keys": q.keys, "queue_valid": q.valid}
        if values_key:
            args[values_key] = q.values
        return args

    def _tensors(self, batch: Mapping[str, Any]) -> Batch:
        out = {}
        for k in self.batch_keys:
            x = torch.as_tensor(np.asarray(batch[k]))
            if k in ("input_ids", "attention_mask", "mlm_input_ids", "mlm_labels", "labels"):
                x = x.long()
            out[k] = x.to(self.device)
        return out

    def step(self, batch: Mapping[str, Any]) -> dict[str, float]:
        """One optimisation step on a (numpy) batch; returns the JAX trainer's metrics."""
        b = self._tensors(batch)
        lr = learning_rate(self.step_count, self.config)
        losses, metrics, enqueue = PRESETS[self.preset](self, b)
        loss = 0.0
        for term in TERM_ORDER:  # the JAX summation order: ((w1 * l1) + w2 * l2) + ...
            if term in losses:
                loss = loss + float(self.config.objective[term].weight) * losses[term]
        self.optimizer.zero_grad(set_to_none=False)
        loss.backward()
        for p in self.params:
            # optax updates every leaf: parameters the loss does not reach (the pooler, an unused
            # MLM head) still get zero-gradient Adam steps and weight decay; torch would skip a
            # parameter whose grad is None.
            if p.grad is None:
                p.grad = torch.zeros_like(p)
        grad_norm = clip_by_global_norm_([p.grad for p in self.params],
                                         self.config.optimizer.clip_norm)
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        self.optimizer.step()
        self.update_momentum_and_queues(enqueue)
        self.step_count += 1
        out = {f"loss/{t}": float(v.detach()) for t, v in losses.items()}
        out.update({k: float(v.detach()) for k, v in metrics.items()})
        out.update(loss=float(loss.detach()), grad_norm=float(grad_norm), learning_rate=lr)
        return out

    @torch.no_grad()
    def update_momentum_and_queues(self, enqueue: Mapping[str, Enqueue]) -> None:
        """After the update: ``ema = mu * ema + (1 - mu) * params``, then the queue writes."""
        if self.ema is not None:
            mu = self.config.momentum.decay
            for e, p in zip(self.ema.parameters(), self.params, strict=True):
                e.mul_(mu).add_(p, alpha=1.0 - mu)
        for name, q in self.queues.items():
            q.push(*enqueue[name])

    @torch.no_grad()
    def embed(self, tokenizer: Any, texts: list[str], *, max_len: int, batch_size: int = 64
              ) -> np.ndarray:
        """Sentence embeddings (N, H) of the online encoder in inference mode (for the probe)."""
        enc = self.online["encoder"].base_model
        was_training = enc.training
        enc.eval()
        out = []
        for i in range(0, len(texts), batch_size):
            # Padded to max_len: one compiled shape per batch size (the pooled vectors do not
            # depend on the padding; softmcl_jax.evaluation.embed buckets lengths instead).
            t = tokenizer(texts[i:i + batch_size], padding="max_length", truncation=True,
                          max_length=max_len, return_tensors="pt").to(self.device)
            h = enc(input_ids=t["input_ids"], attention_mask=t["attention_mask"]).last_hidden_state
            out.append(pool(h, t["attention_mask"], self.pooling).cpu().numpy())
        enc.train(was_training)
        return np.concatenate(out)

    def state_dict_numpy(self) -> dict[str, np.ndarray]:
        """Current params as numpy: ``encoder.<state-dict key>`` and ``heads.<name>.<...>``."""
        return {k: v.detach().cpu().numpy() for k, v in self.online.state_dict().items()}


# ----------------------------------------------------------------------------------------- CLI


def jax_initialised_model(config: Any, out_dir: str) -> tuple[str, dict[str, Any], Any]:
    """Write the JAX trainer's initial encoder to ``out_dir``; return it, the heads, a tokenizer.

    ``main.py`` loads the checkpoint with ``softmcl_jax.models.from_pretrained`` (which draws any
    head the checkpoint lacks from the seed) and draws its heads from the seed; saving those
    params here gives torch the identical starting point.
    """
    from softmcl_jax import loop

    preset_of(config)  # refuse an objective torch does not implement before anything is written
    pretrained, tokenizer, model = loop.setup_model(config)
    return out_dir, write_jax_initial(config, pretrained, model, out_dir), tokenizer


def write_jax_initial(config: Any, pretrained: Any, model: Any, out_dir: str) -> dict[str, Any]:
    """Write the initial encoder the JAX trainer makes of ``pretrained`` and ``model`` (as
    ``softmcl_jax.loop.setup_model`` returns them) to ``out_dir``, with the MLM head when the mlm
    term is on; return its initial heads ``{name: flax params}`` (``init_heads_from``)."""
    import jax

    from softmcl_jax import sharding, train
    from softmcl_jax.models import save_pretrained

    mesh = sharding.make_mesh(1, 1, jax.devices()[:1])
    state = train.setup_step(model, config, mesh).init()
    params = jax.device_get(state.params)
    save_pretrained(pretrained, params["encoder"], out_dir, with_mlm_head=mlm_on(config))
    return params["heads"]


def main(argv: list[str]) -> None:
    from absl import flags

    from softmcl_jax import evaluate, loop, sharding
    from softmcl_jax.models import hf

    f = flags.FLAGS
    config = f.config
    transformers.utils.logging.disable_progress_bar()  # keep the step lines readable
    steps = f.steps if f.steps is not None else config.total_steps
    workdir = f.workdir or os.path.join("workdir", f"torch_{config.name or preset_of(config)}")
    os.makedirs(workdir, exist_ok=True)
    torch.set_num_threads(f.threads or torch.get_num_threads())
    init_dir, heads, tokenizer = jax_initialised_model(config, os.path.join(workdir, "init"))
    trainer = TorchTrainer(config, init_dir, init_heads_from=heads, device=f.device,
                           compiled=f.compile)

    probe = loop.probe_data(config) if config.probe.enabled else None
    # The JAX trainer's pipeline (its data prepared with the probe's sentences left out);
    # batch(step) is its numpy batch before any device_put.
    pipeline = loop.build_pipeline(config, tokenizer, sharding.make_mesh(1, 1, _one_device()))
    probe_kw = dict(max_len=config.model.max_len, batch_size=config.probe.batch_size)

    def run_probe() -> float:
        x_tr = trainer.embed(tokenizer, list(probe.train_texts), **probe_kw)
        x_te = trainer.embed(tokenizer, list(probe.test_texts), **probe_kw)
        return evaluate.valence_probe(x_tr, probe.train_y, x_te, probe.test_y)

    before = run_probe() if probe else None
    path = os.path.join(workdir, "metrics.jsonl")
    t0 = time.perf_counter()
    with open(path, "w") as out:
        for step in range(steps):
            metrics = trainer.step(pipeline.batch(step))
            if (step + 1) % config.log_every_steps == 0 or step + 1 == steps:
                out.write(json.dumps({"step": step + 1, **metrics}) + "\n")
                out.flush()
                print(f"step {step + 1}/{steps}: " + ", ".join(
                    f"{k} {v:.4g}" for k, v in sorted(metrics.items())), flush=True)
    elapsed = time.perf_counter() - t0
    print(f"{steps} steps in {elapsed:.1f} s ({steps / max(elapsed, 1e-9):.2f} steps/s); "
          f"metrics in {path}")
    export = os.path.join(workdir, "export")
    trainer.online["encoder"].base_model.save_pretrained(export)
    for name in hf.TOKENIZER_FILES:
        src = os.path.join(init_dir, name)
        if os.path.exists(src):
            with open(src, "rb") as a, open(os.path.join(export, name), "wb") as b:
                b.write(a.read())
    print(f"exported the encoder (Hugging Face format) to {export}")
    if probe:
        print(f"valence probe (held-out, Pearson r): before {before:.3f} after {run_probe():.3f}")


def _one_device() -> list[Any]:
    import jax

    return jax.devices()[:1]


def _cli() -> None:
    os.environ.setdefault("JAX_PLATFORMS", "cpu")  # JAX only draws the initial weights here
    from absl import app, flags
    from ml_collections import config_flags

    config_flags.DEFINE_config_file("config", None, "Training configuration file.",
                                    lock_config=True)
    flags.DEFINE_integer("steps", None, "Steps to run (default config.total_steps; the schedule "
                         "always spans config.total_steps, as in main.py).")
    flags.DEFINE_string("workdir", None, "Output folder (default workdir/torch_<config.name>).")
    flags.DEFINE_string("device", "cpu", "torch device.")
    flags.DEFINE_bool("compile", False, "torch.compile the encoders.")
    flags.DEFINE_integer("threads", 0, "torch.set_num_threads (0: torch's default).")
    flags.mark_flags_as_required(["config"])
    app.run(main)


if __name__ == "__main__":
    _cli()
