"""Label-aware contrastive learning (LCL) for fine-grained classification:
``alpha (L_ce + L_w) + (1 - alpha) L_LCL`` as three term weights (alpha = 0.5).

Default data: SST-5 (``--config.data.path=../shared/data/sst5/stsa.fine.train``).
"""

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from base import get_base  # noqa: E402

ALPHA = 0.5


def get_config():
    c = get_base()
    c.name = "lcl"
    c.data.source = "sst"
    c.data.path = "../shared/data/sst5/stsa.fine.train"
    c.data.num_labels = 5
    o = c.objective
    o.ce.weight = ALPHA
    o.weighting_ce.weight = ALPHA
    o.lcl.weight = 1.0 - ALPHA
    o.lcl.temperature = 0.3
    c.optimizer.learning_rate = 2e-5
    return c
