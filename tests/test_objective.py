"""The objective as data: the plan derived from the terms, validation, passes run once, and mixes
that no preset has training every one of their terms."""

from __future__ import annotations

import os
import runpy
import subprocess
import sys
import textwrap

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import transformers

from softmcl_jax import config_check, loop, objective, sharding, train
from softmcl_jax.data import load_vader_sentences
from softmcl_jax.data.rows import decode_row, pad_rows
from softmcl_jax.model import Model
from softmcl_jax.terms import TERMS
from tests import train_utils as tu

preset = tu.load_config


# ------------------------------------------------------------------------------- the plan


@pytest.mark.parametrize("name,terms,passes,heads,ema,frozen,queues,extra_keys", [
    ("softmcl", ("soft_sentence", "soft_word", "mlm"), ("online/masked", "ema/clean"),
     ("sentence", "word"), True, False, {"soft_sentence": 1024, "soft_word": 4096},
     {"mlm_input_ids", "mlm_labels", "sentence_valence", "token_valence",
      "token_valence_mask"}),
    ("simcse", ("infonce",), ("online/clean",), ("projection",), False, False, {}, set()),
    ("softcse", ("softcse",), ("online/clean",), ("projection",), False, False, {}, set()),
    ("retrofit", ("supcon", "vsp"), ("online/clean", "frozen/clean"), ("projection",), False,
     True, {}, {"labels"}),
    ("lcl", ("lcl", "ce", "weighting_ce"), ("online/clean",), ("classifier", "weighting"), False,
     False, {}, {"labels"}),
])
def test_presets_plan_what_the_papers_need(name, terms, passes, heads, ema, frozen, queues,
                                          extra_keys):
    p = config_check.validate(preset(name))
    assert p.terms == terms
    assert tuple(x.name for x in p.passes) == passes
    assert tuple(h for h, _ in p.heads) == tuple(sorted(heads))
    assert (p.ema, p.frozen) == (ema, frozen)
    assert {q.name: q.size for q in p.queues} == queues
    # Packed by default: the encoder's ids come as packed rows, with the segment layout.
    unpacked = {"input_ids", "attention_mask", "valid"} | extra_keys
    packed = ({"packed_input_ids", "attention_mask", "valid", "segment_ids", "sentence_row",
               "sentence_start"} | {objective.PACKED.get(k, k) for k in extra_keys})
    assert set(p.batch_keys) == packed
    plain = config_check.validate(preset(name, **{"data.packing": False}))
    assert set(plain.batch_keys) == unpacked
    line = p.describe()
    assert f"frozen copy: {'yes' if frozen else 'no'}" in line
    assert f"momentum (EMA) copy: {'yes' if ema else 'no'}" in line


def test_a_term_switched_on_changes_only_what_it_needs():
    base = config_check.validate(preset("softmcl"))
    mixed = config_check.validate(preset("softmcl", **{"objective.vsp.weight": 1.0}))
    assert mixed.terms == (*base.terms[:3], "vsp")
    assert mixed.frozen and not base.frozen
    # VSP reads online/clean, which SoftMCL does not: one more pass, nothing else changes.
    assert {x.name for x in mixed.passes} == {x.name for x in base.passes} | {
        "online/clean", "frozen/clean"}
    assert mixed.heads == base.heads and mixed.queues == base.queues
    # SimCSE + VSP-free SoftCSE sharing the projection head and the two views: one pass.
    both = config_check.validate(preset("simcse", **{"objective.softcse.weight": 0.5}))
    assert [(x.name, x.views) for x in both.passes] == [("online/clean", 2)]
    assert both.heads == (("projection", "projection"),)


@pytest.mark.parametrize("fields,message", [
    ({"objective.nonsense": {"weight": 1.0}}, r"config.objective.nonsense is not a loss term"),
    ({"objective.vsp.weight": -1.0}, r"config.objective.vsp.weight=-1.0 must be >= 0"),
    ({"objective.soft_sentence.temperature": -0.1},
     r"config.objective.soft_sentence.temperature=-0.1 must be > 0"),
    ({"optimizer.learning_rate": -1e-4}, r"config.optimizer.learning_rate=-0.0001 must be > 0"),
    ({"optimizer.decay": "step"}, r"config.optimizer.decay='step' must be 'cosine' or 'linear'"),
    ({"total_steps": 0}, r"config.total_steps=0 must be > 0"),
    ({"objective.soft_word.queue_size": 100},
     r"config.objective.soft_word.queue_size=100 must be 0 or a positive multiple of the keys "
     r"written per step \(128\)"),
    ({"data.mlm_rate": 0.0}, r"config.data.mlm_rate=0.0 must be > 0: config.objective.mlm"),
    ({"objective.soft_sentence.key": "ema/dirty"},
     r"config.objective.soft_sentence.key='ema/dirty' is not a pass"),
    ({"objective.soft_sentence.key": "frozen/clean"},
     r"config.objective.soft_sentence.key='frozen/clean': the frozen copy has no heads"),
    ({"objective.soft_sentence.labels": ("valence", "joy")},
     r"config.objective.soft_sentence.labels=\('valence', 'joy'\)"),
    ({"objective.soft_word.label_weights": (1.0, 2.0)},
     r"config.objective.soft_word.label_weights=\(1.0, 2.0\): one weight"),
    ({"objective.ce.weight": 1.0}, r"config.objective.ce needs classes: config.data.num_labels"),
    ({"objective.vsp_word.weight": 1.0, "objective.vsp_word.max_words_per_sentence": 0},
     r"config.objective.vsp_word.max_words_per_sentence must be >= 1"),
    ({"objective.vsp_word.weight": 1.0, "objective.vsp_word.to": "online/clean"},
     r"config.objective.vsp_word.to='online/clean' is the same pass as "
     r"config.objective.vsp_word.of"),
    ({"data.scale_low": 1.0}, r"config.data.scale_low=1.0 and config.data.scale_high=None"),
    ({"model.pooling": "max"}, r"config.model.pooling='max' is not one of"),
])
def test_validate_names_the_field(fields, message):
    with pytest.raises(ValueError, match=message):
        config_check.validate(preset("softmcl", **fields))


