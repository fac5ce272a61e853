"""SoftCSE: SimCSE's InfoNCE with each negative down-weighted (or given a softer temperature) by
its similarity to the anchor; ``objective.softcse.mode`` is "weight" or "temperature"."""

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from base import get_base  # noqa: E402


def get_config():
    c = get_base()
    c.name = "softcse"
    t = c.objective.softcse
    t.weight = 1.0
    t.temperature = 0.05
    t.mode = "weight"  # or "temperature"
    t.strength = 1.0  # gamma: 0 is plain InfoNCE
    c.optimizer.learning_rate = 3e-5
    return c
