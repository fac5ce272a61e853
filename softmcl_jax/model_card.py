"""The model card (``README.md``) of an export, in the Hugging Face layout.

``render(config, info)`` writes YAML front matter (library, pipeline tag, tags, base model,
datasets, licence) and what was trained: the objective's terms and weights, the base model, the
data (source and count), steps, batch size, seed, hardware and the valence-probe line, then usage
and the papers of the terms used. ``python -m softmcl_jax.evaluate --checkpoint=EXPORT`` puts its
table between the evaluation markers (``set_evaluation``).
"""

from __future__ import annotations

import fcntl
import os
import shutil
import threading
from collections.abc import Mapping
from typing import Any

from softmcl_jax.objective import is_on

CARD_FILE = "README.md"
LOCK_FILE = ".README.md.lock"  # set_evaluation's writers take turns on it (flock)
EVAL_START = "<!-- softmcl_jax:evaluation:start -->"
EVAL_END = "<!-- softmcl_jax:evaluation:end -->"

# Short names the config accepts -> (hub id, licence) of the model they stand for.
KNOWN_BASES = {"minilm": ("sentence-transformers/all-MiniLM-L6-v2", "apache-2.0")}
# config.data.source -> (hub dataset id or None, what the card says).
SOURCES = {
    "vader": (None, "the VADER sentence sets (Hutto & Gilbert, 2014: tweets, movie reviews, "
                    "product reviews, NYT snippets; MIT licence), shipped with softmcl_jax"),
    "emobank": (None, "EmoBank (Buechel & Hahn, 2017)"),
    "goemotions": ("google-research-datasets/go_emotions", "GoEmotions (Demszky et al., 2020)"),
    "sst": ("stanfordnlp/sst2", "the Stanford Sentiment Treebank (Socher et al., 2013)"),
}
# Each paper, and the loss terms that come from it.
PAPERS = {
    "softmcl": (("soft_sentence", "soft_word", "mlm", "vsp", "vsp_word"),
                "Wang et al. SoftMCL: Soft Momentum Contrastive Learning for Fine-grained "
                "Sentiment-aware Pre-training. LREC-COLING 2024"),
    "retrofit": (("supcon",),
                 "Shah et al. Retrofitting Light-weight Language Models for Emotions using "
                 "Supervised Contrastive Learning. EMNLP 2023"),
    "softcse": (("softcse",),
                "Zhuang et al. SoftCSE (InfoNCE with similarity-weighted or softened "
                "negatives). CIKM 2024"),
    "lcl": (("lcl", "weighting_ce", "ce"),
            "Suresh & Ong. Not All Negatives are Equal: Label-Aware Contrastive Loss for "
            "Fine-grained Text Classification. EMNLP 2021"),
    "simcse": (("infonce", "softcse"),
               "Gao, Yao & Chen. SimCSE: Simple Contrastive Learning of Sentence Embeddings. "
               "EMNLP 2021. arXiv:2104.08821"),
}


def active_terms(config: Mapping[str, Any]) -> dict[str, float]:
    """``{term: weight}`` of the objective's terms that are on (``objective.is_on``), in config
    order."""
    return {name: float(t["weight"]) for name, t in dict(config["objective"]).items()
            if is_on(float(t["weight"]), t.get("weight_end"))}


def _weight(config: Mapping[str, Any], term: str, weight: float) -> str:
    """``"1"``, or ``"(100 -> 0 linearly)"`` for a scheduled weight."""
    end = dict(config["objective"])[term].get("weight_end")
    if end is None or float(end) == weight:
        return f"{weight:g}"
    return f"({weight:g} -> {float(end):g} linearly)"


def base_model(name_or_path: str) -> tuple[str | None, str | None]:
    """(hub id, licence) of the base model where known: a short name, or an ``org/name`` id."""
    if name_or_path in KNOWN_BASES:
        return KNOWN_BASES[name_or_path]
    if name_or_path.count("/") == 1 and not os.path.exists(name_or_path):
        return name_or_path, None
    return None, None


def papers(terms: Mapping[str, float]) -> list[str]:
    """The citations of the papers whose terms the objective uses."""
    return [cite for used_by, cite in PAPERS.values() if any(t in terms for t in used_by)]