def test_word_vsp_is_vsp_over_the_words_soft_word_reads():
    """vsp_word against a brute-force reference: per sentence the first W lexicon-flagged tokens
    (padding rows and sentences beyond them take no part), each word's reference vector from
    the same position of the `to` pass, then the closed form of pairwise VSP,
    1/(n(n-1)) sum_{i != j} (cos(e_i, e_j) - cos(f_i, f_j))^2; pointwise: mean ||e^ - f^||^2."""
    from types import SimpleNamespace

    rng = np.random.default_rng(0)
    b, length, h, per = 4, 7, 5, 2
    hidden = {"online/masked": rng.normal(size=(b, length, h)).astype(np.float32),
              "frozen/masked": rng.normal(size=(b, length, h)).astype(np.float32)}
    flags = np.zeros((b, length), bool)
    flags[0, [1, 4, 5]] = True  # three words: the third is beyond W = 2
    flags[1, [6]] = True
    flags[3, [2, 3]] = True  # row 3 is padding (valid False): none of its words count
    valid = np.array([True, True, True, False])
    ctx = SimpleNamespace(hidden=lambda ref: jnp.asarray(hidden[ref]), valid=jnp.asarray(valid),
                          batch={"token_valence_mask": jnp.asarray(flags)})
    words = [(i, t) for i in range(b) if valid[i] for t in np.flatnonzero(flags[i])[:per]]
    assert words == [(0, 1), (0, 4), (1, 6)]

    def unit(x):
        return x / np.linalg.norm(x, axis=-1, keepdims=True)

    e = unit(np.stack([hidden["online/masked"][i, t] for i, t in words]).astype(np.float64))
    f = unit(np.stack([hidden["frozen/masked"][i, t] for i, t in words]).astype(np.float64))
    off = ~np.eye(len(words), dtype=bool)
    pairwise = np.sum(((e @ e.T - f @ f.T) ** 2)[off]) / off.sum()
    pointwise = np.mean(np.sum((e - f) ** 2, axis=-1))
    for mode, want in (("pairwise", pairwise), ("pointwise", pointwise)):
        knobs = preset("softmcl").objective.vsp_word
        knobs.update(of="online/masked", to="frozen/masked", mode=mode,
                     max_words_per_sentence=per)
        got = TERMS["vsp_word"].loss(ctx, knobs).value
        np.testing.assert_allclose(float(got), want, rtol=1e-5)


def test_no_term_on_is_refused():
    with pytest.raises(ValueError, match=r"no loss term is on"):
        config_check.validate(preset("simcse", **{"objective.infonce.weight": 0.0}))


def test_a_head_used_as_two_kinds_is_refused():
    config = preset("lcl", **{"objective.supcon.weight": 1.0,
                              "objective.supcon.head": "classifier"})
    with pytest.raises(ValueError, match=r"config.objective.ce uses head 'classifier' as a "
                                         r"classifier head, but config.objective.supcon uses it "
                                         r"as a projection head"):
        config_check.validate(config)


def test_a_scheduled_weight_is_planned_described_and_validated():
    p = config_check.validate(preset("softmcl", **{"objective.vsp.weight": 0.0,
                                                   "objective.vsp.weight_end": 10.0}))
    assert p.terms[-1] == "vsp" and p.frozen  # ramps in from 0: on
    assert p.weight_ends == (("vsp", 10.0),) and "0->10*vsp" in p.describe()
    assert objective.term_weight(p, "mlm", 7, 100) == 0.1  # unscheduled: constant
    assert float(objective.term_weight(p, "vsp", 25, 100)) == pytest.approx(2.5)
    assert float(objective.term_weight(p, "vsp", 250, 100)) == pytest.approx(10.0)  # held
    same = config_check.validate(preset("softmcl", **{"objective.mlm.weight_end": 0.1}))
    assert same.weight_ends == ()  # an end equal to the weight is no schedule
    with pytest.raises(ValueError, match=r"config.objective.vsp.weight_end=-1.0 must be >= 0"):
        config_check.validate(preset("softmcl", **{"objective.vsp.weight_end": -1.0}))


# ------------------------------------------------------------------ in the step: the passes


@pytest.fixture(scope="module")
def model_dir(tiny_model):
    return tiny_model  # the session's tiny BERT: its data is prepared and its steps compiled once


