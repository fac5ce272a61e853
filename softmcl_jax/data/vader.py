"""The VADER lexicon and rated sentences shipped in ``resources/`` (MIT; Hutto & Gilbert 2014).

How the files were derived from vaderSentiment 3.3.2, their formats and counts:
``softmcl_jax/data/resources/README.md``.
"""

from __future__ import annotations

import contextlib
import importlib.resources
from collections.abc import Iterable, Iterator
from pathlib import Path

from softmcl_jax.data.readers import read_vader_lexicon, read_vader_sentences
from softmcl_jax.data.records import Sentence

# set name -> shipped file; the names follow the paper's four domains
VADER_SENTENCE_SETS = {
    "tweets": "vader_tweets.tsv.gz",  # 4,200 tweet-like texts
    "movie_reviews": "vader_movie_reviews.tsv.gz",  # 10,605 snippets (Pang & Lee 2004)
    "product_reviews": "vader_product_reviews.tsv.gz",  # 3,708 snippets (Hu & Liu 2004)
    "nyt": "vader_nyt.tsv.gz",  # 5,190 sentences of NYT opinion editorials
}
VADER_LEXICON = "vader_lexicon.tsv.gz"
# Raters (lexicon and sentences alike) chose an integer from -4 "extremely negative" to +4
# "extremely positive"; the sentence means lie in -3.875 .. 3.941, inside that scale.
VADER_SCALE = (-4.0, 4.0)


@contextlib.contextmanager
def _resource(name: str) -> Iterator[Path]:
    # as_file gives a real path even when the package is installed zipped.
    with importlib.resources.as_file(
        importlib.resources.files("softmcl_jax.data") / "resources" / name
    ) as path:
        yield path


def load_vader_lexicon() -> dict[str, float]:
    """VADER's 7,506 tokens -> mean valence of 10 raters mapped from -4..4 to [0, 1].

    ``(mean + 4) / 8``: "good" (mean 1.9) is 0.7375. The file has 7,520 rows: 14 tokens appear
    twice with different means, and, as in vaderSentiment itself, the later row wins (logged).
    """
    with _resource(VADER_LEXICON) as path:
        return read_vader_lexicon(path, scale=VADER_SCALE, duplicates="last")


def load_vader_sentences(
    sets: Iterable[str] = ("tweets", "movie_reviews", "product_reviews", "nyt"),
) -> list[Sentence]:
    """VADER's human-rated sentences (23,703 in the four sets), valence in [0, 1].

    Each sentence's valence is the mean of 15-99 raters' integer ratings on -4..4, mapped by
    ``(mean + 4) / 8`` (the rating scale, not the observed range, so sets stay comparable).
    ``split`` is None (the sets have no splits); ``where`` names the shipped file and line, which
    is also the line in the original ``*_GroundTruth.txt``. Order: as ``sets``, then file order.
    """
    names = (sets,) if isinstance(sets, str) else tuple(sets)
    unknown = [s for s in names if s not in VADER_SENTENCE_SETS]
    if unknown:
        raise ValueError(f"unknown VADER sentence sets {unknown}: use {list(VADER_SENTENCE_SETS)}")
    out: list[Sentence] = []
    for name in names:
        with _resource(VADER_SENTENCE_SETS[name]) as path:
            out.extend(read_vader_sentences(path, scale=VADER_SCALE))
    return out
