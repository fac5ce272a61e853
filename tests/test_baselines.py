"""The PyTorch baselines (baselines/torch_train.py) take the JAX trainer's steps.

Parity: same initial weights (the JAX params exported to a transformers folder, the JAX heads
copied), the same pipeline batches, dropout off (the frameworks cannot draw the same dropout
masks), 5 steps of each preset -> losses within 1e-4 relative at every step; params and queues
after the 5 steps compared loosely as a diagnostic.
"""

from __future__ import annotations

import json
import os
import time

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
import pytest
import torch
import transformers
from flax import traverse_util

from baselines import torch_train as tt
from softmcl_jax import loop, objective, sharding, train
from softmcl_jax.data import load_vader_sentences
from softmcl_jax.models import from_pretrained, save_pretrained
from softmcl_jax.models.heads import MLPHead, gather_words, pool
from softmcl_jax.models.hf import export_state_dict
from tests import train_utils as tu

STEPS = 5
LOSS_RTOL = 1e-4
PARAM_RTOL = 1e-3  # diagnostic: ||p_jax - p_torch|| / ||p_jax|| per tensor after STEPS updates
TINY = {
    "batch_size": 8, "total_steps": 12, "model.max_len": 32, "data.max_examples": 64,
    "head.dim": 16, "optimizer.warmup_steps": 2, "optimizer.learning_rate": 1e-3,
    "probe.enabled": False, "data.prefetch": 0,
    # The PyTorch baseline pads each sentence; the packed step's equality with the unpacked one
    # is tests/test_packing.py's.
    "data.packing": False,
}
# Queues of 2 batches: they fill, then wrap within the 5 steps. A cap of 3 MLM targets binds on
# the longer sentences, so JAX's logits-at-3-positions meet PyTorch's logits everywhere.
SOFTMCL = {"objective.soft_sentence.queue_size": 16, "objective.soft_word.queue_size": 64,
           "data.mlm_max_predictions": 3}
PRESETS = ["softmcl", "simcse", "softcse", "retrofit", "lcl"]


load_config = tu.load_config


# ------------------------------------------------------------------------ fast: the pieces


@pytest.mark.parametrize("fields", [
    {},
    {"optimizer.warmup_steps": 0},
    {"optimizer.end_learning_rate": 1e-5, "total_steps": 7, "optimizer.warmup_steps": 3},
    {"total_steps": 2, "optimizer.warmup_steps": 5},  # decay_steps = warmup + 1
    {"optimizer.decay": "linear"},
    {"optimizer.decay": "linear", "optimizer.warmup_steps": 0},
    {"optimizer.decay": "linear", "optimizer.end_learning_rate": 1e-5, "total_steps": 7,
     "optimizer.warmup_steps": 3},
])
def test_learning_rate_is_the_optax_schedule(fields):
    config = load_config("simcse", **fields)
    _, schedule = train.make_optimizer(config)
    ours = np.array([tt.learning_rate(s, config) for s in range(40)])
    theirs = np.array([float(schedule(s)) for s in range(40)])
    np.testing.assert_allclose(ours, theirs, rtol=2e-6, atol=1e-12)


def test_linear_decay_is_the_glue_recipe():
    """optimizer.decay="linear" (configs/finetune.py): 0 -> peak over the warm-up, then a
    straight line to end_learning_rate at total_steps, where it stays (closed form)."""
    config = load_config("simcse", **{"optimizer.decay": "linear", "total_steps": 100,
                                      "optimizer.warmup_steps": 10,
                                      "optimizer.learning_rate": 2e-5,
                                      "optimizer.end_learning_rate": 0.0})
    _, schedule = train.make_optimizer(config)
    got = {s: float(schedule(s)) for s in (0, 5, 10, 55, 100, 120)}
    want = {0: 0.0, 5: 1e-5, 10: 2e-5, 55: 1e-5, 100: 0.0, 120: 0.0}
    assert got == pytest.approx(want, abs=1e-12)


def test_optimizer_is_optax_adamw_with_clipping():
    """Clip + AdamW + schedule + decay mask against optax's chain on random gradients."""
    config = load_config("simcse", **{"optimizer.learning_rate": 1e-2,
                                      "optimizer.weight_decay": 0.1, "optimizer.warmup_steps": 2,
                                      "total_steps": 10})
    rng = np.random.default_rng(0)
    shapes = {"w": (6, 5), "b": (5,), "e": (3, 4, 2)}
    init = {k: rng.normal(size=s).astype(np.float32) for k, s in shapes.items()}
    tx, _ = train.make_optimizer(config)
    params, opt_state = {k: jnp.asarray(v) for k, v in init.items()}, None
    opt_state = tx.init(params)
    torch_params = {k: torch.nn.Parameter(torch.tensor(v)) for k, v in init.items()}
    opt = tt.make_optimizer(torch_params.values(), config)
    for step in range(10):
        # Large gradients on even steps (clipped), small on odd ones (not clipped).
        scale = 10.0 if step % 2 == 0 else 0.01
        grads = {k: (scale * rng.normal(size=s)).astype(np.float32) for k, s in shapes.items()}
        updates, opt_state = tx.update({k: jnp.asarray(g) for k, g in grads.items()}, opt_state,
                                       params)
        params = optax.apply_updates(params, updates)
        for k, p in torch_params.items():
            p.grad = torch.tensor(grads[k])
        tt.clip_by_global_norm_([p.grad for p in torch_params.values()],
                                config.optimizer.clip_norm)
        for g in opt.param_groups:
            g["lr"] = tt.learning_rate(step, config)
        opt.step()
    for k in shapes:
        np.testing.assert_allclose(torch_params[k].detach().numpy(), np.asarray(params[k]),
                                   rtol=1e-5, atol=1e-6, err_msg=k)


