"""What benchmarks/reproduce.py runs: every training run of RESULTS.md, as a preset plus overrides.

A run is ``configs/<config>.py`` with ``--config.<override>`` flags (``{data}`` stands for
``--data_dir``), the seeds it gets (all asked for, or one: the temperature grid's) and the
evaluation tasks it is scored on (the whole suite, or the few a grid surface needs). Runs come in
groups, one per part of RESULTS.md:

* ``METHODS``: the four methods of the main table, each its own preset.
* ``MIXES``: SoftMCL plus a semantic anchor (VSP against the frozen encoder, SimCSE's InfoNCE),
  the search for an objective that keeps both the sentiment gains and the similarity.
* ``AFFECT``: soft labels over valence, arousal and dominance vs valence alone (the SoftMCL
  paper's open question 1), on EmoBank train and Warriner's train words.
* ``GRID``: SoftMCL's feature temperature x label temperature, one seed (open question 3).
* ``AFFECT_MIX``: the all-affect recipe (``configs/softmcl_affect.py``: VADER's rated sentences
  mixed with GoEmotions' emotion labels), SupCon or LCL on a head or on the pooled output, one
  seed (a screen).
"""

from __future__ import annotations

import os
import runpy
from dataclasses import dataclass


@dataclass(frozen=True)
class Run:
    """``configs/<config>.py`` plus ``--config.<override>`` flags; ``data`` says what it trains
    on (the compute table); ``only_seed`` runs it for that seed alone (None: every seed asked
    for); ``tasks`` are the evaluation tasks ("" = the whole suite)."""

    config: str
    data: str
    overrides: tuple[str, ...] = ()
    only_seed: int | None = None
    tasks: str = ""

    def flags(self, data_dir: str) -> list[str]:
        data = data_dir.rstrip("/") or "/"
        return [f"--config.{o.format(data=data)}" for o in self.overrides]


VADER = "shipped VADER sentences + lexicon"
METHODS = {
    "simcse": Run("simcse", "shipped VADER sentences (text)"),
    "softmcl": Run("softmcl", VADER),
    "retrofit": Run("retrofit", "goemotions/train.tsv", ("data.path={data}/goemotions/train.tsv",)),
    "lcl": Run("lcl", "sst5/stsa.fine.train", ("data.path={data}/sst5/stsa.fine.train",)),
}


def vsp(weight: float, of: str = "online/masked", to: str = "frozen/masked",
        mode: str = "pairwise", term: str = "vsp") -> tuple[str, ...]:
    """Overrides that add VSP at ``weight``. The default compares SoftMCL's own online pass
    (masked input) with the frozen encoder on the same input: 0 at step 0 but for dropout, so it
    measures the drift alone, and one extra forward pass without gradients. ``term="vsp_word"``:
    the same on the lexicon words' token vectors."""
    return (f"objective.{term}.weight={weight:g}", f"objective.{term}.of={of}",
            f"objective.{term}.to={to}", f"objective.{term}.mode={mode}")


VSP_WEIGHTS = (10.0, 30.0, 100.0, 300.0)  # the lambda sweep (the trade-off plot's curve)


def vsp_run(weight: float) -> str:
    return f"softmcl_vsp{weight:g}"


def temperatures(tau: float, label_tau: float) -> tuple[str, ...]:
    """Overrides that set SoftMCL's feature temperature ``tau`` and label temperature
    ``label_tau`` on both its soft-label terms (sentence and word)."""
    return tuple(f"objective.{term}.{knob}={value:g}" for term in ("soft_sentence", "soft_word")
                 for knob, value in (("temperature", tau), ("label_temperature", label_tau)))


SIMCSE_ANCHOR = ("objective.infonce.weight=1", "objective.infonce.query=online/clean",
                 "objective.infonce.key=online/clean/2")
EMA_ANCHOR = ("objective.infonce.weight=1", "objective.infonce.query=online/masked",
              "objective.infonce.key=ema/clean")
