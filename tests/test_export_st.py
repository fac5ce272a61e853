"""The export as a sentence-transformers model: sentence-transformers itself loads it without its
mean-pooling fallback and encodes what this library embeds (mean, CLS, Normalize); transformers
still loads it; a folder written by sentence-transformers is read back with its pooling; the model
card parses as Hugging Face metadata and says what was trained."""

from __future__ import annotations

import functools
import logging

import huggingface_hub
import jax
import numpy as np
import pytest
import transformers
from sentence_transformers import SentenceTransformer

from softmcl_jax import model_card, objective
from softmcl_jax.evaluation.checkpoints import resolve_checkpoint
from softmcl_jax.evaluation.embed import embed_sentences
from softmcl_jax.export_format import read_sentence_transformers, write_export
from softmcl_jax.models import from_pretrained
from softmcl_jax.models.hf import resolve_name
from tests.test_evaluate import TEXTS  # the same sentences the embedder's own tests use
from tests.train_utils import load_config

MAX_LEN = 32
INFO = {"steps": 300, "train_sentences": 20703, "hardware": "1 x cpu (cpu)",
        "probe_before": 0.658, "probe_after": 0.702}


@functools.cache
def trained():
    """MiniLM with every weight moved a little: an export that only our weights explain."""
    pre = from_pretrained(resolve_name("minilm"))
    leaves, tree = jax.tree.flatten(pre.params)
    keys = jax.random.split(jax.random.key(0), len(leaves))
    moved = [x + 0.02 * np.std(x) * np.asarray(jax.random.normal(k, x.shape, x.dtype))
             for x, k in zip(leaves, keys, strict=True)]
    return pre, jax.tree.unflatten(tree, moved)


def export(folder, pooling: str, normalize: bool = False) -> str:
    pre, params = trained()
    config = load_config("softmcl", **{"model.pooling": pooling, "model.max_len": MAX_LEN,
                                       "export.normalize": normalize})
    return write_export(pre, params, str(folder), config, INFO)


# How sentence-transformers says it found no modules.json and built mean pooling itself: the
# wording of versions 2-4 and of version 5-6 (INFO level there).
FALLBACK = ("No sentence-transformers model found", "Creating a new one", "No modules.json found",
            "initializing a new")


def load_silently(path: str, caplog) -> SentenceTransformer:
    """SentenceTransformer(path), failing on its fallback or any warning it logs."""
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="sentence_transformers"):
        model = SentenceTransformer(path, device="cpu")
    said = [r.getMessage() for r in caplog.records if r.name.startswith("sentence_transformers")]
    fell_back = [m for m in said if any(f in m for f in FALLBACK)]
    assert not fell_back, f"sentence-transformers fell back: {fell_back}"
    assert any("Loading SentenceTransformer model from" in m for m in said), said
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING], said
    return model


@pytest.mark.parametrize("pooling", ["mean", "cls"])
def test_sentence_transformers_encodes_what_we_embed(pooling, tmp_path, caplog):
    path = export(tmp_path / "export", pooling)
    st = load_silently(path, caplog)
    assert st.max_seq_length == MAX_LEN and len(st) == 2  # Transformer, Pooling; no Normalize
    got = st.encode(TEXTS, convert_to_numpy=True, batch_size=4)
    pre, params = trained()
    tok = transformers.AutoTokenizer.from_pretrained(path)
    ours = embed_sentences(pre, params, tok, TEXTS, pooling=pooling, max_len=MAX_LEN)
    d = float(np.abs(got - ours).max())
    print(f"SentenceTransformer(export).encode vs ours ({pooling}): max|Δ| = {d:.2e}")
    assert d <= 1e-5
    # The weights are the export's, not the base model's.
    base = embed_sentences(pre, pre.params, tok, TEXTS, pooling=pooling, max_len=MAX_LEN)
    assert float(np.abs(got - base).max()) > 1e-3
    # transformers still loads the folder as a plain encoder, with every weight present.
    model, report = transformers.AutoModel.from_pretrained(path, output_loading_info=True)
    assert not report["missing_keys"] and not report["unexpected_keys"]
    # And our reader finds what sentence-transformers found.
    assert read_sentence_transformers(path) == {"encoder": path, "pooling": pooling,
                                                "normalize": False}
    assert resolve_checkpoint(path) == (path, pooling)


def test_the_fallback_check_catches_a_bare_transformers_folder(tmp_path, caplog):
    """The control for ``load_silently``: yesterday's export (no modules.json) trips it."""
    from softmcl_jax.models import save_pretrained

    pre, params = trained()
    bare = save_pretrained(pre, params, str(tmp_path / "bare"))
    with pytest.raises(AssertionError, match="fell back: .*No modules.json found"):
        load_silently(bare, caplog)