def data_sources(data: Mapping[str, Any]) -> list[tuple[str, str, float]]:
    """(source, path, share of the batch) of each source the run read: the one
    ``data.source``, or each ``data.mixture`` entry (a prepared folder, or ``(field, value)``
    pairs over ``config.data``), its weight normalised."""
    mixture = list(data.get("mixture") or ())
    if not mixture:
        return [(str(data["source"]), str(data.get("path") or ""), 1.0)]
    total = sum(float(weight) for _, weight in mixture)
    out = []
    for spec, weight in mixture:
        if isinstance(spec, str):
            out.append(("prepared", spec, float(weight) / total))
            continue
        fields = {**data, **{str(k): v for k, v in spec}}
        out.append((str(fields["source"]), str(fields.get("path") or ""), float(weight) / total))
    return out


def _front_matter(config: Mapping[str, Any]) -> str:
    hub_id, licence = base_model(str(config["model"]["name_or_path"]))
    datasets = [SOURCES[s][0] for s, _, _ in data_sources(config["data"])
                if SOURCES.get(s, (None, ""))[0]]
    lines = ["---", "library_name: sentence-transformers", "pipeline_tag: sentence-similarity",
             "language:", "- en", f"license: {licence or 'other'}", "tags:"]
    lines += [f"- {t}" for t in ("sentence-transformers", "sentence-similarity",
                                 "feature-extraction", "sentiment", "emotion", "softmcl_jax",
                                 str(config.get("name") or "softmcl_jax"))]
    if hub_id:
        lines.append(f"base_model: {hub_id}")
    if datasets:
        lines += ["datasets:", *(f"- {d}" for d in dict.fromkeys(datasets))]
    return "\n".join(lines + ["---", ""])


def _training(config: Mapping[str, Any], info: Mapping[str, Any]) -> list[str]:
    model, data = config["model"], config["data"]
    terms = active_terms(config)
    sources = data_sources(data)

    def describe(source: str, path: str) -> str:
        what = ("the prepared folder" if source == "prepared" else
                SOURCES.get(source, (None, f"`{source}` data"))[1])
        return what + (f" (`{path}`)" if path else "")

    described = (describe(*sources[0][:2]) if len(sources) == 1 else
                 "a mixture of " + "; ".join(f"{describe(s, p)} at {share:.0%} of each batch"
                                             for s, p, share in sources))
    where = ""
    count = info.get("train_sentences")
    lines = ["## Training", "",
             f"- Method: `{config.get('name') or 'custom'}` (softmcl_jax), "
             f"loss = {' + '.join(f'{_weight(config, t, w)} * {t}' for t, w in terms.items())}",
             f"- Base model: `{model['name_or_path']}`; pooling `{model['pooling']}`, "
             f"max length {model['max_len']} tokens, dtype `{model['dtype']}`",
             f"- Training data: {described}{where}"
             + (f", {count:,} sentences" if count is not None else ""),
             f"- Steps: {info.get('steps', config['total_steps'])}; batch size "
             f"{config['batch_size']}; learning rate {config['optimizer']['learning_rate']:g}; "
             f"seed {config['seed']}",
             f"- Hardware: {info.get('hardware') or 'not recorded'}"]
    if info.get("probe_after") is not None:
        lines.append(f"- Valence probe (held-out VADER sentences, ridge regression on frozen "
                     f"embeddings, Pearson r): before {info['probe_before']:.3f} after "
                     f"{info['probe_after']:.3f}")
    if info.get("probe_similarity_kept") is not None:
        lines.append("- Semantic similarity kept (Spearman between the base encoder's and this "
                     "encoder's cosine similarities of held-out VADER sentence pairs: each "
                     "sentence's 5 nearest neighbours under the base encoder and 5 random "
                     f"partners): {info['probe_similarity_kept']:.2f}")
    return lines + [""]