MIXES = {
    **{vsp_run(w): Run("softmcl", VADER, vsp(w)) for w in VSP_WEIGHTS},
    # SimCSE's own anchor: InfoNCE between two dropout views of the clean sentence.
    "softmcl_simcse": Run("softmcl", VADER, SIMCSE_ANCHOR),
    # SimCSE kept the emotion and EmoBank gains but half the similarity; VSP the reverse.
    "softmcl_simcse_vsp10": Run("softmcl", VADER, (*SIMCSE_ANCHOR, *vsp(10))),
    # The same anchor at no extra encoder pass: the positive of the masked sentence is its own
    # clean momentum key (both passes run for SoftMCL anyway); SimCSE's two dropout views cost
    # two more passes with gradients (1.8x the step time).
    "softmcl_ema_infonce": Run("softmcl", VADER, EMA_ANCHOR),
    "softmcl_ema_infonce_vsp10": Run("softmcl", VADER, (*EMA_ANCHOR, *vsp(10))),
    "softmcl_ema_infonce_vsp3": Run("softmcl", VADER, (*EMA_ANCHOR, *vsp(3))),
    "softmcl_ema_infonce3": Run("softmcl", VADER, (*EMA_ANCHOR[1:], "objective.infonce.weight=3")),
    # A lambda schedule: SoftMCL free at first (the sentiment restructuring), VSP ramped in to
    # pull the similarity structure back by the end.
    "softmcl_vsp0to30": Run("softmcl", VADER, (*vsp(0), "objective.vsp.weight_end=30")),
    # MiniLM has no MLM head: the term trains a new one and sends its early gradients into the
    # encoder. Without it, does the encoder keep more of its meaning?
    "softmcl_mlm0": Run("softmcl", VADER, ("objective.mlm.weight=0",)),
    # VSP holds the similarity structure; can a larger step size buy back the sentiment gains?
    "softmcl_vsp30_lr2e-4": Run("softmcl", VADER, (*vsp(30), "optimizer.learning_rate=2e-4")),
    # Under VSP the sentence-level valence gain (EmoBank) goes first: weigh that term up.
    "softmcl_vsp10_sent3": Run("softmcl", VADER, (*vsp(10), "objective.soft_sentence.weight=3")),
    # More past keys: finer valence neighbourhoods for the soft targets (8x the preset's queues).
    "softmcl_vsp30_q8x": Run("softmcl", VADER, (*vsp(30), "objective.soft_sentence.queue_size=8192",
                                                 "objective.soft_word.queue_size=32768")),
    # The temperature grid's warmer feature temperature (tau 0.4 beat the preset's 0.1 on STS-B
    # and on every sentiment score at seed 0), anchored twice.
    "softmcl_t0.4_ema_infonce_vsp3": Run("softmcl", VADER, (*temperatures(0.4, 0.1), *EMA_ANCHOR,
                                                             *vsp(3))),
    # At tau 0.4 the soft-label terms disturb the space less: is the InfoNCE anchor alone enough
    # (it kept every sentiment gain at tau 0.1, VSP cost EmoBank and Warriner)?
    "softmcl_t0.4_ema_infonce": Run("softmcl", VADER, (*temperatures(0.4, 0.1), *EMA_ANCHOR)),
    # It was not (STS-B 84.1, seed 0); VSP 3 was, but cost EmoBank and Warriner: between them.
    # configs/softmcl_anchored.py (closest to the goal, 3 seeds).
    "softmcl_t0.4_ema_infonce_vsp1": Run("softmcl", VADER, (*temperatures(0.4, 0.1), *EMA_ANCHOR,
                                                             *vsp(1))),
    # The issue's "VSP on the word level too": the recommended mix with the lexicon words'
    # token vectors also held to the frozen encoder's (the words SoftMCL's word term moves).
    "softmcl_t0.4_ema_infonce_vsp1_word1": Run(
        "softmcl", VADER, (*temperatures(0.4, 0.1), *EMA_ANCHOR, *vsp(1),
                           *vsp(1, term="vsp_word"))),
}

_EMOBANK_VAD = ("data.path={data}/emobank/emobank.csv",
                "data.lexicon={data}/warriner_vad/Ratings_Warriner_et_al.csv",
                "data.lexicon_words={data}/warriner_vad/splits/train.txt")
AFFECT = {
    "softmcl_vad": Run("softmcl_vad", "EmoBank train + Warriner train words (V, A, D)",
                       _EMOBANK_VAD),
    "softmcl_v": Run("softmcl_vad", "EmoBank train + Warriner train words (V only)",
                     (*_EMOBANK_VAD, "objective.soft_sentence.labels=('valence',)",
                      "objective.soft_sentence.label_weights=(1.0,)",
                      "objective.soft_word.labels=('valence',)",
                      "objective.soft_word.label_weights=(1.0,)")),
}

