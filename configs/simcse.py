"""Unsupervised SimCSE (the baseline): InfoNCE between two dropout views of each sentence."""

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from base import get_base  # noqa: E402


def get_config():
    c = get_base()
    c.name = "simcse"
    c.objective.infonce.weight = 1.0
    c.objective.infonce.temperature = 0.05
    c.optimizer.learning_rate = 3e-5
    return c
