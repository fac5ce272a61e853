"""Emotion retrofitting: SupCon on a projection head over single-label GoEmotions comments, plus
vector-space preservation (VSP) against a frozen copy of the encoder, weighted by lambda.

Needs the GoEmotions TSV: ``--config.data.path=../shared/data/goemotions/train.tsv``.
"""

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from base import get_base  # noqa: E402


def get_config():
    c = get_base()
    c.name = "retrofit"
    c.data.source = "goemotions"
    c.data.path = "../shared/data/goemotions/train.tsv"
    c.data.num_labels = 28
    c.data.single_label_only = True
    c.objective.supcon.weight = 1.0
    c.objective.supcon.temperature = 0.1
    c.objective.vsp.weight = 1.0  # lambda
    c.optimizer.learning_rate = 2e-5
    return c
