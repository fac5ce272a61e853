"""``run(config, workdir)``: data -> sharded state -> jitted steps -> checkpoints, metrics, export.

Restartable: a run resumes from the newest checkpoint in ``workdir`` (same command again), and
because data order, MLM masks and dropout are functions of (seed, step), the resumed run computes
exactly what an uninterrupted one would. SIGTERM (a preemption) saves a checkpoint, then exits.
"""

from __future__ import annotations

import contextlib
import logging
import os
import sys
import time
from typing import Any

import jax
import ml_collections
import numpy as np

from softmcl_jax import config_check, grad_cache, objective, sharding, train
from softmcl_jax.checkpoint import Checkpointer, PreemptionGuard, non_finite_leaves
from softmcl_jax.data import (
    MaskingConfig,
    Pipeline,
    choose_rows_from_histograms,
    load_vader_sentences,
    prepare,
    prepared,
    rating_units,
)
from softmcl_jax.data.prepared import PreparedSource
from softmcl_jax.evaluation.embed import embed_sentences
from softmcl_jax.evaluation.probe import (
    ProbeSplit,
    similarity_kept,
    similarity_pairs,
    vader_probe_split,
    valence_probe,
)
from softmcl_jax.export_format import EXPORT_DIR, write_export, write_run_info
from softmcl_jax.metrics import MetricWriter, ProgressBar
from softmcl_jax.models import DTYPES, from_pretrained
from softmcl_jax.models.hf import check_length, resolve_name
from softmcl_jax.workdir import (
    WorkdirLock,
    check_checkpoint_dir,
    check_config,
    check_inputs,
    checkpoint_directory,
    has_progress,
    inputs_fingerprint,
    probe_fingerprint,
    tokenizer_fingerprint,
    write_config,
    write_inputs,
)

# What the end-of-run probe measures, in the run info and the model card.
PROBE_KEYS = ("probe_before", "probe_after", "probe_similarity_kept")

log = logging.getLogger(__name__)


def setup_model(config: ml_collections.ConfigDict, the_plan: objective.Plan | None = None):
    """(Pretrained encoder, its tokenizer, the Model with the plan's heads) from the config."""
    import transformers

    the_plan = objective.plan(config) if the_plan is None else the_plan
    path = resolve_name(config.model.name_or_path)
    pretrained = from_pretrained(path, dtype=DTYPES[config.model.dtype],
                                 remat=config.model.remat, seed=config.seed,
                                 dropout=config.model.dropout)
    # validate checks local models; a hub id's position table is known only now.
    check_length(pretrained.config, config.model.max_len,
                 f"config.model.max_len={config.model.max_len}")
    tokenizer = transformers.AutoTokenizer.from_pretrained(pretrained.tokenizer_path or path)
    return pretrained, tokenizer, objective.build_model(pretrained, the_plan, config)


def checkpointer(config: ml_collections.ConfigDict, workdir: str) -> Checkpointer:
    return Checkpointer(checkpoint_directory(config.checkpoint_dir, workdir),
                        every_steps=config.checkpoint_every_steps, keep=config.keep_checkpoints,
                        async_save=config.async_checkpointing)


def _check_mesh(config: ml_collections.ConfigDict, mesh: jax.sharding.Mesh) -> None:
    shards = sharding.batch_size_per_axis(mesh)
    if config.batch_size % (shards * jax.process_count()) and config.batch_size % shards:
        raise ValueError(f"config.batch_size={config.batch_size} must be a multiple of the "
                         f"{shards} devices the batch is split over")


def probe_data(config: ml_collections.ConfigDict) -> ProbeSplit:
    """Held-out VADER sentences for the valence probe (their texts are kept out of training)."""
    p = config.probe
    return vader_probe_split(load_vader_sentences(), n_train=p.n_train, n_test=p.n_test,
                             seed=p.seed)


def cache_dir(config: ml_collections.ConfigDict) -> str:
    """Where today's sources are prepared on first use: ``data.cache_dir``, else
    ``$SOFTMCL_CACHE_DIR``, else ``~/.cache/softmcl_jax/prepared``."""
    return (config.data.cache_dir or os.environ.get("SOFTMCL_CACHE_DIR")
            or os.path.join(os.path.expanduser("~"), ".cache", "softmcl_jax", "prepared"))


