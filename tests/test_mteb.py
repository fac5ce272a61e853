"""MTEB scores an export offline: an STS task built from a local file runs through ``mteb.evaluate``
on ``SentenceTransformer(export)``, with every socket connection refused, and its cosine
correlations are the ones computed from this library's own embeddings of the same pairs."""

from __future__ import annotations

import csv
import socket

import mteb
import numpy as np
from datasets import Dataset, DatasetDict
from mteb.abstasks.sts import AbsTaskSTS
from mteb.abstasks.task_metadata import TaskMetadata
from scipy.stats import pearsonr, spearmanr
from sentence_transformers import SentenceTransformer

from softmcl_jax.data import load_vader_sentences
from softmcl_jax.evaluation.embed import embed_sentences
from softmcl_jax.models import from_pretrained
from tests.test_export_st import export

N_PAIRS = 120


def write_pairs(path: str) -> None:
    """VADER sentence pairs scored 0..5 by how close their valences are (a local STS file)."""
    s = load_vader_sentences()[:2 * N_PAIRS]
    with open(path, "w", newline="") as f:
        w = csv.writer(f, delimiter="\t")
        w.writerow(["sentence1", "sentence2", "score"])
        for a, b in zip(s[0::2], s[1::2], strict=True):
            w.writerow([a.text, b.text, 5 * (1 - abs(a.valence - b.valence))])


def read_pairs(path: str) -> dict[str, list]:
    with open(path, newline="") as f:
        rows = list(csv.DictReader(f, delimiter="\t"))
    return {"sentence1": [r["sentence1"] for r in rows],
            "sentence2": [r["sentence2"] for r in rows],
            "score": [float(r["score"]) for r in rows]}


def local_sts_task(path: str) -> AbsTaskSTS:
    class LocalValenceSTS(AbsTaskSTS):
        metadata = TaskMetadata(
            name="LocalValenceSTS", type="STS", main_score="cosine_spearman",
            description="VADER sentence pairs scored by valence closeness (a local file).",
            reference="https://github.com/cjhutto/vaderSentiment",
            dataset={"path": "local/valence-sts", "revision": "local"}, category="t2t",
            modalities=["text"], eval_splits=["test"], eval_langs=["eng-Latn"],
            date=("2014-01-01", "2014-12-31"), domains=["Reviews"], task_subtypes=[],
            license="mit", annotations_creators="derived", dialect=[],
            sample_creation="found", bibtex_citation="")
        min_score, max_score = 0, 5

        def load_data(self, **kwargs) -> None:
            self.dataset = DatasetDict({"test": Dataset.from_dict(read_pairs(path))})
            self.data_loaded = True

    return LocalValenceSTS()


def test_mteb_scores_an_export_offline(tmp_path, monkeypatch):
    connections = []

    def refuse(sock, address, *a, **k):
        connections.append(address)
        raise OSError(f"test: no network ({address})")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    path = export(tmp_path / "export", "mean")
    pairs = str(tmp_path / "pairs.tsv")
    write_pairs(pairs)
    result = mteb.evaluate(SentenceTransformer(path, device="cpu"), local_sts_task(pairs),
                           cache=None)
    assert not connections, connections
    scores = result.task_results[0].scores["test"][0]

    data = read_pairs(pairs)
    pre = from_pretrained(path)
    a, b = (embed_sentences(pre, pre.params, path, data[k], max_len=32)
            for k in ("sentence1", "sentence2"))
    cos = (a * b).sum(1) / np.linalg.norm(a, axis=1) / np.linalg.norm(b, axis=1)
    ours = {"cosine_pearson": pearsonr(data["score"], cos).statistic,
            "cosine_spearman": spearmanr(data["score"], cos).statistic}
    print(f"mteb on the export: {scores['cosine_pearson']:.6f} / "
          f"{scores['cosine_spearman']:.6f}; ours: {ours['cosine_pearson']:.6f} / "
          f"{ours['cosine_spearman']:.6f}")
    for k, v in ours.items():
        assert abs(scores[k] - v) < 1e-5, (k, scores[k], v)
    assert scores["main_score"] == scores["cosine_spearman"]
