"""Label-aware contrastive learning (LCL) for fine-grained classification: classifier CE +
weighting-network CE + label-aware contrast, mixed by ``loss.alpha``.

Default data: SST-5 (``--config.data.path=../shared/data/sst5/stsa.fine.train``).
"""

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from base import get_base  # noqa: E402


def get_config():
    c = get_base()
    c.method = "lcl"
    c.data.source = "sst"
    c.data.path = "../shared/data/sst5/stsa.fine.train"
    c.data.num_labels = 5
    c.loss.temperature = 0.3
    c.loss.alpha = 0.5
    c.optimizer.learning_rate = 2e-5
    return c