def data_sources(config: ml_collections.ConfigDict, tokenizer
                 ) -> tuple[list[PreparedSource], list[float]]:
    """The run's prepared folders and their weights, each checked against the run.

    ``data.mixture`` names folders and sources with weights; ``data.source="prepared"`` one
    folder (``data.path``); any other source is prepared into the cache on first use (the same
    path for 10^4 and 10^8 sentences), and so is each source entry of a mixture (its fields
    override ``config.data``'s: ``prepare.source_config``, the folder a run of that source alone
    prepares). A folder prepared with another tokenizer, ``max_len``, lexicon or probe split is
    refused, naming both values.
    """
    d = config.data
    if d.mixture:
        entries = [(e.folder if e.folder is not None
                    else prepare.cached(prepare.source_config(config, e.fields),
                                        cache_dir(config)), e.weight)
                   for e in config_check.mixture_entries(d.mixture, d)]
    elif d.source == "prepared":
        entries = [(d.path, 1.0)]
    else:
        entries = [(prepare.cached(config, cache_dir(config)), 1.0)]
    expected = prepared.identity(config, tokenizer)
    sources = []
    for path, _ in entries:
        source = PreparedSource(path)
        prepared.check_compatible(source.manifest, expected, path)
        sources.append(source)
    return sources, [w for _, w in entries]


def run_inputs(config: ml_collections.ConfigDict, tokenizer, sources: list[PreparedSource],
               probe: ProbeSplit | None) -> dict[str, Any]:
    """What the run computes from besides its config (``workdir.inputs_fingerprint``): the
    tokenizer, the probe's held-out texts (recorded here even where no folder records them) and
    each prepared folder's manifest."""
    return inputs_fingerprint(
        tokenizer_fingerprint(config.model.name_or_path, prepared.vocab_hash(tokenizer)),
        probe_fingerprint(probe.train_texts, probe.test_texts) if probe is not None else None,
        [s.manifest for s in sources])


def build_pipeline(config, tokenizer, mesh, the_plan: objective.Plan | None = None) -> Pipeline:
    """The training batches: prepared rows read through Grain, the arrays the plan reads,
    checked against what its terms need."""
    the_plan = objective.plan(config) if the_plan is None else the_plan
    d = config.data
    sources, weights = data_sources(config, tokenizer)
    for source in sources:
        log.info("data: %s: %d rows (%s)", source.path, len(source),
                 ", ".join(f"{k} {v}" for k, v in source.manifest["flags"].items()))
    objective.check_sources(the_plan, [(s.path, s.manifest) for s in sources], config)
    scales = None
    if d.rating_unit == "spread":
        scales = rating_units.spreads_of_manifests([s.manifest for s in sources])
        log.info("data: ratings in units of their spread (mean absolute difference on the "
                 "[0, 1] scale): %s", ", ".join(f"{k} {v:.4f}" for k, v in scales.items()))
    masking = (MaskingConfig.from_tokenizer(tokenizer, rate=d.mlm_rate,
                                            max_predictions=d.mlm_max_predictions)
               if d.mlm_rate > 0 else None)
    # The pipeline's outputs: what the plan reads, in the unpacked layout (it packs them itself).
    unpacked = {v: k for k, v in objective.PACKED.items()}
    keys = {unpacked.get(k, k) for k in the_plan.batch_keys} - {
        "mlm_input_ids", "mlm_labels", *objective.PACKING_KEYS}
    if masking is not None:
        keys.add("special_tokens_mask")
    devices = sharding.batch_size_per_axis(mesh)
    rows = None
    if d.packing:
        # Each device packs its own sentences into its own rows (no cross-device gathers).
        rows = d.packing_rows or choose_rows_from_histograms(
            [s.manifest["length_histogram"] for s in sources], weights,
            batch_size=config.batch_size, max_len=config.model.max_len, shards=devices,
            seed=config.seed, quantiles=tuple(d.packing_quantiles))
    pipeline = Pipeline(sources, weights=weights, global_batch_size=config.batch_size,
                        seed=config.seed, max_len=config.model.max_len,
                        pad_id=int(sources[0].manifest["pad_id"]), keys=keys, masking=masking,
                        prefetch=d.prefetch, workers=d.workers,
                        sharding=sharding.batch_sharding(mesh), packing_rows=rows,
                        packing_shards=devices // jax.process_count(),
                        bucket_lengths=tuple(d.bucket_lengths), rating_scales=scales)
    log.info("data: %s", pipeline.describe())
    return pipeline


def run_probe(config, pretrained, params, tokenizer, probe: ProbeSplit
              ) -> tuple[float, np.ndarray]:
    """Pearson r of the ridge valence probe on ``params``' sentence vectors (the suite's
    embedder, so the probe sees what ``evaluate`` and the export's ``encode()`` see), and the
    held-out test sentences' vectors (for ``similarity_kept``)."""
    kw = dict(max_len=config.model.max_len, batch_size=config.probe.batch_size,
              pooling=config.model.pooling)
    x_tr = embed_sentences(pretrained, params, tokenizer, probe.train_texts, **kw)
    x_te = embed_sentences(pretrained, params, tokenizer, probe.test_texts, **kw)
    return valence_probe(x_tr, probe.train_y, x_te, probe.test_y), x_te


