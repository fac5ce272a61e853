"""Issue 25, items 5, 6, 10 and 13: what `validate` and the command line refuse before anything
is loaded or written. An objective from which no gradient reaches the online encoder (the plan's
claim checked against jax.grad), a model.max_len beyond the position table of each family (the
limit checked against transformers), nan/inf inside a tuple override (parsed as a float, then
refused naming the field), and config loading mistakes (a field that does not exist, a missing
file, a syntax error, a get_config that raises): one line, exit status 1, nothing written."""

from __future__ import annotations

import math
import os
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
import transformers
from ml_collections.config_flags import tuple_parser

from softmcl_jax import cli_config, config_check, objective
from softmcl_jax.models import from_pretrained, hf
from tests import tiny
from tests import train_utils as tu
from tests.test_objective import rows_batch

preset = tu.load_config

# ------------------------------------------------------- item 5: a gradient path to the encoder

# (term, its pass knobs, whether the plan says its gradient reaches the online encoder)
PATHS = [
    ("infonce", dict(query="ema/clean", key="frozen/clean", head=""), False),  # the issue's
    ("infonce", dict(query="ema/clean", key="online/clean"), True),  # an online key trains
    ("vsp", dict(of="frozen/clean", to="online/clean"), False),  # the issue's: `to` is a target
    ("vsp", dict(of="online/clean", to="frozen/clean"), True),
    ("soft_sentence", dict(query="ema/clean", key="online/clean"), False),  # keys: targets
    ("soft_sentence", dict(query="online/clean", key="ema/clean"), True),
    ("vsp_word", dict(of="frozen/masked", to="online/masked"), False),
    ("ce", dict(of="ema/clean"), False),  # a head on the EMA copy is a constant too
]


def _one_term(term: str, knobs: dict):
    """The softmcl preset with only ``term`` on (its passes set to ``knobs``), unpacked, on the
    hand-made batch of tests/test_objective.py (``rows_batch``)."""
    config = preset("softmcl", **{
        "batch_size": 8, "head.dim": 16, "data.packing": False, "model.max_len": 12,
        "data.mlm_rate": 0.15, "data.num_labels": 3, "objective.soft_sentence.queue_size": 0,
        "objective.soft_word.queue_size": 0})
    for name in config.objective:
        config.objective[name].weight = 0.0
    config.objective[term].update(weight=1.0, **knobs)
    return config


@pytest.fixture(scope="module")
def tiny_pretrained(tiny_model):
    return from_pretrained(tiny_model)


@pytest.mark.parametrize("term,knobs,trains", PATHS)
def test_the_plans_gradient_paths_are_what_jax_differentiates(term, knobs, trains, tiny_model,
                                                              tiny_pretrained):
    """d loss/term / d online encoder params is nonzero exactly where the plan says a gradient
    reaches the online encoder, and validate refuses exactly the other terms, naming them."""
    config = _one_term(term, knobs)
    config.model.name_or_path = tiny_model
    the_plan = objective.plan(config)
    assert (term not in the_plan.untrained()) == trains
    model = objective.build_model(tiny_pretrained, the_plan, config)
    # The train state's copies (train.setup_step), without compiling its initialisation: the
    # EMA copy starts as the online params; the frozen copy is the base encoder.
    encoder = tiny_pretrained.params
    params = {"encoder": encoder, "heads": model.init_heads(jax.random.key(1))}
    ema = params if the_plan.ema else None
    frozen = {"encoder": encoder} if the_plan.frozen else None
    # Away from the EMA and frozen copies, so that no loss sits at a stationary point by
    # construction (VSP is 0, with a zero gradient, where online = frozen).
    params = jax.tree.map(lambda x: x * 1.01, params)
    batch = {k: jnp.asarray(v) for k, v in rows_batch(the_plan).items()}

    def term_loss(p):
        _, (metrics, _) = objective.loss(model, the_plan, config, p, ema, frozen, batch, {},
                                         jax.random.key(0))
        return metrics[f"loss/{term}"]

    grads = jax.grad(term_loss)(params)["encoder"]
    norm = float(jnp.sqrt(sum(jnp.sum(g.astype(jnp.float32) ** 2)
                              for g in jax.tree.leaves(grads))))
    print(f"{term} {knobs}: |d loss / d online encoder| = {norm:.3e}; plan: "
          f"{'trains' if trains else 'untrained'}")
    assert np.isfinite(norm) and (norm > 0) == trains
    if trains:
        config_check.validate(config)
    else:
        with pytest.raises(ValueError, match=rf"config.objective.{term}: .*no gradient reaches "
                                             r"the online encoder"):
            config_check.validate(config)