def test_heads_pool_and_word_gathering_match_jax():
    rng = np.random.default_rng(1)
    hidden = rng.normal(size=(3, 7, 8)).astype(np.float32)
    mask = (np.arange(7)[None] < np.array([[7], [4], [2]])).astype(np.int32)
    flags = rng.random((3, 7)) < 0.4
    flags[2] = False  # a row with no flagged token: all its slots invalid
    th, tm, tf = torch.tensor(hidden), torch.tensor(mask), torch.tensor(flags)
    for how in ("mean", "cls"):
        np.testing.assert_allclose(tt.pool(th, tm, how).numpy(), pool(hidden, mask, how),
                                   rtol=1e-6)
    for a, b in zip(tt.gather_words(th, tf, 3), gather_words(hidden, flags, 3), strict=True):
        np.testing.assert_array_equal(a.numpy(), np.asarray(b))
    for hid in (0, 8):
        flax_head = MLPHead(out=5, hidden=hid)
        params = flax_head.init(jax.random.key(0), jnp.zeros((1, 8)))["params"]
        head = tt.MLPHead(8, 5, hid)
        head.load_flax(params)
        x = rng.normal(size=(4, 8)).astype(np.float32)
        np.testing.assert_allclose(head(torch.tensor(x)).detach().numpy(),
                                   flax_head.apply({"params": params}, x), rtol=1e-5, atol=1e-6)


# ------------------------------------------------------------------- slow: 5 steps of each


@pytest.fixture(scope="module")
def dropout_free_model(tmp_path_factory) -> str:
    """The tiny random BERT (MiniLM's vocabulary and tokenizer) with every dropout rate 0."""
    folder = tu.tiny_model_dir(str(tmp_path_factory.mktemp("tiny_bert_nodrop")))
    path = os.path.join(folder, "config.json")
    with open(path) as f:
        cfg = json.load(f)
    cfg.update(hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)
    with open(path, "w") as f:
        json.dump(cfg, f, indent=2)
    return folder


def _labelled_file(path: str, fmt: str, n: int = 64) -> str:
    """Made-up 4-class labels (valence quartiles) on VADER tweets, in a reader's format."""
    with open(path, "w") as f:
        for i, s in enumerate(load_vader_sentences(("tweets",))[:n]):
            label = min(int(s.valence * 4), 3)
            text = " ".join(s.text.split())
            f.write(f"{text}\t{label}\tid{i}\n" if fmt == "goemotions" else f"{label} {text}\n")
    return path


def preset_config(preset: str, tmp_path) -> ml_collections.ConfigDict:
    fields = dict(TINY, **(SOFTMCL if preset == "softmcl" else {}))
    if preset == "retrofit":
        fields.update({"data.num_labels": 4,
                       "data.path": _labelled_file(str(tmp_path / "go.tsv"), "goemotions")})
    if preset == "lcl":
        fields.update({"data.num_labels": 4,
                       "data.path": _labelled_file(str(tmp_path / "sst.txt"), "sst")})
    return load_config(preset, **fields)


def _rel(a: float, b: float) -> float:
    return abs(a - b) / max(abs(b), 1e-12)


def _norm_rel(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.linalg.norm(a - b) / max(np.linalg.norm(b), 1e-12))


def test_preset_of_reads_the_active_terms():
    for preset in PRESETS:
        assert tt.preset_of(load_config(preset)) == preset
    no_mlm = load_config("softmcl", **{"objective.mlm.weight": 0.0})
    assert tt.preset_of(no_mlm) == "softmcl" and not tt.mlm_on(no_mlm)
    with pytest.raises(ValueError, match=r"five presets only.*\['infonce', 'vsp'\]"):
        tt.preset_of(load_config("simcse", **{"objective.vsp.weight": 1.0}))
    with pytest.raises(ValueError, match=r"config.objective.infonce.key='ema/clean'"):
        tt.preset_of(load_config("simcse", **{"objective.infonce.key": "ema/clean"}))
    with pytest.raises(ValueError, match=r"config.objective.lcl.head='emotion'"):
        tt.preset_of(load_config("lcl", **{"objective.lcl.head": "emotion"}))
    with pytest.raises(ValueError, match=r"config.objective.vsp.weight_end is set: the PyTorch "
                                         r"baseline has constant term weights only"):
        tt.preset_of(load_config("retrofit", **{"objective.vsp.weight_end": 0.0}))