def hardware() -> str:
    """What the run ran on, for the model card: e.g. "1 x cpu (cpu)", "8 x TPU v4 (tpu)"."""
    devices = jax.devices()
    return f"{len(devices)} x {devices[0].device_kind} ({devices[0].platform})"


class Diverged(RuntimeError):
    """A step's loss, gradient or update was not finite (and skipping was not allowed)."""


class FiniteWatch:
    """Every step's ``metrics["finite"]`` (train_step), read lazily: the flags are fetched at the
    logging and checkpoint steps and at the end, so checking every step costs no extra sync.

    The step never applies a non-finite update, so the state stays finite whatever happens; this
    decides whether the run stops (``Diverged``, naming the step and each term's value) or skips
    on, up to ``config.max_skipped_steps`` steps in the whole run (resumes included).
    """

    def __init__(self, max_skipped: int, skipped_before: int):
        self.max_skipped, self.skipped_before = max_skipped, skipped_before
        self.skipped: list[int] = []
        self._pending: list[tuple[int, dict[str, jax.Array]]] = []

    def add(self, step: int, metrics: dict[str, jax.Array]) -> None:
        self._pending.append((step, metrics))

    def check(self) -> None:
        pending, self._pending = self._pending, []
        rows = jax.device_get([m for _, m in pending])
        for (step, _), m in zip(pending, rows, strict=True):
            if bool(m["finite"]):
                continue
            values = ", ".join(f"{k}={float(v):.6g}" for k, v in sorted(m.items())
                               if k.startswith("loss") or k == "grad_norm")
            self.skipped.append(step)
            count = self.skipped_before + len(self.skipped)
            if count > self.max_skipped:
                raise Diverged(
                    f"step {step}: non-finite loss, gradient or update ({values}). Nothing of it "
                    "was applied, checkpointed or exported: the newest checkpoint holds the last "
                    f"finite state. {count} non-finite step(s) in this run; "
                    f"config.max_skipped_steps={self.max_skipped} allows skipping that many")
            log.warning("step %d: non-finite (%s): update skipped (%d of at most %d)", step,
                        values, count, self.max_skipped)


def run(config: ml_collections.ConfigDict, workdir: str) -> dict[str, Any]:
    """Train the objective of ``config`` in ``workdir`` (resuming if it holds checkpoints).

    Refused before anything is written: an invalid config, a workdir held by another trainer,
    a workdir holding a run with another config, a ``checkpoint_dir`` moved away from the run's
    checkpoints, a run resumed on other data, tokenizer or probe split than it was trained on.
    Raises ``Diverged`` when a step is not finite.
    """
    the_plan = config_check.validate(config)  # before anything is loaded or written
    log.info("%s", the_plan.describe())
    chief = jax.process_index() == 0  # one host writes the config, metrics, export, probe line
    created = not os.path.exists(workdir)
    os.makedirs(workdir, exist_ok=True)
    try:
        with contextlib.ExitStack() as stack:
            if chief:
                stack.enter_context(WorkdirLock(workdir))
            check_config(config, workdir)
            check_checkpoint_dir(config, workdir)
            return _run(config, workdir, the_plan, chief)
    except Exception:
        # A run refused before it wrote anything (bad data, a model it cannot load) leaves no
        # empty workdir behind; anything written in it stays for the record.
        if created and os.path.isdir(workdir) and not os.listdir(workdir):
            os.rmdir(workdir)
        raise


