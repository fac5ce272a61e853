"""``run(config, workdir)``: data -> sharded state -> jitted steps -> checkpoints, metrics, export.

Restartable: a run resumes from the newest checkpoint in ``workdir`` (same command again), and
because data order, MLM masks and dropout are functions of (seed, step), the resumed run computes
exactly what an uninterrupted one would. SIGTERM (a preemption) saves a checkpoint, then exits.
"""

from __future__ import annotations

import logging
import os
import sys
import time
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections

from softmcl_jax import evaluate, methods, sharding, train
from softmcl_jax.checkpoint import Checkpointer, PreemptionGuard
from softmcl_jax.data import (
    MaskingConfig,
    Pipeline,
    encode_sentences,
    load_vader_sentences,
    sources,
)
from softmcl_jax.metrics import MetricWriter, ProgressBar
from softmcl_jax.models import from_pretrained, save_pretrained
from softmcl_jax.models.hf import resolve_name

log = logging.getLogger(__name__)

DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16}
CONFIG_FILE = "config.json"


def setup_model(config: ml_collections.ConfigDict):
    """(Pretrained encoder, its tokenizer, the method's Model with heads) from the config."""
    import transformers

    path = resolve_name(config.model.name_or_path)
    pretrained = from_pretrained(path, dtype=DTYPES[config.model.dtype],
                                 remat=config.model.remat, seed=config.seed)
    tokenizer = transformers.AutoTokenizer.from_pretrained(pretrained.tokenizer_path or path)
    model = methods.Model(pretrained, methods.make_heads(config, pretrained.config.hidden_size),
                          config.model.pooling)
    return pretrained, tokenizer, model


def checkpointer(config: ml_collections.ConfigDict, workdir: str) -> Checkpointer:
    directory = config.checkpoint_dir or os.path.join(os.path.abspath(workdir), "checkpoints")
    return Checkpointer(directory,
                        every_steps=config.checkpoint_every_steps, keep=config.keep_checkpoints,
                        async_save=config.async_checkpointing)


def _check(config: ml_collections.ConfigDict, mesh: jax.sharding.Mesh) -> None:
    if config.method not in methods.METHODS:
        raise ValueError(f"config.method={config.method!r} is not one of "
                         f"{sorted(methods.METHODS)}")
    shards = sharding.batch_size_per_axis(mesh)
    if config.batch_size % (shards * jax.process_count()) and config.batch_size % shards:
        raise ValueError(f"config.batch_size={config.batch_size} must be a multiple of the "
                         f"{shards} devices the batch is split over")
    if config.model.dtype not in DTYPES:
        raise ValueError(f"config.model.dtype={config.model.dtype!r} not in {sorted(DTYPES)}")


def probe_data(config: ml_collections.ConfigDict) -> evaluate.ProbeSplit:
    """Held-out VADER sentences for the valence probe (their texts are kept out of training)."""
    p = config.probe
    return evaluate.vader_probe_split(load_vader_sentences(), n_train=p.n_train, n_test=p.n_test,
                                      seed=p.seed)


def build_pipeline(config, tokenizer, mesh, exclude_texts: set[str]) -> Pipeline:
    d = config.data
    sentences = sources.load_sentences(d)
    if exclude_texts:
        before = len(sentences)
        sentences = [s for s in sentences if s.text not in exclude_texts]
        log.info("data: %d sentences held out for the valence probe", before - len(sentences))
    if d.max_examples:
        sentences = sentences[: d.max_examples]
    encoded = encode_sentences(
        sentences, tokenizer, sources.load_lexicon(d.lexicon), max_len=config.model.max_len,
        assign=d.assign, neutral_band=d.neutral_band)
    log.info("data: %d training sentences; %s", len(sentences), encoded.stats.summary())
    masking = (MaskingConfig.from_tokenizer(tokenizer, rate=d.mlm_rate,
                                            max_predictions=d.mlm_max_predictions)
               if d.mlm_rate > 0 else None)
    keys = set(methods.BATCH_KEYS[config.method]) - {"valid", "mlm_input_ids", "mlm_labels"}
    if masking is not None:
        keys.add("special_tokens_mask")
    arrays = {k: v for k, v in encoded.arrays.items() if k in keys}
    pipeline = Pipeline(arrays, global_batch_size=config.batch_size, seed=config.seed,
                        masking=masking, prefetch=d.prefetch,
                        sharding=sharding.batch_sharding(mesh))
    log.info("data: %s", pipeline.describe())
    return pipeline