# Feature temperature tau x label temperature (the paper's lambda); the preset has 0.1 x 0.1.
# tau 0.8 was added when 0.4, the first grid's edge, scored best: the row brackets the optimum.
FEATURE_TEMPERATURES = (0.05, 0.1, 0.2, 0.4, 0.8)
LABEL_TEMPERATURES = (0.05, 0.1, 0.2, 0.4)
GRID_TASKS = "sst2,emobank,warriner,stsb"
GRID_SEED = 0  # the grid's one seed; its preset cell is the softmcl run of this seed


PRESET_TEMPERATURES = (0.1, 0.1)  # configs/softmcl.py's (a test checks)


def grid_run(tau: float, label_tau: float) -> str:
    """The run of a grid cell; the preset's own cell is the softmcl run (seed ``GRID_SEED``)."""
    return "softmcl" if (tau, label_tau) == PRESET_TEMPERATURES else f"grid_t{tau:g}_l{label_tau:g}"


GRID = {
    grid_run(t, lt): Run("softmcl", VADER, temperatures(t, lt), only_seed=GRID_SEED,
                         tasks=GRID_TASKS)
    for t in FEATURE_TEMPERATURES for lt in LABEL_TEMPERATURES
    if (t, lt) != PRESET_TEMPERATURES
}

# The all-affect recipe (issue 27): configs/softmcl_affect.py, the anchored SoftMCL on VADER's
# rated sentences mixed 0.5 / 0.5 with GoEmotions' single-label comments, plus a term over the
# 28 emotion classes. The screen (one seed, the whole suite): SupCon or LCL, each on its own
# projection head ("emotion") or on the pooled output that the evaluation reads.
AFFECT_MIX_DATA = "shipped VADER sentences + lexicon + GoEmotions train (single-label)"
# The preset's own mixture() (configs/softmcl_affect.py), so the entries are declared once.
_PRESET_MIXTURE = runpy.run_path(
    os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "configs",
                 "softmcl_affect.py"))["mixture"]


def affect_mixture(vader_share: float) -> str:
    """The override of the preset's mixture with GoEmotions under --data_dir (the preset reads
    $SOFTMCL_DATA_DIR): VADER at ``vader_share`` of each batch, GoEmotions the rest. The value
    is the (field, value) pairs literal (config_check.mixture_entries) the preset builds, with
    no braces but {data}'s."""
    entries = _PRESET_MIXTURE("{data}/goemotions/train.tsv", (vader_share, 1 - vader_share))
    return f"data.mixture={entries!r}"


AFFECT_MIXTURE = affect_mixture(0.5)
# LCL as configs/lcl.py sets it (alpha = 0.5: ce + weighting_ce at 0.5, lcl at 0.5, tau 0.3)
# in place of SupCon.
_LCL = ("objective.supcon.weight=0", "objective.ce.weight=0.5",
        "objective.weighting_ce.weight=0.5", "objective.lcl.weight=0.5",
        "objective.lcl.temperature=0.3")