def test_every_shipped_config_has_a_gradient_path():
    for name in sorted(os.listdir(os.path.join(tu.ROOT, "configs"))):
        if name.endswith(".py") and name != "base.py":
            the_plan = config_check.validate(preset(name[:-3]))
            assert the_plan.untrained() == (), name
            assert {t for t, _ in the_plan.grads} == set(the_plan.terms)


def test_every_dead_term_is_named_with_its_passes():
    """The issue's two examples at once: both named in one line, each with its pass fields."""
    config = preset("simcse", **{"objective.vsp.weight": 1.0, "objective.vsp.of": "frozen/clean",
                                 "objective.vsp.to": "online/clean"})
    config.objective.infonce.update(query="ema/clean", key="frozen/clean", head="")
    with pytest.raises(ValueError) as e:
        config_check.validate(config)
    message = str(e.value)
    assert "\n" not in message
    assert message.startswith("config.objective.infonce: query='ema/clean', key='frozen/clean'; "
                              "config.objective.vsp: of='frozen/clean', to='online/clean' (to: "
                              "a fixed target")
    assert "set the weight of config.objective.infonce and config.objective.vsp to 0" in message
    # One live term does not excuse a dead one: it would only add a constant to the loss.
    config.objective.infonce.update(query="online/clean", key="online/clean/2")
    with pytest.raises(ValueError, match=r"^config.objective.vsp: of='frozen/clean'"):
        config_check.validate(config)


# ----------------------------------------------------- item 6: max_len and the position table

# The family, and what max_positions says (None: relative positions only, no limit).
FAMILIES = [("bert", 64), ("roberta", 64), ("electra", 64), ("deberta-v2", 64),
            ("deberta-v3", None)]


@pytest.fixture(scope="module")
def family_dirs(tmp_path_factory):
    """A tiny random checkpoint of each family (tests/tiny.py), its table of 64 (RoBERTa: 66)."""
    root = tmp_path_factory.mktemp("families")
    return {name: (str(root / name), tiny.make_checkpoint(name, str(root / name)))
            for name, _ in FAMILIES}


@pytest.mark.parametrize("name,limit", FAMILIES)
def test_max_positions_is_where_transformers_runs_off_the_table(name, limit, family_dirs):
    """max_positions agrees with transformers itself: a row of that many tokens runs, one more
    fails (BERT and ELECTRA slice a 64-entry position buffer; RoBERTa indexes position 66 of
    66; DeBERTa-v2 adds a 65th absolute position); DeBERTa-v3 (relative positions only, clipped
    to its span) runs at twice the table. Ours refuses a longer input naming both numbers."""
    folder, model = family_dirs[name]
    hf_config = transformers.AutoConfig.from_pretrained(folder)
    assert hf.max_positions(hf_config) == limit
    pretrained = from_pretrained(folder)

    def run_torch(length: int) -> torch.Tensor:
        b = tiny.batch(hf_config, batch_size=1, length=length, lengths=(length,))
        with torch.no_grad():
            return model(**tiny.torch_inputs(b)).logits

    def run_ours(length: int) -> jax.Array:
        b = tiny.batch(hf_config, batch_size=1, length=length, lengths=(length,))
        return pretrained.encode(pretrained.params, b["input_ids"], b["attention_mask"],
                                 token_type_ids=b["token_type_ids"])

    if limit is None:
        long = 2 * hf_config.max_position_embeddings
        assert torch.isfinite(run_torch(long)).all()
        assert np.isfinite(np.asarray(run_ours(long))).all()
        return
    assert torch.isfinite(run_torch(limit)).all()
    assert np.isfinite(np.asarray(run_ours(limit))).all()
    with pytest.raises((IndexError, RuntimeError)):
        run_torch(limit + 1)
    with pytest.raises(ValueError, match=rf"the input: {limit + 1} tokens, but the encoder's "
                                         rf"position table holds {limit} "):
        run_ours(limit + 1)


