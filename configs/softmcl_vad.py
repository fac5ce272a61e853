"""SoftMCL with soft labels over valence, arousal and dominance (the paper's open question 1).

The paper's own kind of data: EmoBank sentences (its V, A and D ratings) for the sentence-level
term, Warriner et al.'s V/A/D means for words (``data.lexicon``) for the word-level term. Two
sentences' (or words') label distance is ``sum_d w_d |v_id - v_jd|`` over the three dimensions
with w = 1/3 each, in spread units (``data.rating_unit="spread"``: each dimension over its mean
absolute difference in the training data), so the distance of two random items is 1 on average
whichever dimensions are compared, and each dimension counts by its weight alone; only what
"similar" means changes. The label temperature, 0.4 spreads, is the sharpness configs/softmcl.py
has on the VADER data.

Why not the scale's units: EmoBank's ratings sit in a narrow band of their 1..5 scale (two random
training sentences differ by 0.09 in valence on [0, 1], VADER's by 0.24; arousal and dominance
vary less still), so at the VADER preset's label temperature the soft targets are nearly uniform
over the queue, and training on them made MiniLM worse on every sentence-level task, EmoBank
valence included (RESULTS.md, "Affect dimensions"). Everything else is configs/softmcl.py.

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
# In spread units: configs/softmcl.py's 0.1 on the VADER data's scale, where two training
# sentences (two rated tokens) differ by 0.237 (0.252) in valence on average, is 0.42 (0.40).
LABEL_TEMPERATURE = 0.4


def get_config():
    c = get_softmcl()
    c.name = "softmcl_vad"
    c.data.source = "emobank"
    c.data.path = ""  # emobank.csv: required, given on the command line (not shipped)
    c.data.split = "train"
    c.data.lexicon = "none"  # Warriner-format CSV: required (the words' A and D)
    c.data.lexicon_words = ""
    c.data.rating_unit = "spread"
    for term in (c.objective.soft_sentence, c.objective.soft_word):
        term.labels = DIMS
        term.label_weights = (1 / 3, 1 / 3, 1 / 3)
        term.label_temperature = LABEL_TEMPERATURE
    return c