def test_normalize_module_gives_unit_vectors_of_ours(tmp_path, caplog):
    path = export(tmp_path / "export", "mean", normalize=True)
    st = load_silently(path, caplog)
    assert len(st) == 3 and type(st[2]).__name__ == "Normalize"
    got = st.encode(TEXTS, convert_to_numpy=True)
    pre, params = trained()
    ours = embed_sentences(pre, params, path, TEXTS, pooling="mean", max_len=MAX_LEN)
    np.testing.assert_allclose(got, ours / np.linalg.norm(ours, axis=1, keepdims=True),
                               atol=1e-6)


def test_reads_folders_written_by_sentence_transformers(tmp_path):
    """Both layouts: the shipped all-MiniLM-L6-v2 (sentence-transformers 2.0: pooling_mode_*
    flags, Normalize) and one saved by the installed version (``pooling_mode: "cls"``)."""
    from sentence_transformers.sentence_transformer.modules import Pooling, Transformer

    minilm = str(resolve_name("minilm"))
    assert read_sentence_transformers(minilm) == {"encoder": minilm, "pooling": "mean",
                                                  "normalize": True}
    t = Transformer(minilm, max_seq_length=MAX_LEN)
    saved = str(tmp_path / "st_cls")
    SentenceTransformer(modules=[t, Pooling(t.get_embedding_dimension(), pooling_mode="cls")],
                        device="cpu").save(saved)
    assert resolve_checkpoint(saved) == (saved, "cls")
    SentenceTransformer(modules=[t, Pooling(t.get_embedding_dimension(), pooling_mode="max")],
                        device="cpu").save(str(tmp_path / "st_max"))
    with pytest.raises(ValueError, match="'max'"):
        resolve_checkpoint(str(tmp_path / "st_max"))


@pytest.mark.parametrize("preset", ["softmcl", "lcl"])
def test_model_card_is_hub_metadata_and_says_what_was_trained(preset, tmp_path):
    config = load_config(preset)
    text = model_card.render(config.to_dict(), INFO, hidden_size=384)
    card = huggingface_hub.ModelCard(text)  # the hub's own parser of the front matter
    data = card.data.to_dict()
    assert data["library_name"] == "sentence-transformers"
    assert data["pipeline_tag"] == "sentence-similarity"
    assert data["base_model"] == "sentence-transformers/all-MiniLM-L6-v2"
    assert data["license"] == "apache-2.0" and "sentence-transformers" in data["tags"]
    weights = {k: v.weight for k, v in config.objective.items() if v.weight > 0}
    assert weights  # every active term is named with its weight, no inactive one
    for term, w in weights.items():
        assert f"{w:g} * {term}" in card.text
    for term in set(config.objective) - set(weights):
        assert f"* {term}" not in card.text
    assert "before 0.658 after 0.702" in card.text and "20,703 sentences" in card.text
    assert f"batch size {config.batch_size}" in card.text and "1 x cpu" in card.text
    assert ("Label-Aware Contrastive Loss" in card.text) == (preset == "lcl")
    assert ("SoftMCL" in card.text.split("## Citation")[1]) == (preset == "softmcl")


def test_the_card_of_a_mixture_names_every_source_and_its_share(monkeypatch):
    """softmcl_affect trains on VADER and GoEmotions: the card says both, with their shares of
    each batch, and lists GoEmotions' hub id; a prepared-folder entry is named as such."""
    monkeypatch.setenv("SOFTMCL_DATA_DIR", "/data")
    config = load_config("softmcl_affect").to_dict()
    text = model_card.render(config, INFO)
    card = huggingface_hub.ModelCard(text)
    assert card.data.to_dict()["datasets"] == ["google-research-datasets/go_emotions"]
    line = next(x for x in card.text.splitlines() if x.startswith("- Training data:"))
    assert "the VADER sentence sets" in line and "GoEmotions (Demszky et al., 2020)" in line
    assert "(`/data/goemotions/train.tsv`) at 50% of each batch" in line
    config["data"]["mixture"] = (("/prepared/a", 1.5), config["data"]["mixture"][0])  # + 0.5
    line = next(x for x in model_card.render(config, INFO).splitlines()
                if x.startswith("- Training data:"))
    assert "the prepared folder (`/prepared/a`) at 75% of each batch" in line
    assert "the VADER sentence sets" in line and "at 25% of each batch" in line