def test_validate_refuses_max_len_beyond_the_table(family_dirs, tiny_model):
    config = preset("simcse", **{"model.name_or_path": tiny_model, "model.max_len": 65})
    json_path = os.path.join(tiny_model, "config.json")
    with pytest.raises(ValueError, match=rf"^config.model.max_len=65 is above the 64 positions "
                                         rf"of the encoder's position table "
                                         rf"\(max_position_embeddings=64 in {json_path}\): set "
                                         rf"config.model.max_len <= 64$"):
        config_check.validate(config)
    config.model.max_len = 64
    config_check.validate(config)
    roberta = family_dirs["roberta"][0]
    config = preset("simcse", **{"model.name_or_path": roberta, "model.max_len": 65})
    with pytest.raises(ValueError, match=r"max_len=65 is above the 64 positions .*"
                                         r"max_position_embeddings=66 less the pad_token_id \+ 1 "
                                         r"= 2 entries"):
        config_check.validate(config)
    # Relative positions only: no table to run off.
    config_check.validate(preset("simcse", **{"model.name_or_path": family_dirs["deberta-v3"][0],
                                              "model.max_len": 512}))
    # MiniLM's 512 (the 600), and a folder that is not there, named before any write.
    with pytest.raises(ValueError, match=r"max_len=600 is above the 512 positions"):
        config_check.validate(preset("simcse", **{"model.max_len": 600}))
    with pytest.raises(ValueError, match=r"^config.model.name_or_path='/no/such/model': "
                                         r"/no/such/model: no such checkpoint folder"):
        config_check.validate(preset("simcse", **{"model.name_or_path": "/no/such/model"}))


# -------------------------------------------------------------- item 10: nan inside a tuple


def test_nan_and_inf_in_a_tuple_override_are_floats():
    parse = cli_config.TupleParser().parse
    (nan,) = parse("(nan,)")
    assert isinstance(nan, float) and math.isnan(nan)
    assert parse("(0.5, inf, -inf)") == (0.5, math.inf, -math.inf)
    assert parse("(('DIR', Infinity),)") == (("DIR", math.inf),)
    assert math.isnan(parse("nan")[0])
    # Anything else is parsed exactly as ml_collections parses it.
    theirs = tuple_parser.TupleParser().parse
    for text in ("(1, 2)", "(0.5,)", "abc", "('a', 'b')", "/path/x*", "(tweets,nyt)", "()",
                 "[1, 2]", "3", "nancy", "(nan, tweets)"):
        assert parse(text) == theirs(text), text


@pytest.mark.parametrize("fields,message", [
    ({"data.packing_quantiles": (math.nan,)},
     r"^config.data.packing_quantiles=\(nan,\) holds nan: every number in it must be finite$"),
    ({"objective.soft_sentence.label_weights": (0.5, -math.inf),
      "objective.soft_sentence.labels": ("valence", "arousal")},
     r"^config.objective.soft_sentence.label_weights=\(0.5, -inf\) holds -inf"),
    ({"optimizer.clip_norm": math.inf}, r"^config.optimizer.clip_norm=inf must be finite$"),
    ({"data.scale_low": math.nan, "data.scale_high": 1.0},
     r"^config.data.scale_low=nan must be finite$"),
])
def test_validate_names_a_non_finite_field(fields, message):
    with pytest.raises(ValueError, match=message):
        config_check.validate(preset("softmcl", **fields))


# ---------------------------------------------- the command line: one line, nothing written


@pytest.fixture
def user_folder(tmp_path):
    """A folder of the user's with a file in it; the run's workdir would be its `run`."""
    folder = tmp_path / "user"
    folder.mkdir()
    (folder / "notes.txt").write_text("mine\n")
    return str(folder)


def _refused(argv: list[str], folder: str) -> str:
    """Run ``argv``; assert exit 1, no traceback, nothing under ``folder`` changed and its `run`
    not created; the error line."""
    before = tu.tree_hashes(folder)
    proc = tu.run_command(argv)
    line = tu.one_line_error(proc)
    print(f"{' '.join(argv[1:3])} ...: {line}")
    assert tu.tree_hashes(folder) == before
    assert not os.path.exists(os.path.join(folder, "run"))
    return line


def _bad_config_files(folder: str) -> dict[str, str]:
    paths = {"syntax": os.path.join(folder, "syntax.py"),
             "raises": os.path.join(folder, "raises.py")}
    with open(paths["syntax"], "w") as f:
        f.write("import ml_collections\n\n\ndef get_config(:\n    return None\n")
    with open(paths["raises"], "w") as f:
        f.write("def get_config():\n    c = {}\n    return c['model']\n")
    return paths