AFFECT_MIX = {
    # SupCon at weight 1 (the preset's first value; it is 0.05 now, the screen's pick).
    "affect_supcon_head": Run("softmcl_affect", AFFECT_MIX_DATA,
                              (AFFECT_MIXTURE, "objective.supcon.weight=1"), only_seed=GRID_SEED),
    "affect_supcon_pooled": Run("softmcl_affect", AFFECT_MIX_DATA,
                                (AFFECT_MIXTURE, "objective.supcon.weight=1",
                                 "objective.supcon.head="), only_seed=GRID_SEED),
    "affect_lcl_head": Run("softmcl_affect", AFFECT_MIX_DATA,
                           (AFFECT_MIXTURE, *_LCL, "objective.lcl.head=emotion"),
                           only_seed=GRID_SEED),
    "affect_lcl_pooled": Run("softmcl_affect", AFFECT_MIX_DATA,
                             (AFFECT_MIXTURE, *_LCL, "objective.lcl.head="),
                             only_seed=GRID_SEED),
    # The first screen overshot the emotion goal (AMI 26-31 against 19) and paid in STS-B
    # (82-83 with SupCon, 76 with LCL) and word valence: SupCon on its head at a third of the
    # weight, alone and with VSP 3 to hold the similarity.
    "affect_supcon0.3": Run("softmcl_affect", AFFECT_MIX_DATA,
                            (AFFECT_MIXTURE, "objective.supcon.weight=0.3"), only_seed=GRID_SEED),
    "affect_supcon0.3_vsp3": Run("softmcl_affect", AFFECT_MIX_DATA,
                                 (AFFECT_MIXTURE, "objective.supcon.weight=0.3",
                                  "objective.vsp.weight=3"), only_seed=GRID_SEED),
    # SupCon 0.3 still overshot AMI (28) and kept STS-B, SST-2 and Warriner below the goal: less
    # emotion pressure, as a lower weight or as fewer GoEmotions rows per batch.
    "affect_supcon0.1": Run("softmcl_affect", AFFECT_MIX_DATA,
                            (AFFECT_MIXTURE, "objective.supcon.weight=0.1"), only_seed=GRID_SEED),
    "affect_supcon0.3_mix0.75": Run("softmcl_affect", AFFECT_MIX_DATA,
                                    (affect_mixture(0.75), "objective.supcon.weight=0.3"),
                                    only_seed=GRID_SEED),
    # SupCon 0.1 reached STS-B 86.2 at AMI 24.1, while SST-2 stayed at 83 at every weight and
    # the 0.75 mix changed nothing: the control without the emotion term (does the GoEmotions
    # text itself cost SST-2?) and a weight between 0.1 and none.
    "affect_supcon0": Run("softmcl_affect", AFFECT_MIX_DATA,
                          (AFFECT_MIXTURE, "objective.supcon.weight=0"), only_seed=GRID_SEED),
    "affect_supcon0.03": Run("softmcl_affect", AFFECT_MIX_DATA,
                             (AFFECT_MIXTURE, "objective.supcon.weight=0.03"),
                             only_seed=GRID_SEED),
    # Without SupCon the mixture keeps STS-B (86.8) but not EmoBank (0.608) and adds no emotion
    # clustering (AMI 13.8); SupCon 0.03 meets STS-B and SST-2 (86.9, 85.1) and falls short on
    # AMI (17.2), 0.1 the other way round (24.1, SST-2 83.0). Between the two: its seed 0 is its
    # screen entry, and its other seeds go on only if that one is the closest to the goal.
    "affect_supcon0.05": Run("softmcl_affect", AFFECT_MIX_DATA,
                             (AFFECT_MIXTURE, "objective.supcon.weight=0.05")),
}

RUNS: dict[str, Run] = {**METHODS, **MIXES, **AFFECT, **GRID, **AFFECT_MIX}

# The recipe (configs/softmcl_anchored.py, the default job) is this run of the mixes.
RECIPE = "softmcl_t0.4_ema_infonce_vsp1"
# The all-affect preset: the screen's closest run to the goal, at 3 seeds (configs/softmcl_affect.py
# is this run's definition).
AFFECT_RECIPE = "affect_supcon0.05"

# Issue 27's goal for the all-affect recipe (means over 3 seeds, dev): the recipe's similarity
# and sentiment figures and retrofitting's emotion clustering, all at once.
AFFECT_GOAL = {("stsb", "spearman"): 0.865, ("sst2", "acc"): 0.849, ("emobank", "pearson"): 0.621,
               ("warriner", "pearson"): 0.778, ("goemotions", "ami"): 0.190}

# The paper's protocol: the encoders fine-tuned on every task type (softmcl_jax.finetune.TASKS),
# with the same hyper-parameters (configs/finetune.py) for each.
FINETUNE_ENCODERS = ("base", "softmcl", RECIPE, AFFECT_RECIPE)
FINETUNE_TASKS = ("sst2", "sst5", "emobank", "semeval14_laptops", "semeval14_restaurants",
                  "warriner")

# Issue 15's goal, all at once (means over seeds, dev): SoftMCL's sentiment scores of the
# padded-era RESULTS.md and the base encoder's similarity. (task, metric) -> at least.
GOAL = {("stsb", "spearman"): 0.865, ("sst2", "acc"): 0.834, ("emobank", "pearson"): 0.624,
        ("warriner", "pearson"): 0.785}
SENTIMENT = (("sst2", "acc"), ("emobank", "pearson"), ("warriner", "pearson"))