@pytest.mark.slow
@pytest.mark.parametrize("preset", PRESETS)
def test_torch_baseline_takes_the_jax_steps(preset, dropout_free_model, tmp_path):
    t0 = time.perf_counter()
    config = preset_config(preset, tmp_path)
    assert tt.preset_of(config) == preset
    mlm_layout = tt.mlm_on(config)
    the_plan = objective.plan(config)

    # JAX: what loop.run does, on one device.
    pretrained = from_pretrained(dropout_free_model, seed=config.seed)
    tokenizer = transformers.AutoTokenizer.from_pretrained(dropout_free_model)
    model = objective.build_model(pretrained, the_plan, config)
    mesh = sharding.make_mesh(1, 1, jax.devices()[:1])
    init_fn, _, _, step_fn = train.setup_step(model, config, mesh)
    state = init_fn()
    # Copies, taken before the first step: the step donates the state.
    init = jax.tree.map(np.array, jax.device_get(state.params))
    torch_dir = save_pretrained(pretrained, init["encoder"], str(tmp_path / "torch_init"),
                                with_mlm_head=mlm_layout)
    pipeline = loop.build_pipeline(config, tokenizer, mesh)
    keys = the_plan.batch_keys
    assert set(tt.batch_keys(config, preset)) <= set(keys)
    batches = [{k: pipeline.batch(s)[k] for k in keys} for s in range(STEPS)]
    jax_metrics = []
    for b in batches:
        state, m = step_fn(state, b)
        jax_metrics.append(train.host_scalars(m))

    if preset == "softmcl":
        targets = [(b["mlm_labels"] != -100).sum(1) for b in batches]
        assert max(int(t.max()) for t in targets) == 3  # the cap binds in these batches
        assert all(m["mlm_left_out"] == 0 for m in jax_metrics)

    # PyTorch, from the same weights and on the same batches.
    trainer = tt.TorchTrainer(config, torch_dir, init_heads_from=init["heads"])
    torch_metrics = [trainer.step(b) for b in batches]

    names = sorted(set(jax_metrics[0]) & set(torch_metrics[0]))
    worst = {n: max(_rel(t[n], j[n]) for t, j in zip(torch_metrics, jax_metrics, strict=True))
             for n in names}
    per_step = [_rel(t["loss"], j["loss"]) for t, j in zip(torch_metrics, jax_metrics,
                                                           strict=True)]
    # rows/<term> and sentences are counts of the batch's rows, not computations to compare
    # (test_objective checks them against hand counts); the PyTorch baseline does not log them.
    jax_only = {"mlm_left_out", "sentences"} | {n for n in jax_metrics[0] if n.startswith("rows/")}
    assert set(jax_metrics[0]) - jax_only == set(torch_metrics[0]), (
        sorted(jax_metrics[0]), sorted(torch_metrics[0]))
    print(f"\n{preset}: losses JAX {[round(m['loss'], 5) for m in jax_metrics]}")
    print(f"{preset}: loss relative difference per step "
          f"{[f'{r:.1e}' for r in per_step]}; max over steps per metric: "
          + ", ".join(f"{n} {r:.1e}" for n, r in worst.items()))

    # Diagnostic: parameters (and for SoftMCL the queues) after the 5 updates.
    params = jax.device_get(state.params)
    ours = trainer.state_dict_numpy()
    theirs = {f"encoder.{k}": v for k, v in export_state_dict(
        pretrained, params["encoder"], with_mlm_head=mlm_layout).items()}
    for path, v in traverse_util.flatten_dict(params["heads"]).items():
        name = ".".join(("heads", *path[:-1], "weight" if path[-1] == "kernel" else "bias"))
        theirs[name] = v.T if path[-1] == "kernel" else v
    assert set(theirs) <= set(ours), sorted(set(theirs) - set(ours))
    common = sorted(theirs)
    param_rel = {k: _norm_rel(ours[k], np.asarray(theirs[k])) for k in common}
    worst_param = max(param_rel, key=param_rel.get)
    extra = ""
    if preset == "softmcl":
        assert set(trainer.queues) == set(state.queues) == {"soft_sentence", "soft_word"}
        for name, q in trainer.queues.items():
            jq = state.queues[name]
            assert q.ptr == int(jq.ptr)
            assert tuple(q.values.shape) == jq.values.shape
            np.testing.assert_array_equal(q.valid.numpy(), np.asarray(jq.valid))
            extra += (f", queue {name} keys {_norm_rel(q.keys.numpy(), np.asarray(jq.keys)):.1e}"
                      f" values {_norm_rel(q.values.numpy(), np.asarray(jq.values)):.1e}")
    print(f"{preset}: params after {STEPS} steps, max ||Δ||/||p|| {param_rel[worst_param]:.1e} "
          f"({worst_param}){extra}; {time.perf_counter() - t0:.1f} s")

    assert max(per_step) <= LOSS_RTOL, (per_step, jax_metrics, torch_metrics)
    assert worst["learning_rate"] <= 1e-6
    assert param_rel[worst_param] <= PARAM_RTOL, worst_param