TINY = {"batch_size": 8, "model.max_len": 32, "data.max_examples": 64, "head.dim": 16,
        "probe.enabled": False, "data.prefetch": 0, "optimizer.learning_rate": 1e-3,
        "optimizer.warmup_steps": 0, "total_steps": 50,
        "objective.soft_sentence.queue_size": 16, "objective.soft_word.queue_size": 64}


def labelled_csv(path: str, n: int = 64) -> str:
    """VADER tweets with made-up classes (valence quartiles) and their valence, as a CSV."""
    import csv

    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["text", "label", "rating"])
        for s in load_vader_sentences(("tweets",))[:n]:
            w.writerow([" ".join(s.text.split()), min(int(s.valence * 4), 3),
                        f"{s.valence * 8 - 4:.4f}"])
    return path


def emobank_csv(path: str, n: int = 64) -> str:
    """EmoBank-format V/A/D (1..5) on VADER tweets: V from the rating, A and D made up."""
    rng = np.random.default_rng(0)
    with open(path, "w") as f:
        f.write("id,split,V,A,D,text\n")
        for i, s in enumerate(load_vader_sentences(("tweets",))[:n]):
            a, d = rng.uniform(1, 5, size=2)
            text = " ".join(s.text.split()).replace('"', '""')
            f.write(f'e{i},train,{1 + 4 * s.valence:.3f},{a:.3f},{d:.3f},"{text}"\n')
    return path


def warriner_csv(path: str) -> str:
    """Warriner-format norms for the VADER lexicon's words: V from VADER, A and D made up."""
    from softmcl_jax.data import load_vader_lexicon

    rng = np.random.default_rng(1)
    with open(path, "w") as f:
        f.write(",Word,V.Mean.Sum,A.Mean.Sum,D.Mean.Sum\n")
        for i, (word, v) in enumerate(sorted(load_vader_lexicon().items())):
            if "," in word or '"' in word:
                continue
            a, d = rng.uniform(1, 9, size=2)
            f.write(f"{i},{word},{1 + 8 * v:.3f},{a:.3f},{d:.3f}\n")
    return path


def mix_config(name: str, tmp_path, model_dir: str):
    """Mixes that no preset has (the issue's examples)."""
    if name == "softmcl+vsp":
        c = preset("softmcl", **TINY)
        # VSP values are ~1e-3 against soft-label losses of ~3: lambda = 100 lets it count.
        c.objective.vsp.weight = 100.0
    elif name == "soft_sentence+supcon":
        c = preset("simcse", **TINY)
        c.objective.infonce.weight = 0.0
        c.objective.soft_sentence.update(weight=1.0, query="online/clean", key="ema/clean",
                                         head="projection")
        c.objective.supcon.weight = 1.0  # shares the projection head with soft_sentence
        c.data.update(source="csv", path=labelled_csv(str(tmp_path / "l.csv")),
                      label_column="label", valence_column="rating", num_labels=4,
                      scale_low=-4.0, scale_high=4.0)
    elif name == "softcse+queue":
        c = preset("softcse", **TINY)
        c.objective.softcse.update(key="ema/clean", queue_size=32)
    elif name == "softmcl+vsp_word":  # held at the sentence and the word level
        c = preset("softmcl", **TINY)
        for term in (c.objective.vsp, c.objective.vsp_word):
            term.update(weight=100.0, of="online/masked", to="frozen/masked")
    elif name == "vad":  # the V/A/D preset, on its train words only
        c = preset("softmcl_vad", **TINY)
        lexicon = warriner_csv(str(tmp_path / "w.csv"))
        c.data.update(path=emobank_csv(str(tmp_path / "eb.csv")), lexicon=lexicon,
                      lexicon_words=train_words(lexicon, str(tmp_path / "train.txt")))
    else:
        raise ValueError(name)
    c.model.name_or_path = model_dir
    return c


MIXES = ["softmcl+vsp", "softmcl+vsp_word", "soft_sentence+supcon", "softcse+queue", "vad"]


def train_words(lexicon_csv: str, path: str) -> str:
    """Every other word of a Warriner-format CSV (plus one it lacks), one per line."""
    from softmcl_jax.data import sources

    words = sorted(sources.load_lexicon(lexicon_csv))[::2] + ["notawordatall"]
    with open(path, "w") as f:
        f.write("\n".join(words) + "\n")
    return path


def test_lexicon_words_keep_only_the_listed_words(tmp_path):
    """data.lexicon_words: the word labels of every dimension come from the listed words only
    (Warriner's dev/test words stay unseen by training)."""
    from softmcl_jax.data import sources

    lexicon = warriner_csv(str(tmp_path / "w.csv"))
    words = train_words(lexicon, str(tmp_path / "train.txt"))
    full = sources.load_lexicon(lexicon)
    listed = set(open(words).read().split())
    kept = sources.load_lexicon(lexicon, words)
    assert kept == {w: v for w, v in full.items() if w in listed} and 0 < len(kept) < len(full)
    affect = sources.load_affect_lexicons(lexicon, ("arousal", "dominance"), words)
    assert all(set(a) == set(kept) for a in affect.values())
    assert set(sources.load_lexicon("vader", words)) <= listed
    with pytest.raises(ValueError, match=r"config.data.lexicon_words='/no/such.txt': cannot read"):
        sources.load_lexicon(lexicon, "/no/such.txt")
    with pytest.raises(ValueError, match=r"config.data.lexicon_words='x.txt' restricts a lexicon"):
        config_check.validate(preset("simcse", **{"data.lexicon_words": "x.txt"}))