def _run(config: ml_collections.ConfigDict, workdir: str, the_plan: objective.Plan,
         chief: bool) -> dict[str, Any]:
    mesh = sharding.make_mesh(config.mesh.data, config.mesh.fsdp)
    _check_mesh(config, mesh)
    pretrained, tokenizer, model = setup_model(config, the_plan)

    probe = probe_data(config) if config.probe.enabled else None
    # The probe's sentences were left out of the data when it was prepared (the manifest says
    # which split; another split is refused).
    pipeline = build_pipeline(config, tokenizer, mesh, the_plan)
    # The config alone does not say what the steps so far were computed from: a data file
    # rewritten under the same path, another tokenizer under the same name.
    inputs = run_inputs(config, tokenizer, pipeline.sources, probe)
    check_inputs(inputs, workdir,
                 resuming=has_progress(workdir, checkpoint_directory(config.checkpoint_dir,
                                                                     workdir)))
    if chief:  # every check has passed
        write_inputs(inputs, workdir)
        write_config(config, workdir)

    init, abstract, shardings, step_fn = train.setup_step(model, config, mesh, the_plan)
    ckpt = checkpointer(config, workdir)
    restored = ckpt.restore_newest_good(train.abstract_with_shardings(abstract, shardings))
    if restored is not None:
        start, state = restored
        log.info("resumed from %s at step %d", ckpt.directory, start)
    else:
        start, state = 0, init()
    log.info("mesh %s; per device: %s", dict(mesh.shape),
             train.describe_sharding(state, step_fn.constants))
    if config.grad_cache.chunk:
        shards = sharding.batch_size_per_axis(mesh)
        log.info("gradient caching: each encoder pass in %d chunks of %d sentences per device "
                 "(of %d), activations kept for one chunk at a time",
                 grad_cache.num_chunks(config, shards), config.grad_cache.chunk,
                 config.batch_size // shards)
    keys = the_plan.batch_keys

    writer = MetricWriter(workdir, active=chief)
    writer.truncate_after(start + 1)  # we log 1-based steps: keep 1..start
    result: dict[str, Any] = {"start_step": start}
    if probe is not None:
        result["probe_before"], base_test_x = run_probe(config, pretrained, pretrained.params,
                                                        tokenizer, probe)

    watch = FiniteWatch(config.max_skipped_steps, int(jax.device_get(state.skipped)))
    batches = pipeline.iterate(start_step=start)
    bar = ProgressBar(total=config.total_steps, initial=start, enabled=chief)
    step = start
    t0 = time.perf_counter()
    try:
        with PreemptionGuard() as guard:
            while step < config.total_steps:
                batch = next(batches)
                state, metrics = step_fn(state, {k: batch[k] for k in keys})
                step += 1
                watch.add(step, metrics)
                if step % config.log_every_steps == 0 or step == config.total_steps:
                    watch.check()
                    scalars = train.host_scalars(metrics)
                    writer.write(step, scalars)
                    bar.update(step, scalars)
                if ckpt.should_save(step):
                    watch.check()
                ckpt.save(step, state)
                if guard.should_stop(step):
                    log.warning("preemption requested: saving step %d and exiting", step)
                    watch.check()
                    ckpt.save(step, state, force=True)
                    ckpt.wait()
                    writer.close()
                    sys.exit(0)
        watch.check()
        bar.close()
        ckpt.save(step, state, force=True)
    finally:
        ckpt.wait()  # in-flight saves hold finite states: let them land
        writer.close()
    result["steps_per_s"] = (step - start) / max(time.perf_counter() - t0, 1e-9)
    result["skipped_steps"] = watch.skipped
    if watch.skipped:
        log.warning("skipped %d non-finite step(s) in this run: %s", len(watch.skipped),
                    watch.skipped)

    encoder_params = state.params["encoder"]
    if jax.process_count() > 1:  # shards on other hosts are not addressable here
        from jax.experimental import multihost_utils

        encoder_params = multihost_utils.process_allgather(encoder_params, tiled=True)
    encoder_params = jax.device_get(encoder_params)
    if not chief:
        ckpt.close()
        return result
    bad = non_finite_leaves(encoder_params)
    if bad:  # cannot happen while train_step drops non-finite updates; never export one
        raise Diverged(f"the trained encoder holds non-finite values ({', '.join(bad[:3])}); "
                       "not exported")
    if probe is not None:
        result["probe_after"], test_x = run_probe(config, pretrained, encoder_params, tokenizer,
                                                  probe)
        pairs = similarity_pairs(base_test_x, seed=config.probe.seed)
        result["probe_similarity_kept"] = similarity_kept(base_test_x, test_x, pairs)
    # Measured before the export so the model card can state it.
    info = {"steps": step, "train_sentences": pipeline.num_examples, "hardware": hardware(),
            **{k: result[k] for k in PROBE_KEYS if k in result}}
    write_run_info(workdir, info)
    if config.export.enabled:
        out = write_export(pretrained, encoder_params, os.path.join(workdir, EXPORT_DIR), config,
                           info, workdir=workdir)
        log.info("exported the encoder (Hugging Face + sentence-transformers, model card) to %s",
                 out)
    if probe is not None:
        print(f"valence probe (held-out, Pearson r): before {result['probe_before']:.3f} "
              f"after {result['probe_after']:.3f}", flush=True)
        print("semantic similarity kept (Spearman vs the base encoder's own similarities on "
              f"held-out VADER pairs): {result['probe_similarity_kept']:.2f}", flush=True)
    ckpt.close()
    return result
