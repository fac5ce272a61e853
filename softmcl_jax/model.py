"""The trained model: a pretrained encoder plus named MLP heads.

Parameters are ``{"encoder": ..., "heads": {name: ...}}``; which heads exist is the objective's
plan's business (``objective.plan(config).heads``), not this module's.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import jax
import jax.numpy as jnp

from softmcl_jax.models import Pretrained
from softmcl_jax.models.heads import MLPHead, pool


@dataclasses.dataclass(frozen=True)
class Model:
    """The encoder plus named heads."""

    pretrained: Pretrained
    heads: dict[str, MLPHead]
    pooling: str

    def init_heads(self, rng: jax.Array) -> dict[str, Any]:
        width = self.pretrained.config.hidden_size
        x = jnp.zeros((1, width), jnp.float32)
        # One key per head in name order, so a head's initial weights depend only on the seed
        # and the set of heads.
        keys = jax.random.split(rng, max(len(self.heads), 1))
        return {name: head.init(k, x)["params"]
                for (name, head), k in zip(sorted(self.heads.items()), keys, strict=False)}

    def forward(self, params: Any, input_ids: jax.Array, attention_mask: jax.Array, *,
                train: bool, rng: jax.Array | None, mlm: bool = False,
                mlm_positions: jax.Array | None = None, segment_ids: jax.Array | None = None,
                mlm_rows: jax.Array | None = None,
                token_type_ids: jax.Array | None = None) -> dict[str, jax.Array]:
        """The encoder's outputs: ``last_hidden_state`` (B, L, H) and, with ``mlm``, ``logits``.

        Packed rows: ``segment_ids`` (B, L) (0 = padding) masks attention to each segment and
        restarts positions; ``mlm_rows`` (S,) with ``mlm_positions`` (S, M) picks the MLM
        positions of sentence ``s`` in row ``mlm_rows[s]``. ``token_type_ids`` (B, L): text
        pairs' segments (None: all 0, single texts).
        """
        rngs = {"dropout": rng} if train else None
        kw = {} if mlm_positions is None else {"mlm_positions": mlm_positions}
        if segment_ids is not None:
            kw["segment_ids"] = segment_ids
        if mlm_rows is not None:
            kw["mlm_rows"] = mlm_rows
        return self.pretrained.module.apply(
            {"params": params["encoder"]}, input_ids, attention_mask, token_type_ids,
            train=train, mlm=mlm, rngs=rngs, **kw)

    def mlm_head(self, params: Any, at: jax.Array) -> jax.Array:
        """The encoder's MLM logits (..., V) of token vectors ``at`` (..., H) computed elsewhere
        (gradient caching runs the encoder and this head chunk by chunk)."""
        return self.pretrained.module.apply({"params": params["encoder"]}, None, None,
                                            mlm=True, encoder_output=at)["logits"]

    def head(self, params: Any, name: str, x: jax.Array) -> jax.Array:
        return self.heads[name].apply({"params": params["heads"][name]}, x)

    def pool(self, hidden: jax.Array, attention_mask: jax.Array) -> jax.Array:
        """(B, L, H) -> (B, H) sentence vectors in fp32, by ``model.pooling``."""
        return pool(hidden, attention_mask, self.pooling)
