"""Embeddings for the evaluation suite: pooled sentence vectors and span (word/aspect) vectors.

``Encoder`` wraps a ``Pretrained`` encoder, its parameters and tokenizer. Every forward pass is one
jitted function of fixed shape that returns both the pooled sentence vector and the mean of the
hidden states over a span of tokens, so the same call serves sentences (the span is ignored),
words (the span is every non-special sub-token) and aspects (the span is the aspect's tokens).

Texts are sorted by token count and each batch is padded to the next power of two (at least 8,
at most ``max_len``), not to ``max_len``: a word or a short sentence then costs a fraction of a
128-token pass, while the number of compiled shapes stays at a handful (one per length bucket).
Padding is masked out, so the result does not depend on the bucketing beyond float rounding.
Vectors are cached per (text, span), so tasks sharing texts (SST-2 and its few-shot runs) embed
them once.

This is the library's one embedder: the suite, the trainer's valence probe, the export check and
the benchmarks all embed through it (``embed_sentences`` for a one-off list of sentences).
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from softmcl_jax.models import Pretrained
from softmcl_jax.models.heads import POOLINGS, pool

log = logging.getLogger(__name__)

Span = tuple[int, int]  # character offsets [start, end) in the text
MIN_BUCKET = 8
IN_FLIGHT = 2  # batches dispatched ahead of the one the progress bar waits for


def _next_pow2(n: int) -> int:
    return 1 << max(0, int(n) - 1).bit_length()


def span_mean(hidden: jax.Array, span_mask: jax.Array) -> jax.Array:
    """Mean of ``hidden`` (B, L, H) over the positions where ``span_mask`` (B, L) is 1.

    An empty span gives 0 (the caller substitutes the sentence vector), never NaN.
    """
    m = span_mask.astype(jnp.float32)[..., None]
    return (hidden.astype(jnp.float32) * m).sum(axis=1) / jnp.maximum(m.sum(axis=1), 1.0)


# One jitted function per (module, pooling): re-jitting per call would recompile every shape on
# every task. Keyed by the Flax module (hashable, compares by architecture config); the cached
# closure holds a params-free copy of the Pretrained so it never pins a set of weights in memory.
_SPAN_EMBEDDERS: dict[tuple[Any, str], Callable[..., tuple[jax.Array, jax.Array]]] = {}


def _span_embedder(pretrained: Pretrained, pooling: str
                   ) -> Callable[..., tuple[jax.Array, jax.Array]]:
    key = (pretrained.module, pooling)
    fn = _SPAN_EMBEDDERS.get(key)
    if fn is None:
        shell = dataclasses.replace(pretrained, params={})

        def embed(params: Any, input_ids: jax.Array, attention_mask: jax.Array,
                  span_mask: jax.Array) -> tuple[jax.Array, jax.Array]:
            hidden = shell.encode(params, input_ids, attention_mask)
            return pool(hidden, attention_mask, pooling), span_mean(hidden, span_mask)

        fn = _SPAN_EMBEDDERS[key] = jax.jit(embed)
    return fn


def progress_bar(total: int, desc: str, enabled: bool) -> Any:
    """A tqdm bar on a terminal (None when disabled)."""
    if not enabled:
        return None
    from tqdm.auto import tqdm

    # disable=None: tqdm turns itself off when stderr is not a terminal (logs stay clean).
    return tqdm(total=total, desc=desc, unit="batch", disable=None, dynamic_ncols=True,
                leave=False)


class Encoder:
    """Frozen-encoder embeddings with length bucketing and a per-text cache.

    Args:
      pretrained: the encoder; its module is used, the weights are ``params``.
      params: encoder parameters (``pretrained.params`` or a trained state's).
      tokenizer: a transformers *fast* tokenizer (offsets are needed for aspect spans).
      pooling: "mean" (over the attention mask) or "cls", for the sentence vector.
      max_len: tokens per text, specials included; longer texts are truncated.
      batch_size: rows per forward pass (fewer for short lists: the next power of two).
      progress: show a progress bar over batches for lists of at least ``progress_min`` texts.
    """

    def __init__(self, pretrained: Pretrained, params: Any, tokenizer: Any, *,
                 pooling: str = "mean", max_len: int = 128, batch_size: int = 64,
                 progress: bool = True, progress_min: int = 1024):
        if pooling not in POOLINGS:
            raise ValueError(f"pooling must be one of {POOLINGS}, not {pooling!r}")
        if not getattr(tokenizer, "is_fast", False):
            raise ValueError("the evaluation suite needs a fast tokenizer (offset mapping)")
        self.pretrained, self.params, self.tokenizer = pretrained, params, tokenizer
        self.pooling, self.max_len, self.batch_size = pooling, max_len, batch_size
        self.progress, self.progress_min = progress, progress_min
        self.hidden_size = int(pretrained.config.hidden_size)
        self._fn = _span_embedder(pretrained, pooling)
        self._cache: dict[tuple[str, Any], tuple[np.ndarray, np.ndarray]] = {}
        self.empty_spans = 0  # aspects truncated away: their span vector is the sentence's

    # --- public ------------------------------------------------------------------------------

    def sentences(self, texts: Sequence[str], desc: str = "embed") -> np.ndarray:
        """Pooled sentence vectors (N, H), float32."""
        return self._embed(texts, [None] * len(texts), desc)[0]

    def words(self, words: Sequence[str], desc: str = "embed words") -> np.ndarray:
        """Word vectors (N, H): the word alone (with the model's special tokens) through the
        encoder, averaged over its sub-tokens (specials excluded), whatever ``pooling`` is."""
        return self._embed(words, ["all"] * len(words), desc)[1]

    def spans(self, texts: Sequence[str], spans: Sequence[Span], desc: str = "embed spans"
              ) -> tuple[np.ndarray, np.ndarray]:
        """(pooled sentence vectors, mean of the tokens overlapping each character span)."""
        return self._embed(texts, list(spans), desc)

    # --- the work ----------------------------------------------------------------------------

    def _span_masks(self, enc: Any, spans: Sequence[Any]) -> list[np.ndarray]:
        masks = []
        for i, span in enumerate(spans):
            special = np.asarray(enc["special_tokens_mask"][i], bool)
            if span is None:
                masks.append(np.zeros(len(special), np.int32))
            elif span == "all":
                masks.append((~special).astype(np.int32))
            else:
                start, end = span
                offsets = np.asarray(enc["offset_mapping"][i], np.int64).reshape(-1, 2)
                # A token belongs to the span when its characters overlap it; specials have
                # (0, 0) offsets and are excluded explicitly.
                inside = (offsets[:, 1] > start) & (offsets[:, 0] < end) & ~special
                masks.append(inside.astype(np.int32))
        return masks

    def _embed(self, texts: Sequence[str], spans: Sequence[Any], desc: str
               ) -> tuple[np.ndarray, np.ndarray]:
        texts = list(texts)
        keys = [(t, s) for t, s in zip(texts, spans, strict=True)]
        todo = list(dict.fromkeys(k for k in keys if k not in self._cache))
        if todo:
            self._compute(todo, desc)
        h = self.hidden_size
        sent = np.zeros((len(keys), h), np.float32)
        span = np.zeros((len(keys), h), np.float32)
        for i, k in enumerate(keys):
            sent[i], span[i] = self._cache[k]
        return sent, span

    def _compute(self, keys: list[tuple[str, Any]], desc: str) -> None:
        texts = [t for t, _ in keys]
        enc = self.tokenizer(texts, truncation=True, max_length=self.max_len,
                             return_attention_mask=True, return_special_tokens_mask=True,
                             return_offsets_mapping=True)
        span_masks = self._span_masks(enc, [s for _, s in keys])
        lengths = np.asarray([len(x) for x in enc["input_ids"]])
        order = np.argsort(lengths, kind="stable")
        n = len(keys)
        rows = min(self.batch_size, _next_pow2(n))
        pad_id = self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None else 0
        batches = [order[i:i + rows] for i in range(0, n, rows)]
        bar = progress_bar(len(batches), desc, self.progress and n >= self.progress_min)
        outs: list[tuple[jax.Array, jax.Array]] = []
        for b, idx in enumerate(batches):
            width = min(self.max_len, max(MIN_BUCKET, _next_pow2(int(lengths[idx].max()))))
            ids = np.full((rows, width), pad_id, np.int32)
            mask = np.zeros((rows, width), np.int32)
            smask = np.zeros((rows, width), np.int32)
            for r, j in enumerate(idx):
                L = lengths[j]
                ids[r, :L] = enc["input_ids"][j]
                mask[r, :L] = 1
                smask[r, :L] = span_masks[j]
            outs.append(self._fn(self.params, ids, mask, smask))
            if bar is not None and b >= IN_FLIGHT:
                # Wait for an older batch only: the device keeps IN_FLIGHT batches queued, and
                # the bar shows finished work rather than dispatched work.
                jax.block_until_ready(outs[b - IN_FLIGHT])
                bar.update(1)
        sent = np.asarray(jnp.concatenate([o[0] for o in outs]), np.float32)
        span = np.asarray(jnp.concatenate([o[1] for o in outs]), np.float32)
        if bar is not None:
            bar.update(len(batches) - bar.n)
            bar.close()
        for pos, j in enumerate(order):
            s_vec, p_vec = sent[pos], span[pos]
            if keys[j][1] is not None and span_masks[j].sum() == 0:
                # Nothing of the span survived truncation (or the word tokenised to nothing):
                # fall back to the sentence vector rather than a zero vector.
                self.empty_spans += 1
                p_vec = s_vec
            self._cache[keys[j]] = (s_vec, p_vec)


def embed_sentences(pretrained: Pretrained, params: Any, tokenizer: Any, texts: Sequence[str], *,
                    pooling: str = "mean", max_len: int = 128, batch_size: int = 64
                    ) -> np.ndarray:
    """Pooled sentence vectors (N, H), float32, of ``texts`` under ``params`` (no progress bar).

    A fresh ``Encoder`` per call: its cache belongs to one set of weights (the probe embeds the
    same texts before and after training). ``tokenizer`` may be a folder or hub id.
    """
    if isinstance(tokenizer, str):
        import transformers

        tokenizer = transformers.AutoTokenizer.from_pretrained(tokenizer)
    return Encoder(pretrained, params, tokenizer, pooling=pooling, max_len=max_len,
                   batch_size=batch_size, progress=False).sentences(list(texts))