def _usage(config: Mapping[str, Any]) -> list[str]:
    return ["## Usage", "", "sentence-transformers:", "", "```python",
            "from sentence_transformers import SentenceTransformer",
            "model = SentenceTransformer(\"PATH_TO_THIS_FOLDER\")",
            "vectors = model.encode([\"What a lovely day!\", \"That was awful.\"])",
            "```", "", "softmcl_jax (JAX, the same vectors):", "", "```python",
            "from softmcl_jax.evaluation.embed import embed_sentences",
            "from softmcl_jax.models import from_pretrained",
            "pre = from_pretrained(\"PATH_TO_THIS_FOLDER\")",
            "vectors = embed_sentences(pre, pre.params, pre.tokenizer_path, [\"What a lovely "
            f"day!\"], pooling=\"{config['model']['pooling']}\", "
            f"max_len={config['model']['max_len']})",
            "```", "", "Score it on MTEB's sentiment and emotion tasks (needs the Hugging Face "
            "hub):", "", "```python", "import mteb",
            "tasks = mteb.get_tasks(tasks=[\"EmotionClassification\", "
            "\"TweetSentimentExtractionClassification\", \"AmazonPolarityClassification\", "
            "\"ImdbClassification\"])",
            "results = mteb.evaluate(model, tasks)", "```", ""]


def render(config: Mapping[str, Any], info: Mapping[str, Any] | None = None, *,
           hidden_size: int | None = None, normalize: bool = False) -> str:
    """The card's markdown. ``info``: what the run measured (``steps``, ``train_sentences``,
    ``hardware``, ``probe_before``/``probe_after``); missing entries are left out."""
    info = info or {}
    dim = f"{hidden_size}-dimensional " if hidden_size else ""
    vec = "unit-length (normalised)" if normalize else "un-normalised"
    cites = papers(active_terms(config))
    lines = [_front_matter(config),
             f"# {config.get('name') or 'softmcl_jax'} sentence encoder", "",
             f"A sentiment- and emotion-aware sentence encoder trained with softmcl_jax "
             f"(JAX/Flax). It maps a sentence to a {dim}"
             f"{vec} `{config['model']['pooling']}`-pooled vector; compare vectors with cosine "
             "similarity.", "", *_training(config, info), "## Evaluation", "", EVAL_START,
             "Not evaluated yet: `python -m softmcl_jax.evaluate --checkpoint=THIS_FOLDER "
             "--data_dir=DATA --output=results.json` writes its table here.", EVAL_END, "",
             *_usage(config), "## Citation", ""]
    lines += [f"- {c}" for c in cites] or ["- softmcl_jax"]
    return "\n".join(lines) + "\n"


def set_evaluation(folder: str, table: str) -> bool:
    """Put ``table`` (markdown) between the evaluation markers of ``folder``'s card.

    Returns False, changing nothing, when the folder has no card of ours (no markers). The card
    is read and replaced under an exclusive ``flock`` on ``.README.md.lock`` beside it, and
    replaced by writing a temporary file and renaming it over the card: two evaluations writing
    at once leave one whole table, and a reader sees the old card or the new, never half of one.
    Raises ``OSError`` (e.g. ``PermissionError``) when the folder cannot be written; the card is
    then unchanged.
    """
    path = os.path.join(folder, CARD_FILE)
    if not _has_markers(path):  # someone else's card: not even a lock file is written there
        return False
    with open(os.path.join(folder, LOCK_FILE), "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # released when the file is closed
        with open(path) as f:
            text = f.read()
        start, end = text.find(EVAL_START), text.find(EVAL_END)
        if start < 0 or end < start:
            return False
        text = text[:start + len(EVAL_START)] + "\n" + table.strip() + "\n" + text[end:]
        tmp = f"{path}.tmp-{os.getpid()}-{threading.get_ident()}"
        try:
            with open(tmp, "w") as f:
                f.write(text)
            shutil.copymode(path, tmp)
            os.replace(tmp, path)
        except BaseException:
            if os.path.exists(tmp):
                os.remove(tmp)
            raise
    return True


def _has_markers(path: str) -> bool:
    try:
        with open(path) as f:
            text = f.read()
    except (FileNotFoundError, IsADirectoryError, UnicodeDecodeError):
        return False
    start = text.find(EVAL_START)
    return start >= 0 and text.find(EVAL_END) > start
