"""SoftMCL anchored by InfoNCE against its own momentum keys: keeps SoftMCL's sentiment gains and
most of the encoder's meaning, at SoftMCL's cost (RESULTS.md, "Keeping the meaning").

Plain SoftMCL pulls sentences of similar valence together whatever they say, so valence becomes a
main axis of the space and similarity suffers (STS-B dev 86.7 -> ~69 on MiniLM). The anchor is
SimCSE's InfoNCE with a different positive: each MLM-masked sentence (the online pass SoftMCL's
queries already come from) must pick out its own clean momentum key (the pass its keys already
come from) among the batch's, through its own projection head, at tau = 0.05:

    L_anchor = -(1/B) sum_i log( exp(q_i . k_i / tau) / sum_j exp(q_i . k_j / tau) )

with ``k = sg(ema(clean))``. No extra encoder pass (SimCSE's two dropout views cost two more, with
gradients). On dev, over the seeds run so far, it keeps or beats every sentiment score of plain
SoftMCL and gets back most of the similarity; adding VSP against the frozen encoder gets back
the rest of the similarity but gives back part of the EmoBank gain (the mix table).

    python main.py --config=configs/softmcl_anchored.py --workdir=workdir/softmcl_anchored
"""

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from softmcl import get_config as get_softmcl  # noqa: E402


def get_config():
    c = get_softmcl()
    c.name = "softmcl_anchored"
    a = c.objective.infonce
    a.weight = 1.0
    a.query = "online/masked"  # SoftMCL's own online pass
    a.key = "ema/clean"  # SoftMCL's own momentum keys: the positive is the sentence's own key
    a.temperature = 0.05  # base.py's InfoNCE default, spelled out: the measured setting
    a.head = "projection"
    return c