def _setup(config):
    the_plan = config_check.validate(config)
    pretrained, tokenizer, model = loop.setup_model(config, the_plan)
    mesh = sharding.make_mesh(1, 1, jax.devices()[:1])
    pipeline = loop.build_pipeline(config, tokenizer, mesh, the_plan)
    return the_plan, model, mesh, pipeline


def _all_rows(pipeline) -> dict[str, np.ndarray]:
    """Every row of the pipeline's (one) prepared folder, padded as encode_sentences pads."""
    (source,) = pipeline.sources
    rows = [decode_row(b) for b in source.read(range(len(source)))]
    return pad_rows(rows, max_len=pipeline.max_len, pad_id=pipeline.pad_id)


def test_ratings_in_spread_units_reach_the_pipeline(tmp_path, model_dir):
    """softmcl_vad trains on ratings over their spread: every rating array of a batch is the
    scale's divided by the brute-force mean absolute difference of the training data's present
    values (all rows of the prepared folder)."""
    spread = mix_config("vad", tmp_path, model_dir)
    assert spread.data.rating_unit == "spread"
    scale = mix_config("vad", tmp_path, model_dir)
    scale.data.rating_unit = "scale"
    sp, sc = _setup(spread)[3], _setup(scale)[3]
    every = _all_rows(sc)
    a, b = sp.batch(0), sc.batch(0)
    rated = [k for k in b if k.split("_")[0] in ("sentence", "token")
             and k.partition("_")[2] in ("valence", "arousal", "dominance")]
    assert sorted(rated) == sorted(f"{level}_{d}" for level in ("sentence", "token")
                                   for d in ("valence", "arousal", "dominance"))
    for key in rated:
        present = b["token_valence_mask"] if key == "token_valence" else b[key] >= 0
        whole = every["token_valence_mask"] if key == "token_valence" else every[key] >= 0
        x = every[key][whole].astype(np.float64)
        brute = np.abs(x[:, None] - x[None]).sum() / (len(x) * (len(x) - 1))
        np.testing.assert_allclose(a[key][present], b[key][present] / brute, rtol=1e-5)
        np.testing.assert_array_equal(a[key][~present], b[key][~present])


@pytest.mark.parametrize("mix", MIXES)
def test_each_pass_runs_once_however_many_terms_read_it(mix, tmp_path, model_dir, monkeypatch):
    config = mix_config(mix, tmp_path, model_dir)
    the_plan, model, mesh, pipeline = _setup(config)
    setup = train.setup_step(model, config, mesh, the_plan)
    state = setup.init()
    batch = {k: pipeline.batch(0)[k] for k in the_plan.batch_keys}
    calls = []
    forward = Model.forward

    def counting(self, params, input_ids, *a, **kw):
        calls.append((input_ids.shape, kw["train"]))
        return forward(self, params, input_ids, *a, **kw)

    monkeypatch.setattr(Model, "forward", counting)
    jax.make_jaxpr(lambda p: objective.loss(
        model, the_plan, config, p, state.ema_params, setup.step_fn.constants.get("frozen"),
        batch, state.queues, jax.random.key(0)))(state.params)
    b = config.batch_size
    reads = sum(len(TERMS[t].needs(t, config.objective[t], config).passes)
                for t in the_plan.terms)
    print(f"{mix}: {len(the_plan.terms)} terms read passes {reads} times; {len(calls)} encoder "
          f"forwards {calls}")
    assert len(calls) == len(the_plan.passes)
    assert len(calls) < reads if mix != "softcse+queue" else len(calls) == reads
    rows = batch["packed_input_ids"].shape[0] if config.data.packing else b  # packed by default
    assert sorted(calls) == sorted(((rows * p.views, config.model.max_len), p.train)
                                   for p in the_plan.passes)


