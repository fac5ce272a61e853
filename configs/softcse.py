"""SoftCSE: SimCSE's InfoNCE with each negative down-weighted (or given a softer temperature) by
its similarity to the anchor; ``loss.softcse_mode`` is "weight" or "temperature"."""

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from base import get_base  # noqa: E402


def get_config():
    c = get_base()
    c.method = "softcse"
    c.loss.temperature = 0.05
    c.loss.softcse_mode = "weight"  # or "temperature"
    c.loss.softcse_strength = 1.0  # gamma: 0 is plain InfoNCE
    c.optimizer.learning_rate = 3e-5
    return c
