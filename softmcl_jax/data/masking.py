"""BERT-style masked-LM corruption, as a pure numpy function of (ids, seed, step, process).

    masked, labels = mask_tokens(ids, special, mask_token_id=103, vocab_size=30522,
                                 special_ids=(0, 100, 101, 102, 103), seed=0, step=s,
                                 process_index=jax.process_index())

Each non-special, non-padding token is selected independently with probability ``rate``
(Bernoulli, as transformers' ``DataCollatorForLanguageModeling``, so the count per batch varies).
A selected token is replaced by the mask token with probability 0.8, by a random token with 0.1,
and left unchanged with 0.1; its label is the original id. Unselected tokens get label -100
(``losses.masked_lm_loss``'s ``ignore_index``).

``max_predictions`` > 0 caps the selected tokens per row (BERT's ``max_predictions_per_seq``):
a row with more keeps the ones with the smallest selection draws (a uniformly random subset) and
the others stay unselected and uncorrupted. Rows under the cap are exactly what they are without
it. The cap is what lets the train step compute MLM logits at a fixed number of positions per
row instead of at every position (``models.heads.scored_positions``).

Random replacements are drawn uniformly from ``[0, vocab_size)`` minus ``special_ids`` (and the
mask token): a random [CLS], [SEP] or [PAD] in mid-sentence would be a signal the model never
sees at fine-tuning time, and a random [MASK] would turn the 10% "random" case into the 80% one.
``vocab_size`` should be the tokenizer's length (``len(tokenizer)``), not the model's embedding
rows, which some checkpoints pad beyond any id the tokenizer produces.

The randomness is a function of ``(seed, step, process_index)`` only (a ``SeedSequence`` on
exactly those three numbers, in a stream of its own), so a resumed run re-creates the same masks
and each host masks its own shard differently.

**Row blocks.** The draws (:func:`draw_masks`) are made for the whole (B, L) batch and every
decision is within a row (:func:`apply_masks`), so a block of rows can be masked from its rows
alone (:func:`mask_token_rows`): the input pipeline draws the global batch's masks from
``(seed, step)`` on every process and applies them to that process's rows only, which makes the
global batch's masks independent of the number of processes without any process reading
another's rows.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Sequence
from typing import Any

import numpy as np

IGNORE_INDEX = -100
# Distinguishes the masking stream from the shuffling streams (mixture.py) for equal numbers.
MASK_STREAM = 0x4D4C4D  # "MLM"


@dataclasses.dataclass(frozen=True)
class MaskingConfig:
    """What the pipeline needs to mask a batch; build it with :meth:`from_tokenizer`."""

    mask_token_id: int
    vocab_size: int
    special_ids: tuple[int, ...] = ()
    rate: float = 0.15
    mask_fraction: float = 0.8
    random_fraction: float = 0.1
    max_predictions: int = 0  # per row; 0 = no cap

    @classmethod
    def from_tokenizer(cls, tokenizer: Any, **kwargs: Any) -> MaskingConfig:
        """Mask id, ``len(tokenizer)`` and ``all_special_ids`` from a transformers tokenizer."""
        if tokenizer.mask_token_id is None:
            raise ValueError(f"{type(tokenizer).__name__} has no mask token")
        return cls(mask_token_id=int(tokenizer.mask_token_id), vocab_size=len(tokenizer),
                   special_ids=tuple(int(i) for i in tokenizer.all_special_ids), **kwargs)


@functools.lru_cache(maxsize=8)
def _replacement_ids(vocab_size: int, excluded: tuple[int, ...]) -> np.ndarray:
    allowed = np.setdiff1d(np.arange(vocab_size, dtype=np.int32), np.asarray(excluded, np.int32))
    if allowed.size == 0:
        raise ValueError("no token id left for random replacement")
    allowed.setflags(write=False)
    return allowed


@dataclasses.dataclass(frozen=True)
class MaskDraws:
    """Every random number one masking uses, for each position of a (B, L) batch:
    ``u_select`` and ``u_action`` (B, L) float64 uniforms on [0, 1) and ``random_ids`` (B, L)
    the replacement id each position would get. Rows of it are the draws of those rows."""

    u_select: np.ndarray
    u_action: np.ndarray
    random_ids: np.ndarray

    def rows(self, start: int, stop: int) -> MaskDraws:
        """The draws of rows ``[start, stop)``."""
        return MaskDraws(self.u_select[start:stop], self.u_action[start:stop],
                         self.random_ids[start:stop])


def _check_rates(rate: float, mask_fraction: float, random_fraction: float,
                 max_predictions: int) -> None:
    if not 0.0 <= rate <= 1.0:
        raise ValueError(f"rate must be in [0, 1], got {rate}")
    if mask_fraction < 0 or random_fraction < 0 or mask_fraction + random_fraction > 1:
        raise ValueError("mask_fraction and random_fraction must be >= 0 and sum to <= 1")
    if max_predictions < 0:
        raise ValueError(f"max_predictions must be >= 0 (0: no cap), got {max_predictions}")


def draw_masks(shape: tuple[int, int], *, mask_token_id: int, vocab_size: int, seed: int,
               step: int, process_index: int, special_ids: Sequence[int] = ()) -> MaskDraws:
    """The draws of :func:`mask_tokens` for a batch of ``shape`` (B, L), from
    ``(seed, step, process_index)`` alone. Everything is drawn for every position (not just the
    eligible ones), so a row's masks do not depend on the other rows' padding, and the draws of
    rows ``[a, b)`` are ``draw_masks((B, L), ...).rows(a, b)`` whoever holds the other rows."""
    rng = np.random.default_rng(
        np.random.SeedSequence([seed, step, process_index], spawn_key=(MASK_STREAM,)))
    u_select = rng.random(shape)
    u_action = rng.random(shape)
    allowed = _replacement_ids(int(vocab_size), tuple(sorted({*map(int, special_ids),
                                                               int(mask_token_id)})))
    random_ids = allowed[rng.integers(0, allowed.size, size=shape)]
    return MaskDraws(u_select, u_action, random_ids)


def apply_masks(
    input_ids: np.ndarray,
    special_mask: np.ndarray,
    draws: MaskDraws,
    *,
    mask_token_id: int,
    rate: float = 0.15,
    mask_fraction: float = 0.8,
    random_fraction: float = 0.1,
    max_predictions: int = 0,
) -> tuple[np.ndarray, np.ndarray]:
    """:func:`mask_tokens`' decisions on rows whose draws are given: every decision is within
    a row (selection, the per-row cap, the action), so any block of rows can be masked on its
    own with its rows of the draws. Shapes: ``input_ids``, ``special_mask`` and the draws
    (b, L); returns (masked_ids (b, L), mlm_labels (b, L) int32)."""
    _check_rates(rate, mask_fraction, random_fraction, max_predictions)
    input_ids = np.asarray(input_ids)
    special_mask = np.asarray(special_mask, bool)
    if special_mask.shape != input_ids.shape:
        raise ValueError(f"special_mask shape {special_mask.shape} != ids {input_ids.shape}")
    if draws.u_select.shape != input_ids.shape:
        raise ValueError(f"draws of shape {draws.u_select.shape} for ids {input_ids.shape}")
    u_select, u_action = draws.u_select, draws.u_action
    selected = (u_select < rate) & ~special_mask
    if max_predictions and input_ids.ndim and input_ids.shape[-1] > max_predictions:
        # Rank of each selected token's draw within its row; unselected rank last.
        order = np.argsort(np.where(selected, u_select, np.inf), axis=-1, kind="stable")
        rank = np.empty_like(order)
        np.put_along_axis(rank, order, np.broadcast_to(np.arange(order.shape[-1]), order.shape),
                          axis=-1)
        selected &= rank < max_predictions
    to_mask = selected & (u_action < mask_fraction)
    to_random = selected & (u_action >= mask_fraction) & (u_action < mask_fraction
                                                           + random_fraction)
    masked = np.where(to_mask, mask_token_id, input_ids)
    masked = np.where(to_random, draws.random_ids, masked).astype(input_ids.dtype)
    labels = np.where(selected, input_ids, IGNORE_INDEX).astype(np.int32)
    return masked, labels


def mask_tokens(
    input_ids: np.ndarray,
    special_mask: np.ndarray,
    *,
    mask_token_id: int,
    vocab_size: int,
    seed: int,
    step: int,
    process_index: int,
    rate: float = 0.15,
    special_ids: Sequence[int] = (),
    mask_fraction: float = 0.8,
    random_fraction: float = 0.1,
    max_predictions: int = 0,
) -> tuple[np.ndarray, np.ndarray]:
    """Corrupt ``input_ids`` for masked-LM training.

    Args:
      input_ids: (B, L) integer ids.
      special_mask: (B, L) bool, True at special tokens *and padding*; these are never selected.
      mask_token_id: the [MASK] id.
      vocab_size: random replacements are drawn from ``[0, vocab_size)`` ...
      special_ids: ... minus these ids and ``mask_token_id``.
      seed, step, process_index: the only source of randomness (non-negative ints).
      rate: probability that an eligible token is selected.
      mask_fraction, random_fraction: of the selected tokens, the share replaced by [MASK] and
        by a random id; the rest stay unchanged.
      max_predictions: at most this many selected tokens per row (0: no cap).
    Returns:
      (masked_ids (B, L) same dtype as ``input_ids``, mlm_labels (B, L) int32 with the original
      id where selected and -100 elsewhere).
    """
    _check_rates(rate, mask_fraction, random_fraction, max_predictions)
    input_ids = np.asarray(input_ids)
    special_mask = np.asarray(special_mask, bool)
    if special_mask.shape != input_ids.shape:
        raise ValueError(f"special_mask shape {special_mask.shape} != ids {input_ids.shape}")
    draws = draw_masks(input_ids.shape, mask_token_id=mask_token_id, vocab_size=vocab_size,
                       seed=seed, step=step, process_index=process_index,
                       special_ids=special_ids)
    return apply_masks(input_ids, special_mask, draws, mask_token_id=mask_token_id, rate=rate,
                       mask_fraction=mask_fraction, random_fraction=random_fraction,
                       max_predictions=max_predictions)


def mask_token_rows(
    input_ids: np.ndarray,
    special_mask: np.ndarray,
    *,
    row_start: int,
    global_batch_size: int,
    mask_token_id: int,
    vocab_size: int,
    seed: int,
    step: int,
    process_index: int = 0,
    rate: float = 0.15,
    special_ids: Sequence[int] = (),
    mask_fraction: float = 0.8,
    random_fraction: float = 0.1,
    max_predictions: int = 0,
) -> tuple[np.ndarray, np.ndarray]:
    """The row-block form: rows ``[row_start, row_start + b)`` of :func:`mask_tokens` on a
    (``global_batch_size``, L) batch, from those rows alone. ``input_ids`` and
    ``special_mask`` are the block's (b, L); the result equals rows ``[row_start,
    row_start + b)`` of ``mask_tokens`` on the whole batch with the same arguments, so each
    process masks its own rows of a global batch exactly as a single process would mask them
    (the draws are made for the whole (B, L) shape, the decisions for the block's rows only).
    """
    _check_rates(rate, mask_fraction, random_fraction, max_predictions)
    input_ids = np.asarray(input_ids)
    b, length = input_ids.shape
    if row_start < 0 or row_start + b > global_batch_size:
        raise ValueError(f"rows [{row_start}, {row_start + b}) outside a global batch of "
                         f"{global_batch_size}")
    draws = draw_masks((global_batch_size, length), mask_token_id=mask_token_id,
                       vocab_size=vocab_size, seed=seed, step=step, process_index=process_index,
                       special_ids=special_ids)
    return apply_masks(input_ids, special_mask, draws.rows(row_start, row_start + b),
                       mask_token_id=mask_token_id, rate=rate, mask_fraction=mask_fraction,
                       random_fraction=random_fraction, max_predictions=max_predictions)