PROGRAMS = {
    "main": lambda config, folder, *extra: [
        sys.executable, os.path.join(tu.ROOT, "main.py"), f"--config={config}",
        f"--workdir={os.path.join(folder, 'run')}", *extra],
    "prepare": lambda config, folder, *extra: [
        sys.executable, "-m", "softmcl_jax.data.prepare", f"--config={config}",
        f"--out={os.path.join(folder, 'run')}", *extra],
}


@pytest.mark.parametrize("program", sorted(PROGRAMS))
def test_config_loading_mistakes_are_one_line(program, user_folder, tmp_path):
    """Item 13 for both programs: a field that does not exist (its full path, and the closest
    fields), a missing config file, a syntax error (file and line), a get_config that raises
    (file, line and the exception). None imports JAX: each costs a fraction of a second."""
    command = PROGRAMS[program]
    simcse = os.path.join(tu.ROOT, "configs", "simcse.py")
    bad = _bad_config_files(str(tmp_path))
    name = "main.py" if program == "main" else "prepare.py"

    line = _refused(command(simcse, user_folder, "--config.data.nonexistent=1"), user_folder)
    assert line.startswith(f"{name}: error: --config.data.nonexistent=1: config.data.nonexistent "
                           f"is not a field of {simcse}")
    line = _refused(command(simcse, user_folder, "--config.data.packign=False"), user_folder)
    assert "config.data.packign is not a field" in line and "config.data.packing" in line

    missing = os.path.join(str(tmp_path), "missing.py")
    line = _refused(command(missing, user_folder), user_folder)
    assert line == f"{name}: error: --config={missing}: the config file {missing} does not exist"

    line = _refused(command(bad["syntax"], user_folder), user_folder)
    assert line == f"{name}: error: --config={bad['syntax']}: {bad['syntax']}:4: syntax error: " \
                   "invalid syntax"

    line = _refused(command(bad["raises"], user_folder), user_folder)
    assert line == f"{name}: error: --config={bad['raises']}: {bad['raises']}:3: get_config() " \
                   "raised KeyError: 'model'"


@pytest.mark.slow
def test_validate_refusals_from_main_are_one_line(user_folder, tiny_model):
    """Items 5, 6 and 10 from main.py: refused by validate before the workdir is made."""
    simcse = os.path.join(tu.ROOT, "configs", "simcse.py")
    model = f"--config.model.name_or_path={tiny_model}"

    line = _refused(PROGRAMS["main"](
        simcse, user_folder, model, "--config.objective.infonce.query=ema/clean",
        "--config.objective.infonce.key=frozen/clean", "--config.objective.infonce.head=",
        "--config.objective.vsp.weight=1", "--config.objective.vsp.of=frozen/clean",
        "--config.objective.vsp.to=online/clean"), user_folder)
    assert ("ValueError: config.objective.infonce: query='ema/clean', key='frozen/clean'; "
            "config.objective.vsp: of='frozen/clean', to='online/clean'") in line
    assert "no gradient reaches the online encoder" in line

    line = _refused(PROGRAMS["main"](simcse, user_folder, model, "--config.model.max_len=65"),
                    user_folder)
    assert (f"ValueError: config.model.max_len=65 is above the 64 positions of the encoder's "
            f"position table (max_position_embeddings=64 in "
            f"{os.path.join(tiny_model, 'config.json')})") in line

    line = _refused(PROGRAMS["main"](simcse, user_folder, model,
                                     "--config.data.packing_quantiles=(nan,)"), user_folder)
    assert line.endswith("ValueError: config.data.packing_quantiles=(nan,) holds nan: every "
                         "number in it must be finite")


def test_prepare_refuses_nan_in_a_tuple(user_folder):
    """Item 10 from prepare's CLI: the float is refused naming the field."""
    simcse = os.path.join(tu.ROOT, "configs", "simcse.py")
    line = _refused(PROGRAMS["prepare"](simcse, user_folder,
                                        "--config.data.packing_quantiles=(0.5, nan)"), user_folder)
    assert line == ("error: ValueError: config.data.packing_quantiles=(0.5, nan) holds nan: every "
                    "number in it must be finite")