def test_model_card_states_a_scheduled_weight():
    config = load_config("softmcl", **{"objective.vsp.weight": 0.0,
                                       "objective.vsp.weight_end": 10.0})
    text = model_card.render(config.to_dict(), INFO)
    assert "(0 -> 10 linearly) * vsp" in text and "1 * soft_sentence" in text


@pytest.mark.parametrize("preset", ["softmcl", "softmcl_anchored", "retrofit", "lcl", "simcse",
                                    "softcse"])
@pytest.mark.parametrize("vsp", [(0.0, None), (0.0, 10.0), (3.0, 0.0)])
def test_the_card_lists_the_terms_the_plan_trains(preset, vsp):
    weight, end = vsp
    config = load_config(preset, **{"objective.vsp.weight": weight,
                                    "objective.vsp.weight_end": end})
    assert (sorted(model_card.active_terms(config.to_dict()))
            == sorted(objective.plan(config).terms))


def test_the_cards_usage_snippets_run_and_agree(tmp_path):
    """The card's sentence-transformers and softmcl_jax snippets, run as written on the export."""
    import re

    path = export(tmp_path / "export", "cls")
    card = open(f"{path}/README.md").read().replace("PATH_TO_THIS_FOLDER", path)
    blocks = re.findall(r"```python\n(.*?)```", card, re.S)
    assert len(blocks) == 3 and "import mteb" in blocks[2]  # MTEB needs the hub: not run here
    st_vars, our_vars = {}, {}
    exec(blocks[0], st_vars)
    exec(blocks[1], our_vars)
    np.testing.assert_allclose(st_vars["vectors"][:1], our_vars["vectors"], atol=1e-5)


def test_evaluation_table_goes_between_the_markers(tmp_path):
    (tmp_path / "README.md").write_text(model_card.render(load_config("softmcl").to_dict()))
    assert model_card.set_evaluation(str(tmp_path), "| task | n |\n|---|---|\n| sst2 | 9 |")
    assert model_card.set_evaluation(str(tmp_path), "| task | n |\n|---|---|\n| sst2 | 10 |")
    text = (tmp_path / "README.md").read_text()
    assert "| sst2 | 10 |" in text and "| sst2 | 9 |" not in text
    assert "Not evaluated yet" not in text and text.count(model_card.EVAL_START) == 1
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "README.md").write_text("# someone else's card\n")
    assert not model_card.set_evaluation(str(tmp_path / "other"), "| x |")
    assert (tmp_path / "other" / "README.md").read_text() == "# someone else's card\n"


def test_a_finished_run_exports_a_sentence_transformers_model_with_its_card(tmp_path, caplog,
                                                                            tiny_model):
    """End to end: main.py (CLS pooling, the probe on) -> workdir/export; the export CLI writes
    the same card from run_info.json."""
    import re
    import subprocess
    import sys

    from tests import train_utils as tu

    # The run's numbers (probe, similarity) are compared only with its own card: compiled fast.
    workdir = str(tmp_path / "run")
    proc = tu.run_main_fast("softmcl.py", workdir, tiny_model, **dict(
        tu.SOFTMCL_TINY, total_steps=4, model__pooling="cls", probe__enabled=True,
        probe__n_train=60, probe__n_test=40))
    line = re.search(r"valence probe \(held-out, Pearson r\): before (\S+) after (\S+)",
                     proc.stdout)
    assert line, proc.stdout[-2000:]
    kept = re.search(r"semantic similarity kept \(Spearman vs the base encoder's own "
                     r"similarities on held-out VADER pairs\): (\S+)", proc.stdout)
    assert kept and -1 <= float(kept[1]) <= 1, proc.stdout[-2000:]
    export = f"{workdir}/export"
    st = load_silently(export, caplog)
    pre = from_pretrained(export)
    ours = embed_sentences(pre, pre.params, export, TEXTS, pooling="cls", max_len=32)
    d = float(np.abs(st.encode(TEXTS, convert_to_numpy=True) - ours).max())
    print(f"end of run: SentenceTransformer(export) vs ours (cls): max|Δ| = {d:.2e}")
    assert d <= 1e-5 and st.max_seq_length == 32
    card = open(f"{export}/README.md").read()
    assert f"before {line[1]} after {line[2]}" in card and "Steps: 4;" in card
    assert f"5 random partners): {kept[1]}" in card
    assert resolve_checkpoint(workdir) == (export, "cls")
    out = str(tmp_path / "exported")
    cli = subprocess.run([sys.executable, "-m", "softmcl_jax.export", f"--workdir={workdir}",
                          f"--out={out}"], env=tu.fast_env(), capture_output=True,
                         text=True, timeout=300)
    assert cli.returncode == 0, cli.stderr[-3000:]
    assert open(f"{out}/README.md").read() == card
