"""SoftMCL with soft labels over valence, arousal and dominance (the paper's open question 1).

The paper's own kind of data: EmoBank sentences (its V, A and D ratings) for the sentence-level
term, Warriner et al.'s V/A/D means for the word-level term. Two sentences' (or words') label
distance is ``sum_d w_d |v_id - v_jd|`` over the three dimensions with w = 1/3 each, so it stays
on valence-alone's [0, 1] scale and the label temperature means the same; only what "similar"
means changes. Everything else is configs/softmcl.py.

The data are not shipped; point the fields at ../shared/data (or your copies):

    python main.py --config=configs/softmcl_vad.py --workdir=workdir/softmcl_vad \
      --config.data.path=../shared/data/emobank/emobank.csv \
      --config.data.lexicon=../shared/data/warriner_vad/Ratings_Warriner_et_al.csv \
      --config.data.lexicon_words=../shared/data/warriner_vad/splits/train.txt

EmoBank's train split only (``data.split``), and only Warriner's train words
(``data.lexicon_words``), so the evaluation suite's EmoBank and Warriner dev/test items stay unseen.
The valence probe at the end of the run uses the shipped VADER sentences, as the default job does.
"""

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from softmcl import get_config as get_softmcl  # noqa: E402

DIMS = ("valence", "arousal", "dominance")


def get_config():
    c = get_softmcl()
    c.name = "softmcl_vad"
    c.data.source = "emobank"
    c.data.path = ""  # emobank.csv: required, given on the command line (not shipped)
    c.data.split = "train"
    c.data.lexicon = "none"  # Warriner-format CSV: required (the words' A and D)
    c.data.lexicon_words = ""
    for term in (c.objective.soft_sentence, c.objective.soft_word):
        term.labels = DIMS
        term.label_weights = (1 / 3, 1 / 3, 1 / 3)
    return c