@pytest.mark.slow
@pytest.mark.parametrize("mix", MIXES)
def test_mixes_train_every_term(mix, tmp_path, model_dir):
    """Every active term's gradient reaches the encoder, and 30 steps of the mix lower its
    objective. A logged value is no measure of that where a queue fills (more candidates, a
    larger loss), so the terms are evaluated on one batch with the final momentum copy and
    queues, at the initial and at the trained parameters. VSP, 0 at the start, is checked
    against the same mix without it."""
    config = mix_config(mix, tmp_path, model_dir)
    the_plan, model, mesh, pipeline = _setup(config)
    setup = train.setup_step(model, config, mesh, the_plan)
    state = setup.init()
    batch = {k: pipeline.batch(0)[k] for k in the_plan.batch_keys}
    frozen = setup.step_fn.constants.get("frozen")

    def terms(params, ema, queues):
        _, (metrics, _) = objective.loss(model, the_plan, config, params, ema, frozen, batch,
                                         queues, jax.random.key(0))
        return {t: metrics[f"loss/{t}"] for t in the_plan.terms}

    for term in the_plan.terms:
        grads = jax.grad(lambda p, t=term: terms(p, state.ema_params, state.queues)[t])(
            state.params)
        norm = float(jnp.sqrt(sum(jnp.sum(g ** 2) for g in jax.tree.leaves(grads["encoder"]))))
        print(f"{mix}: |d loss/{term} / d encoder| = {norm:.3e}")
        assert np.isfinite(norm) and norm > 0, term
    before = jax.tree.map(np.array, jax.device_get(state.params))  # the state is donated
    state = _train(setup, state, pipeline, the_plan, 30)
    start = terms(before, state.ema_params, state.queues)
    end = terms(state.params, state.ema_params, state.queues)
    for t in the_plan.terms:
        print(f"{mix}: loss/{t} at the initial params {float(start[t]):.4f} -> trained "
              f"{float(end[t]):.4f}")
    # Terms may compete (SupCon's class clusters against soft valence targets on one head), so
    # the claim per term is its gradient above; what the mix minimises is the weighted sum.
    total = lambda v: sum(w * float(v[t]) for t, w in the_plan.weights)
    assert total(end) < total(start), (start, end)
    for held in [t for t in ("vsp", "vsp_word") if t in the_plan.terms]:
        # VSP is 0 at the start (online = frozen) and can only grow: what it does is keep the
        # space closer to the frozen one than the same mix without it does (the other VSP term,
        # if any, still on: each level's term holds its own level).
        weight = config.objective[held].weight
        config.objective[held].weight = 0.0
        free_plan = config_check.validate(config)
        free = train.setup_step(objective.build_model(model.pretrained, free_plan, config),
                                config, mesh, free_plan)
        free_state = _train(free, free.init(), pipeline, free_plan, 30)
        config.objective[held].weight = weight
        drift = float(terms(free_state.params, state.ema_params, state.queues)[held])
        print(f"{mix}: {held} to the frozen encoder after 30 steps: {float(end[held]):.4f} with "
              f"the term, {drift:.4f} without it")
        assert float(end[held]) < 0.5 * drift


