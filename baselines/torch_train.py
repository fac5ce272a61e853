"""PyTorch baselines of the five training methods: the step that softmcl_jax/train.py takes.

    python baselines/torch_train.py --config=configs/softmcl.py [--steps=N] [--workdir=DIR] \
        [--config.a.b=value ...]

What users compare the JAX trainer against. ``TorchTrainer.step(batch)`` computes, in PyTorch with
transformers' encoders and the independent loss references of ``baselines/torch_losses.py``,
exactly what ``softmcl_jax.train.train_step`` computes for the method in ``config.method``:

* the encoder is transformers' ``AutoModelForMaskedLM`` (SoftMCL, for its MLM term) or
  ``AutoModel``; heads are :class:`MLPHead` (``Linear -> exact GELU -> Linear`` or one ``Linear``),
  pooling and word gathering as ``softmcl_jax.models.heads``;
* SoftMCL: MLM on ``mlm_input_ids`` + sentence- and word-level soft-label contrast of the online
  encoder against momentum keys (an EMA copy, no gradient) on the clean ``input_ids``, with two
  ring-buffer queues written after the update; SimCSE / SoftCSE: two dropout views of the batch
  stacked in one forward; retrofitting: SupCon on a projection + ``vsp_weight`` x VSP against a
  frozen copy; LCL: classifier + weighting heads + label-aware contrast;
* the optimizer is optax's ``chain(clip_by_global_norm, adamw(warmup-cosine schedule,
  mask=ndim>1))`` (see :func:`make_optimizer`), then ``ema = mu * ema + (1 - mu) * params``
  over every trainable parameter, heads included.

Same initial weights as the JAX trainer: heads come from ``init_heads_from`` (the JAX heads'
params; the JAX trainer draws them from the seed), and the encoder from ``model_dir``, which for
exact parity should be written by ``softmcl_jax.models.save_pretrained`` from the JAX params (the
JAX loader initialises heads a checkpoint lacks, e.g. MiniLM's MLM head; torch would draw
different ones). The CLI does that, uses the JAX trainer's data pipeline (numpy batches, same
order and MLM masks for the same seed) and writes ``metrics.jsonl`` in the same format, so its
curve lies on top of ``main.py``'s with dropout off (with dropout on they differ by the dropout
masks only: the two frameworks cannot draw the same ones).
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


def make_heads(config: Any, hidden_size: int) -> nn.ModuleDict:
    """The heads of ``config.method``, as ``softmcl_jax.methods.make_heads`` sizes them."""
    dim, method = config.head.dim, config.method
    if method == "softmcl":
        return nn.ModuleDict({n: MLPHead(hidden_size, dim, hidden_size)
                              for n in ("sentence", "word")})
    if method in ("simcse", "softcse", "retrofit"):
        return nn.ModuleDict({"projection": MLPHead(hidden_size, dim, hidden_size)})
    if method == "lcl":
        n = config.data.num_labels
        return nn.ModuleDict({"classifier": MLPHead(hidden_size, n),
                              "weighting": MLPHead(hidden_size, n, hidden_size)})
    raise ValueError(f"method={method!r} is not one of {sorted(METHODS)}")


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


# ----------------------------------------------------------------------------------- optimizer


def learning_rate(step: int, config: Any) -> float:
    """``optax.warmup_cosine_decay_schedule`` as ``softmcl_jax.train.make_optimizer`` builds it.

    Linear 0 -> peak over ``warmup_steps``, then cosine from peak to ``end_learning_rate`` over
    ``decay_steps - warmup_steps`` with ``decay_steps = max(total_steps, warmup_steps + 1)``;
    ``step`` is the number of updates already applied (optax evaluates it before counting).
    """
    o = config.optimizer
    peak, end, warmup = float(o.learning_rate), float(o.end_learning_rate), int(o.warmup_steps)
    decay_steps = max(int(config.total_steps), warmup + 1)
    if step < warmup:
        return peak * step / warmup
    t = min(step - warmup, decay_steps - warmup)
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
    """Ring buffer of past momentum keys: ``softmcl_jax.train.Queue`` with a Python ``ptr``."""

    keys: Tensor  # (K, D)
    values: Tensor  # (K,)
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



# ------------------------------------------------------------------------------------- methods

Batch = dict[str, Tensor]
MethodOut = tuple[Tensor, dict[str, Tensor], dict[str, tuple[Tensor, Tensor, Tensor]]]


def softmcl(tr: TorchTrainer, b: Batch) -> MethodOut:
    """``softmcl_jax.methods.softmcl``: MLM + word/sentence soft-label contrast, momentum keys."""
    c = tr.config
    w = c.loss
    mask, valid = b["attention_mask"], b["valid"]
    hidden, logits = tr.encode(tr.online, b["mlm_input_ids"], mask, mlm=w.mlm > 0)
    with torch.no_grad():  # the momentum encoder sees the clean input and gives no gradient
        k_hidden, _ = tr.encode(tr.ema, b["input_ids"], mask, mlm=False)
    heads, ema_heads = tr.online["heads"], tr.ema["heads"]

    q_s = heads["sentence"](pool(hidden, mask, tr.pooling))
    with torch.no_grad():
        k_s = ema_heads["sentence"](pool(k_hidden, mask, tr.pooling))
    s_valid = valid & b["sentence_valence_mask"]
    s_val = b["sentence_valence"]
    qs = tr.queues["sentence"]
    sent = T.soft_label_contrastive(
        q_s, k_s, s_val, temperature=w.temperature, label_temperature=w.label_temperature,
        queue_keys=qs.keys, queue_valence=qs.values, valid=s_valid, queue_valid=qs.valid)

    t_mask = b["token_valence_mask"] & valid[:, None]
    q_vec, pos, w_valid = gather_words(hidden, t_mask, c.word_level.max_words_per_sentence)
    k_vec = torch.take_along_dim(k_hidden, pos[..., None], dim=1).reshape(q_vec.shape)
    w_val = torch.take_along_dim(b["token_valence"], pos, dim=1).reshape(-1)
    q_w = heads["word"](q_vec.float())
    with torch.no_grad():
        k_w = ema_heads["word"](k_vec.float())
    qw = tr.queues["word"]
    word = T.soft_label_contrastive(
        q_w, k_w, w_val, temperature=w.temperature, label_temperature=w.label_temperature,
        queue_keys=qw.keys, queue_valence=qw.values, valid=w_valid, queue_valid=qw.valid)

    loss = w.sentence * sent + w.word * word
    metrics = {"sentence_loss": sent, "word_loss": word,
               "words_per_sentence": w_valid.sum() / valid.sum().clamp(min=1)}
    if w.mlm > 0:
        mlm = T.masked_lm_loss(logits.float(), b["mlm_labels"])
        loss = loss + w.mlm * mlm
        metrics["mlm_loss"] = mlm
    enqueue = {"sentence": (k_s, s_val, s_valid), "word": (k_w, w_val, w_valid)}
    return loss, metrics, enqueue


def _two_views(tr: TorchTrainer, b: Batch) -> tuple[Tensor, Tensor]:
    """One forward of the batch stacked twice: the views differ only in their dropout masks."""
    ids, mask = b["input_ids"], b["attention_mask"]
    hidden, _ = tr.encode(tr.online, torch.cat([ids, ids]), torch.cat([mask, mask]), mlm=False)
    z = tr.online["heads"]["projection"](pool(hidden, torch.cat([mask, mask]), tr.pooling))
    q, k = z.chunk(2)
    return q, k


def simcse(tr: TorchTrainer, b: Batch) -> MethodOut:
    q, k = _two_views(tr, b)
    loss = T.info_nce(q, k, temperature=tr.config.loss.temperature, valid=b["valid"])
    return loss, {"info_nce": loss}, {}


def softcse(tr: TorchTrainer, b: Batch) -> MethodOut:
    q, k = _two_views(tr, b)
    c = tr.config.loss
    loss = T.soft_cse(q, k, temperature=c.temperature, mode=c.softcse_mode,
                      strength=c.softcse_strength, valid=b["valid"])
    return loss, {"soft_cse": loss}, {}


def retrofit(tr: TorchTrainer, b: Batch) -> MethodOut:
    ids, mask, labels = b["input_ids"], b["attention_mask"], b["labels"]
    hidden, _ = tr.encode(tr.online, ids, mask, mlm=False)
    emb = pool(hidden, mask, tr.pooling)
    with torch.no_grad():
        frozen = pool(tr.encode(tr.frozen, ids, mask, mlm=False)[0], mask, tr.pooling)
    proj = tr.online["heads"]["projection"](emb)
    valid = b["valid"] & (labels >= 0)
    c = tr.config.loss
    supcon = T.supervised_contrastive(proj, labels, temperature=c.temperature, valid=valid)
    vsp = T.vector_space_preservation(emb, frozen, valid=valid)
    return supcon + c.vsp_weight * vsp, {"supcon_loss": supcon, "vsp_loss": vsp}, {}


def lcl(tr: TorchTrainer, b: Batch) -> MethodOut:
    ids, mask, labels = b["input_ids"], b["attention_mask"], b["labels"]
    hidden, _ = tr.encode(tr.online, ids, mask, mlm=False)
    emb = pool(hidden, mask, tr.pooling)
    heads = tr.online["heads"]
    logits, w_logits = heads["classifier"](emb), heads["weighting"](emb)
    valid = b["valid"] & (labels >= 0)
    c = tr.config.loss
    loss = T.lcl_objective(logits, w_logits, labels.clamp(min=0), emb, temperature=c.temperature,
                           alpha=c.alpha, valid=valid)
    acc = ((logits.argmax(-1) == labels) & valid).sum() / valid.sum().clamp(min=1)
    return loss, {"accuracy": acc}, {}


METHODS: dict[str, Callable[[Any, Batch], MethodOut]] = {
    "softmcl": softmcl, "simcse": simcse, "softcse": softcse, "retrofit": retrofit, "lcl": lcl,
}
# What each method reads from a batch (softmcl_jax.methods.BATCH_KEYS).
BATCH_KEYS = {
    "softmcl": ("input_ids", "attention_mask", "valid", "mlm_input_ids", "mlm_labels",
                "sentence_valence", "sentence_valence_mask", "token_valence",
                "token_valence_mask"),
    "simcse": ("input_ids", "attention_mask", "valid"),
    "softcse": ("input_ids", "attention_mask", "valid"),
    "retrofit": ("input_ids", "attention_mask", "valid", "labels"),
    "lcl": ("input_ids", "attention_mask", "valid", "labels"),
}


# ------------------------------------------------------------------------------------- trainer


class TorchTrainer:
    """The JAX trainer's state and step, in PyTorch.

    Args:
      config: the same ``ml_collections`` config the JAX trainer takes (``configs/*.py``).
      model_dir: a transformers folder. For parity, one written by
        ``softmcl_jax.models.save_pretrained(pretrained, params, dir, with_mlm_head=True)`` for
        SoftMCL (so the MLM head is the JAX one) or without the head for the other methods.
      init_heads_from: the JAX heads' initial params ``{name: flax params}`` (e.g.
        ``state.params["heads"]``); None draws fresh ones from ``config.seed`` (torch's RNG).
      device: torch device.
    """

    def __init__(self, config: Any, model_dir: str, *,
                 init_heads_from: Mapping[str, Any] | None = None,
                 device: str | torch.device = "cpu"):
        if config.method not in METHODS:
            raise ValueError(f"config.method={config.method!r} is not one of {sorted(METHODS)}")
        if config.model.dtype != "float32":
            raise ValueError("the PyTorch baseline runs in float32 only "
                             f"(config.model.dtype={config.model.dtype!r})")
        self.config, self.method, self.device = config, config.method, torch.device(device)
        self.pooling = config.model.pooling
        torch.manual_seed(config.seed)
        self.mlm = self.method == "softmcl" and config.loss.mlm > 0
        auto = transformers.AutoModelForMaskedLM if self.mlm else transformers.AutoModel
        encoder = auto.from_pretrained(model_dir, dtype=torch.float32)
        heads = make_heads(config, encoder.config.hidden_size)
        if init_heads_from is not None:
            if set(init_heads_from) != set(heads):
                raise ValueError(f"init_heads_from has heads {sorted(init_heads_from)}, "
                                 f"{self.method} needs {sorted(heads)}")
            for name, head in heads.items():
                head.load_flax(init_heads_from[name])
        self.online = nn.ModuleDict({"encoder": encoder, "heads": heads}).to(self.device)
        self.online.train()
        self.params = list(self.online.parameters())  # tied weights appear once
        # The momentum encoder is an EMA of every trainable parameter, heads included.
        self.ema = self._frozen_copy(self.online) if self.method == "softmcl" else None
        self.frozen = (self._frozen_copy(nn.ModuleDict({"encoder": encoder}))
                       if self.method == "retrofit" else None)
        # The same start-up check (and message) as the JAX trainer: it is config validation,
        # not computation, so the reference need not restate it.
        from softmcl_jax.train import queue_sizes

        self.queues = {
            name: Queue(keys=torch.zeros(k, config.head.dim, device=self.device),
                        values=torch.zeros(k, device=self.device),
                        valid=torch.zeros(k, dtype=torch.bool, device=self.device))
            for name, (k, _) in queue_sizes(config, config.batch_size).items()}
        self.optimizer = make_optimizer(self.params, config)
        self.step_count = 0

    @staticmethod
    def _frozen_copy(module: nn.Module) -> nn.Module:
        # eval(): the momentum and frozen encoders run with train=False in JAX (no dropout).
        return copy.deepcopy(module).eval().requires_grad_(False)

    def encode(self, module: nn.ModuleDict, ids: Tensor, mask: Tensor, *, mlm: bool
               ) -> tuple[Tensor, Tensor | None]:
        """(last hidden state (B, L, H), MLM logits (B, L, V) or None) of ``module``'s encoder."""
        enc = module["encoder"]
        if mlm:
            out = enc(input_ids=ids, attention_mask=mask, output_hidden_states=True)
            return out.hidden_states[-1], out.logits
        return enc.base_model(input_ids=ids, attention_mask=mask).last_hidden_state, None

    def _tensors(self, batch: Mapping[str, Any]) -> Batch:
        out = {}
        for k in BATCH_KEYS[self.method]:
            x = torch.as_tensor(np.asarray(batch[k]))
            if k in ("input_ids", "attention_mask", "mlm_input_ids", "mlm_labels", "labels"):
                x = x.long()
            out[k] = x.to(self.device)
        return out

    def step(self, batch: Mapping[str, Any]) -> dict[str, float]:
        """One optimisation step on a (numpy) batch; returns the JAX trainer's metrics."""
        b = self._tensors(batch)
        lr = learning_rate(self.step_count, self.config)
        loss, metrics, enqueue = METHODS[self.method](self, b)
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
        out = {k: float(v.detach()) for k, v in metrics.items()}
        out.update(loss=float(loss.detach()), grad_norm=float(grad_norm), learning_rate=lr)
        return out

    @torch.no_grad()
    def update_momentum_and_queues(self, enqueue: Mapping[str, tuple[Tensor, Tensor, Tensor]]
                                   ) -> None:
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
            # Padded to max_len like softmcl_jax.evaluate.embed_texts (same shapes to compare).
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
    import jax

    from softmcl_jax import loop, train
    from softmcl_jax.models import save_pretrained

    pretrained, tokenizer, model = loop.setup_model(config)
    tx, _ = train.make_optimizer(config)
    state = train.init_state(model, config, tx, config.batch_size)
    params = jax.device_get(state.params)
    save_pretrained(pretrained, params["encoder"], out_dir,
                    with_mlm_head=config.method == "softmcl")
    return out_dir, params["heads"], tokenizer


def main(argv: list[str]) -> None:
    from absl import flags

    from softmcl_jax import evaluate, loop, sharding
    from softmcl_jax.models import hf

    f = flags.FLAGS
    config = f.config
    transformers.utils.logging.disable_progress_bar()  # keep the step lines readable
    steps = f.steps if f.steps is not None else config.total_steps
    workdir = f.workdir or os.path.join("workdir", f"torch_{config.method}")
    os.makedirs(workdir, exist_ok=True)
    torch.set_num_threads(f.threads or torch.get_num_threads())
    init_dir, heads, tokenizer = jax_initialised_model(config, os.path.join(workdir, "init"))
    trainer = TorchTrainer(config, init_dir, init_heads_from=heads, device=f.device)

    probe = loop.probe_data(config) if config.probe.enabled else None
    held_out = set(probe.train_texts) | set(probe.test_texts) if probe else set()
    # The JAX trainer's pipeline; batch(step) is its numpy batch before any device_put.
    pipeline = loop.build_pipeline(config, tokenizer, sharding.make_mesh(1, 1, _one_device()),
                                   held_out)
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
    flags.DEFINE_string("workdir", None, "Output folder (default workdir/torch_<method>).")
    flags.DEFINE_string("device", "cpu", "torch device.")
    flags.DEFINE_integer("threads", 0, "torch.set_num_threads (0: torch's default).")
    flags.mark_flags_as_required(["config"])
    app.run(main)


if __name__ == "__main__":
    _cli()