def run_probe(config, pretrained, params, tokenizer, probe: evaluate.ProbeSplit) -> float:
    kw = dict(max_len=config.model.max_len, batch_size=config.probe.batch_size,
              pooling=config.model.pooling)
    x_tr = evaluate.embed_texts(pretrained, params, tokenizer, probe.train_texts, **kw)
    x_te = evaluate.embed_texts(pretrained, params, tokenizer, probe.test_texts, **kw)
    return evaluate.valence_probe(x_tr, probe.train_y, x_te, probe.test_y)


def run(config: ml_collections.ConfigDict, workdir: str) -> dict[str, Any]:
    """Train ``config.method`` in ``workdir`` (resuming if it holds checkpoints)."""
    os.makedirs(workdir, exist_ok=True)
    if jax.process_index() == 0:
        with open(os.path.join(workdir, CONFIG_FILE), "w") as f:
            f.write(config.to_json_best_effort(indent=2))  # for export.py and for the record
    mesh = sharding.make_mesh(config.mesh.data, config.mesh.fsdp)
    _check(config, mesh)
    pretrained, tokenizer, model = setup_model(config)

    probe = probe_data(config) if config.probe.enabled else None
    held_out = set(probe.train_texts) | set(probe.test_texts) if probe else set()
    pipeline = build_pipeline(config, tokenizer, mesh, held_out)

    host_state, abstract, shardings, step_fn = train.setup_step(model, config, mesh)
    ckpt = checkpointer(config, workdir)
    start = ckpt.latest_step() or 0
    if start:
        state = ckpt.restore(start, train.abstract_with_shardings(abstract, shardings))
        log.info("resumed from %s at step %d", ckpt.directory, start)
    else:
        state = train.place_state(host_state, shardings)
    del host_state
    log.info("mesh %s; state per device: %s", dict(mesh.shape), train.describe_sharding(state))
    keys = methods.BATCH_KEYS[config.method]

    chief = jax.process_index() == 0  # one host writes metrics, the export and the probe line
    writer = MetricWriter(workdir, active=chief)
    writer.truncate_after(start + 1)  # we log 1-based steps: keep 1..start
    result: dict[str, Any] = {"start_step": start}
    if probe is not None:
        result["probe_before"] = run_probe(config, pretrained, pretrained.params, tokenizer, probe)

    batches = pipeline.iterate(start_step=start)
    bar = ProgressBar(total=config.total_steps, initial=start, enabled=chief)
    step = start
    t0 = time.perf_counter()
    with PreemptionGuard() as guard:
        while step < config.total_steps:
            batch = next(batches)
            state, metrics = step_fn(state, {k: batch[k] for k in keys})
            step += 1
            if step % config.log_every_steps == 0 or step == config.total_steps:
                scalars = train.host_scalars(metrics)
                writer.write(step, scalars)
                bar.update(step, scalars)
            ckpt.save(step, state)
            if guard.should_stop(step):
                log.warning("preemption requested: saving step %d and exiting", step)
                ckpt.save(step, state, force=True)
                ckpt.wait()
                writer.close()
                sys.exit(0)
    bar.close()
    ckpt.save(step, state, force=True)
    ckpt.wait()
    writer.close()
    result["steps_per_s"] = (step - start) / max(time.perf_counter() - t0, 1e-9)

    encoder_params = state.params["encoder"]
    if jax.process_count() > 1:  # shards on other hosts are not addressable here
        from jax.experimental import multihost_utils

        encoder_params = multihost_utils.process_allgather(encoder_params, tiled=True)
    encoder_params = jax.device_get(encoder_params)
    if not chief:
        ckpt.close()
        return result
    if config.export.enabled:
        out = save_pretrained(pretrained, encoder_params, os.path.join(workdir, "export"))
        log.info("exported the encoder (Hugging Face format) to %s", out)
    if probe is not None:
        result["probe_after"] = run_probe(config, pretrained, encoder_params, tokenizer, probe)
        print(f"valence probe (held-out, Pearson r): before {result['probe_before']:.3f} "
              f"after {result['probe_after']:.3f}", flush=True)
    ckpt.close()
    return result