def test_a_scheduled_weight_is_the_constant_weight_of_its_step(tmp_path, model_dir):
    """loss(step) with vsp.weight 100 -> 0 equals, at each step, the loss of a config whose vsp
    weight is the constant 100 * (1 - step / total_steps): the schedule is exactly linear."""
    config = mix_config("softmcl+vsp", tmp_path, model_dir)
    config.objective.vsp.weight_end = 0.0
    the_plan, model, mesh, pipeline = _setup(config)
    setup = train.setup_step(model, config, mesh, the_plan)
    state = setup.init()
    batch = {k: pipeline.batch(0)[k] for k in the_plan.batch_keys}
    frozen = setup.step_fn.constants.get("frozen")
    # The online copy must differ from the frozen one for VSP to be non-zero.
    params = jax.tree.map(lambda x: x * 1.01, state.params)
    total = config.total_steps
    for step in (0, total // 5, total // 2, total, 2 * total):
        got, (metrics, _) = objective.loss(model, the_plan, config, params, state.ema_params,
                                           frozen, batch, state.queues, jax.random.key(0), step)
        fixed = config.copy_and_resolve_references()
        fixed.objective.vsp.update(weight=100.0 * max(1 - step / total, 0.0), weight_end=None)
        fixed_plan = config_check.validate(fixed) if fixed.objective.vsp.weight > 0 else None
        want, _ = objective.loss(model, fixed_plan or the_plan, fixed, params, state.ema_params,
                                 frozen, batch, state.queues, jax.random.key(0))
        if fixed_plan is None:  # weight 0: the term is off, so its contribution is removed
            want = want - 100.0 * metrics["loss/vsp"]
        assert float(metrics["loss/vsp"]) > 1e-6
        assert float(got) == pytest.approx(float(want), rel=1e-6), step
        assert float(metrics["weight/vsp"]) == pytest.approx(100.0 * max(1 - step / total, 0))


def _train(setup, state, pipeline, the_plan, steps: int):
    for s in range(steps):
        b = {k: v for k, v in pipeline.batch(s).items() if k in the_plan.batch_keys}
        state, metrics = setup.step_fn(state, b)
        assert np.isfinite(train.host_scalars(metrics)["loss"]), s
    return state


# ------------------------------------------------------------- the rows each term reads

# A hand-made batch of 8 rows (row 7 is padding: valid False, yet it has every supervision).
ROWS_VALID = np.array([1, 1, 1, 1, 1, 1, 1, 0], bool)
ROWS_VALENCE = np.array([0.2, 0.8, 0.5, -1, -1, 0.1, -1, 0.9], np.float32)
ROWS_AROUSAL = np.array([0.3, -1, 0.6, -1, 0.4, 0.7, -1, 0.2], np.float32)
ROWS_LABELS = np.array([0, -1, 2, 1, -1, -1, 1, 0], np.int32)
# (row, position, word arousal): every listed token is a lexicon word with a valence.
ROWS_WORDS = [(0, 2, -1.0), (1, 3, 0.5), (1, 5, -1.0), (3, 1, -1.0), (3, 2, -1.0),
              (6, 1, -1.0), (6, 2, -1.0), (6, 3, 0.4), (7, 1, 0.5)]
# By hand: valid rows 0-6 (7); both sentence ratings 0, 2, 5 (3); a word with an arousal
# 1, 6 (2; soft_word reads valence and arousal); any word 0, 1, 3, 6 (4; vsp_word); a class
# 0, 2, 3, 6 (4); a valence rating, the regression's target: 0, 1, 2, 5 (4).
ROWS_WANT = {"mlm": 7, "infonce": 7, "softcse": 7, "vsp": 7, "soft_sentence": 3,
             "soft_word": 2, "vsp_word": 4, "supcon": 4, "lcl": 4, "ce": 4, "weighting_ce": 4,
             "regression": 4}


def rows_batch(the_plan: objective.Plan, length: int = 12) -> dict[str, np.ndarray]:
    """The hand-made batch, the arrays the plan reads (unpacked layout)."""
    rng = np.random.default_rng(0)
    b = len(ROWS_VALID)
    lengths = np.array([12, 10, 8, 6, 12, 9, 7, 5])
    mask = (np.arange(length)[None] < lengths[:, None]).astype(np.int32)
    ids = np.where(mask > 0, rng.integers(1000, 2000, (b, length)), 0).astype(np.int32)
    ids[:, 0] = 101
    ids[np.arange(b), lengths - 1] = 102
    mlm_labels = np.full((b, length), -100, np.int32)
    mlm_labels[:, 1] = ids[:, 1]
    words = np.zeros((b, length), bool)
    token_valence = np.zeros((b, length), np.float32)
    token_arousal = np.full((b, length), -1.0, np.float32)
    for row, pos, arousal in ROWS_WORDS:
        words[row, pos], token_valence[row, pos] = True, rng.uniform()
        token_arousal[row, pos] = arousal
    arrays = {"input_ids": ids, "attention_mask": mask, "valid": ROWS_VALID,
              "mlm_input_ids": np.where(mlm_labels >= 0, 103, ids).astype(np.int32),
              "mlm_labels": mlm_labels, "sentence_valence": ROWS_VALENCE,
              "sentence_arousal": ROWS_AROUSAL, "token_valence": token_valence,
              "token_arousal": token_arousal, "token_valence_mask": words, "labels": ROWS_LABELS}
    assert set(the_plan.batch_keys) <= set(arrays), the_plan.batch_keys
    return {k: arrays[k] for k in the_plan.batch_keys}


def test_each_term_reports_the_rows_it_read_and_queues_only_those(model_dir):
    """Every term on at once over a batch where some rows have ratings, words or a class and
    some do not: rows/<term> are the hand counts; the soft_sentence queue holds the keys of the
    rows with every rating it reads as its only valid slots; and what the queue holds in its
    other slots (NaN here) changes no loss of the next step: an invalid key is no candidate."""
    from softmcl_jax.models import from_pretrained

    config = preset("softmcl", **dict(TINY, **{
        "data.packing": False, "model.max_len": 12, "data.mlm_rate": 0.15,
        "data.num_labels": 3, "objective.soft_word.queue_size": 0}))
    for term in ("infonce", "softcse", "supcon", "vsp", "vsp_word", "lcl", "ce", "weighting_ce",
                 "regression"):
        config.objective[term].weight = 1.0
    for term in ("soft_sentence", "soft_word"):
        config.objective[term].update(labels=("valence", "arousal"), label_weights=(0.5, 0.5))
    config.objective.vsp_word.max_words_per_sentence = 2
    config.objective.soft_word.max_words_per_sentence = 2
    the_plan = config_check.validate(config)
    assert set(the_plan.terms) == set(TERMS) == set(ROWS_WANT)
    model = objective.build_model(from_pretrained(model_dir), the_plan, config)
    setup = train.setup_step(model, config, sharding.make_mesh(1, 1, jax.devices()[:1]),
                             the_plan)
    batch = rows_batch(the_plan)
    state, metrics = setup.step_fn(setup.init(), batch)
    got = {t: jax.device_get(metrics[f"rows/{t}"]) for t in the_plan.terms}
    assert all(v.dtype == np.int32 for v in got.values())
    assert {t: int(v) for t, v in got.items()} == ROWS_WANT
    assert int(jax.device_get(metrics["sentences"])) == int(ROWS_VALID.sum())
    assert bool(metrics["finite"])

    queue = jax.device_get(state.queues["soft_sentence"])
    both = ROWS_VALID & (ROWS_VALENCE >= 0) & (ROWS_AROUSAL >= 0)
    np.testing.assert_array_equal(queue.valid, np.concatenate([both, np.zeros(8, bool)]))
    assert int(queue.ptr) == 8

    clean = jax.device_get(state)  # the step donates its state: two host copies
    garbage = jax.tree.map(np.array, clean)
    q = garbage.queues["soft_sentence"]
    q.keys[~q.valid], q.values[~q.valid] = np.nan, np.nan
    assert np.isnan(q.keys).any() and q.valid.sum() == 3
    _, a = setup.step_fn(clean, batch)
    _, b = setup.step_fn(garbage, batch)
    a, b = jax.device_get(a), jax.device_get(b)
    assert bool(b["finite"])
    for k in a:
        np.testing.assert_array_equal(a[k], b[k], err_msg=k)


# ------------------------------------------------------------------------ born sharded

SHARDED_INIT = textwrap.dedent("""
    import json, sys
    import jax, numpy as np
    sys.path.insert(0, {root!r}); sys.path.insert(0, {root!r} + "/configs")
    import softmcl
    from softmcl_jax import loop, sharding, train
    c = softmcl.get_config()
    c.model.name_or_path = {model!r}
    c.batch_size, c.head.dim = 8, 16
    c.objective.soft_sentence.queue_size, c.objective.soft_word.queue_size = 16, 64
    c.mesh.data, c.mesh.fsdp = 1, 8
    mesh = sharding.make_mesh(1, 8)
    _, _, model = loop.setup_model(c)
    setup = train.setup_step(model, c, mesh)
    compiled = setup.init.lower().compile()
    mem = compiled.memory_analysis()
    total = sum(x.size * x.dtype.itemsize for x in jax.tree.leaves(setup.abstract))
    # A device's share: each leaf's shard under the state's shardings (fsdp splits the large
    # leaves 8 ways; leaves under 16k elements stay whole on every device, sharding.fsdp_spec).
    share = sum(int(np.prod(s.shard_shape(a.shape))) * a.dtype.itemsize
                for a, s in zip(jax.tree.leaves(setup.abstract),
                                jax.tree.leaves(setup.shardings)))
    state = setup.init()
    held = {{}}
    for x in jax.tree.leaves(state):
        for s in x.addressable_shards:
            held[str(s.device)] = held.get(str(s.device), 0) + s.data.nbytes
    print("RESULT" + json.dumps(dict(total=total, share=share, out=mem.output_size_in_bytes,
                                     temp=mem.temp_size_in_bytes, held=held)))
""")


def test_state_is_born_sharded(model_dir):
    """At 8-way fsdp no device ever holds more than its share of params + EMA + Adam moments:
    the init is compiled per device with the state's shardings (outputs and temporaries), and
    what each device holds afterwards is its shard (plus the small replicated leaves)."""
    import json

    code = SHARDED_INIT.format(root=tu.ROOT, model=model_dir)
    proc = subprocess.run([sys.executable, "-c", code], env=tu.env(8), capture_output=True,
                          text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    r = json.loads(next(x for x in proc.stdout.splitlines() if x.startswith("RESULT"))[6:])
    share = r["share"]
    print(f"state {r['total'] / 2**20:.1f} MiB; per device: share {share / 2**20:.2f} MiB, init "
          f"outputs {r['out'] / 2**20:.2f} MiB, init temporaries {r['temp'] / 2**20:.2f} MiB, "
          f"held {max(r['held'].values()) / 2**20:.2f} MiB")
    assert share < r["total"] / 4  # the tiny model's big leaves (embeddings) are split
    assert len(r["held"]) == 8 and set(r["held"].values()) == {share}
    # The compiled init writes only its shard and builds nothing whole on the side.
    # (XLA pads small buffers for alignment: ~2 KB over the exact bytes here.)
    assert r["out"] <= 1.001 * share and r["temp"] <= 0.05 * share


def test_mixed_run_end_to_end_logs_every_term(model_dir, tmp_path):
    """The issue's command: SoftMCL + VSP from the command line alone."""
    workdir = str(tmp_path / "run")
    proc = tu.run_main_fast("softmcl.py", workdir, model_dir,
                       **dict(tu.SOFTMCL_TINY, total_steps=4, objective__vsp__weight=1.0))
    assert "frozen copy: yes" in proc.stderr and "1*vsp" in proc.stderr
    rows = tu.read_metrics(workdir)
    assert len(rows) == 4
    for r in rows:
        parts = {t: r[f"loss/{t}"] for t in ("soft_sentence", "soft_word", "mlm", "vsp")}
        assert np.isclose(r["loss"], parts["soft_sentence"] + parts["soft_word"]
                          + 0.1 * parts["mlm"] + parts["vsp"], rtol=1e-5)
    assert transformers.AutoConfig.from_pretrained(os.path.join(workdir, "export"))


# ---------------------------------------------------------------- the config contract


def _flat_keys(config, prefix=""):
    out = set()
    for k, v in config.items():
        if hasattr(v, "items"):
            out |= _flat_keys(v, f"{prefix}{k}.")
        else:
            out.add(f"{prefix}{k}")
    return out


@pytest.mark.parametrize("name", ["softmcl", "simcse", "softcse", "retrofit", "lcl", "softmcl_vad",
                                  "softmcl_anchored", "softmcl_affect"])
def test_presets_only_set_fields_that_base_declares(name):
    """A preset that added a field would be a hidden default: base.py declares every field."""
    base = runpy.run_path(os.path.join(tu.ROOT, "configs", "base.py"))["get_base"]()
    assert _flat_keys(preset(name)) == _flat_keys(base)


def test_the_meaning_keeping_preset_is_the_measured_mix():
    """configs/softmcl_anchored.py is the softmcl_t0.4_ema_infonce_vsp1 run of RESULTS.md:
    SoftMCL's preset plus the reproduction's overrides, nothing else; it adds one head and the
    frozen encoder's pass (no gradients), no online pass."""
    sys.path.insert(0, os.path.join(tu.ROOT, "benchmarks"))
    import reproduce_runs

    run = reproduce_runs.MIXES["softmcl_t0.4_ema_infonce_vsp1"]
    ours, plain = preset("softmcl_anchored"), preset("softmcl")
    assert run.config == "softmcl" and ours.name == "softmcl_anchored"
    for override in run.overrides:  # e.g. objective.infonce.key=ema/clean
        field, value = override.split("=")
        got = ours
        for key in field.split("."):
            got = got[key]
        assert (f"{got:g}" if isinstance(got, float) else str(got)) == value, override
    assert ours.objective.infonce.to_dict() == dict(
        plain.objective.infonce.to_dict(), weight=1.0, query="online/masked", key="ema/clean")
    assert ours.objective.vsp.to_dict() == dict(
        plain.objective.vsp.to_dict(), weight=1.0, of="online/masked", to="frozen/masked")
    ours.name = plain.name
    ours.objective.infonce = plain.objective.infonce  # what is left must be SoftMCL's preset
    ours.objective.vsp = plain.objective.vsp
    for term in ("soft_sentence", "soft_word"):
        assert ours.objective[term].temperature == 0.4
        ours.objective[term].temperature = plain.objective[term].temperature
    assert ours.to_dict() == plain.to_dict()
    p, q = config_check.validate(preset("softmcl_anchored")), config_check.validate(plain)
    assert [x.name for x in p.passes] == [x.name for x in q.passes] + ["frozen/masked"]
    assert p.terms == (*q.terms[:3], "infonce", "vsp")
    assert dict(p.heads)["projection"] == "projection"


def test_a_term_without_its_data_is_refused(model_dir):
    """SupCon on the shipped VADER sentences, which have valences but no classes."""
    config = preset("simcse", **dict(TINY, **{"objective.supcon.weight": 1.0}))
    config.model.name_or_path = model_dir
    with pytest.raises(ValueError, match=r"config.objective.supcon needs class labels .* \("
                                         r"config.data.source='vader'\) have none"):
        _setup(config)


def test_labels_beyond_num_labels_are_refused_with_file_and_line(model_dir, tmp_path):
    """LCL on GoEmotions-format data with num_labels=5 used to train to NaN and exit 0. The data
    are prepared as a stream, so the first bad row stops it (the rest of a corpus is not read
    to count the others)."""
    path = tmp_path / "go.tsv"
    path.write_text("a fine day\t1\tid0\nwhat a mess\t4\tid1\nso much joy\t17\tid2\n"
                    "meh\t27\tid3\n")
    config = preset("lcl", **dict(TINY, **{"data.source": "goemotions", "data.path": str(path),
                                          "data.num_labels": 5}))
    config.model.name_or_path = model_dir
    with pytest.raises(ValueError, match=rf"{path}:3: label 17 does not fit "
                                         r"config.data.num_labels=5 \(ids 0..4\)"):
        _setup(config)


@pytest.mark.slow
def test_a_csv_with_a_valence_column_trains_from_the_command_line(model_dir, tmp_path):
    """data.scale_low/high were None, which config_flags cannot override; now placeholders."""
    workdir = str(tmp_path / "run")
    proc = tu.run_main_fast(
        "simcse.py", workdir, model_dir,
        **dict(tu.TINY, total_steps=3, objective__infonce__weight=0.0, data__source="csv",
               data__path=labelled_csv(str(tmp_path / "l.csv")), data__valence_column="rating",
               data__scale_low=-4.0, data__scale_high=4.0, objective__soft_sentence__weight=1.0,
               objective__soft_sentence__query="online/clean",
               objective__soft_sentence__key="online/clean/2"))
    assert "loss = 1*soft_sentence" in proc.stderr
    rows = tu.read_metrics(workdir)
    assert [r["step"] for r in rows] == [1, 2, 3]
    assert all(np.isfinite(r["loss/soft_sentence"]) and r["loss"] == r["loss/soft_sentence"]
               for r in rows)


@pytest.mark.slow
def test_resume_rebuilds_the_frozen_copy(model_dir, tmp_path):
    """Retrofitting's frozen encoder is a constant, not checkpointed: with the step-8 checkpoint
    removed, the same command resumes from step 4 and recomputes steps 5-8 bit for bit."""
    import shutil

    from safetensors.numpy import load_file

    path = str(tmp_path / "go.tsv")
    with open(path, "w") as f:
        for i, s in enumerate(load_vader_sentences(("tweets",))[:64]):
            f.write(f"{' '.join(s.text.split())}\t{min(int(s.valence * 4), 3)}\tid{i}\n")
    fields = dict(tu.TINY, total_steps=8, data__num_labels=4, data__path=path)
    workdir = str(tmp_path / "run")
    tu.run_main_fast("retrofit.py", workdir, model_dir, **fields)
    first = tu.read_metrics(workdir)
    weights = load_file(os.path.join(workdir, "export", "model.safetensors"))
    assert sorted(os.listdir(os.path.join(workdir, "checkpoints"))) == ["4", "8"]
    shutil.rmtree(os.path.join(workdir, "checkpoints", "8"))
    shutil.rmtree(os.path.join(workdir, "export"))
    proc = tu.run_main_fast("retrofit.py", workdir, model_dir, **fields)
    assert "resumed from" in proc.stderr and "at step 4" in proc.stderr
    assert tu.read_metrics(workdir) == first
    assert any(r["loss/vsp"] > 0 for r in first)
    again = load_file(os.path.join(workdir, "export", "model.safetensors"))
    for k in weights:
        np.testing.assert_array_equal(weights[k], again[k], err_msg=k)
