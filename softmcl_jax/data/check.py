"""Validate a data file and print what is in it.

    python -m softmcl_jax.data.check --format=emobank PATH [PATH ...] [--on_bad_row=raise]
    python -m softmcl_jax.data.check --format=sst --num_labels=5 stsa.fine.train
    python -m softmcl_jax.data.check --format=csv --text_column=text --valence_column=v \\
        --scale 1 9 my.csv

Prints, per file: every bad row, each on its own line as ``PATH:LINE: what is wrong``, then
records read (good rows only), the count of bad rows, the valence range (in [0, 1] and on the
stated scale), the split and label histograms, the score range (STS-B). By default
(``--on_bad_row=skip``) the whole file is read and every bad row is listed; with
``--on_bad_row=raise`` the first bad row stops the check of that file and is the only one
printed. A problem with a file as a whole (empty, a header without a needed column) is printed
the same way and ends that file's check; a file that cannot be read is reported as
``cannot read``. Exit status: 0 when every row of every file was good, 1 when any row was
bad or a file could not be read, 2 for a usage error.
"""

from __future__ import annotations

import argparse
import collections
import logging
import sys
from collections.abc import Sequence
from typing import Any

from softmcl_jax.data import readers
from softmcl_jax.data.records import AspectExample, BadRows, DataError, Sentence, SentencePair

FORMATS = (
    "warriner",
    "vader_lexicon",
    "vader_sentences",
    "emobank",
    "goemotions",
    "sst",
    "glue_sst2",
    "semeval14",
    "stsb",
    "csv",
    "jsonl",
)


class _Collect(BadRows):
    """The readers' bad-row policy, collecting without logging: the check prints each itself."""

    raised: DataError | None = None

    def handle(self, error: DataError) -> None:
        if self.policy == "raise":
            self.raised = error
            raise error
        self.skipped.append(error)


def _read(fmt: str, path: str, args: argparse.Namespace, bad: BadRows) -> Any:
    scale = {} if args.scale is None else {"scale": tuple(args.scale)}
    labels = {} if args.num_labels is None else {"num_labels": args.num_labels}
    if fmt == "warriner":
        return readers.read_warriner(path, on_bad_row=bad, **scale)
    if fmt == "vader_lexicon":
        return readers.read_vader_lexicon(path, on_bad_row=bad, duplicates=args.duplicates,
                                          **scale)
    if fmt == "vader_sentences":
        return readers.read_vader_sentences(path, on_bad_row=bad, **scale)
    if fmt == "emobank":
        return readers.read_emobank(path, on_bad_row=bad, **scale)
    if fmt == "goemotions":
        return readers.read_goemotions(path, on_bad_row=bad, **labels)
    if fmt == "sst":
        if args.num_labels is None:
            raise SystemExit("--format=sst needs --num_labels (2 for SST-2, 5 for SST-5)")
        return readers.read_sst(path, on_bad_row=bad, num_labels=args.num_labels)
    if fmt == "glue_sst2":
        return readers.read_glue_sst2(path, on_bad_row=bad)
    if fmt == "semeval14":
        return readers.read_semeval14(path, on_bad_row=bad)
    if fmt == "stsb":
        return readers.read_stsb(path, on_bad_row=bad)
    if args.text_column is None:
        raise SystemExit(f"--format={fmt} needs --text_column")
    columns = dict(label=args.label_column, valence=args.valence_column, split=args.split_column)
    if fmt == "csv":
        return readers.read_csv(
            path, text_column=args.text_column, label_column=columns["label"],
            valence_column=columns["valence"], split_column=columns["split"],
            delimiter=args.delimiter, on_bad_row=bad, **scale, **labels)
    return readers.read_jsonl(
        path, text_key=args.text_column, label_key=columns["label"],
        valence_key=columns["valence"], split_key=columns["split"], on_bad_row=bad, **scale,
        **labels)


def _histogram(counts: collections.Counter) -> str:
    def key(kv: tuple) -> tuple:  # label ids in numeric order, split names alphabetically
        return (0, kv[0], "") if isinstance(kv[0], int) else (1, 0, str(kv[0]))

    return ", ".join(f"{k}: {n}" for k, n in sorted(counts.items(), key=key))


def _range(name: str, values: list[float], scale: Sequence[float] | None) -> str:
    lo, hi = min(values), max(values)
    text = f"  {name}: {len(values)} values, min {lo:.4g}, max {hi:.4g}, mean "
    text += f"{sum(values) / len(values):.4g}"
    if scale is not None:  # say what the [0, 1] values were in the file's own units
        a, b = scale
        text += f" (on the file's scale {a:g}..{b:g}: "
        text += f"{a + lo * (b - a):.4g}..{a + hi * (b - a):.4g})"
    return text


def summarise(result: Any, scale: Sequence[float] | None) -> list[str]:
    """Lines describing what a reader returned."""
    if isinstance(result, dict):  # a lexicon
        lines = [f"  entries: {len(result)}"]
        if result:
            lines.append(_range("valence in [0, 1]", list(result.values()), scale))
        return lines
    lines = [f"  records: {len(result)}"]
    sentences = [r for r in result if isinstance(r, Sentence)]
    valences = [s.valence for s in sentences if s.valence is not None]
    if valences:
        lines.append(_range("valence in [0, 1]", valences, scale))
    splits = collections.Counter(s.split for s in sentences if s.split is not None)
    if splits:
        lines.append(f"  splits: {_histogram(splits)}")
    labels: collections.Counter = collections.Counter()
    for s in sentences:
        labels.update(s.labels if s.labels else ([s.label] if s.label is not None else []))
    labels.update(r.label for r in result if isinstance(r, AspectExample))
    if labels:
        lines.append(f"  labels: {_histogram(labels)}")
    multi = sum(1 for s in sentences if len(s.labels) > 1)
    if multi:
        lines.append(f"  records with more than one label: {multi}")
    scores = [r.score for r in result if isinstance(r, SentencePair)]
    if scores:
        lines.append(_range("score", scores, None))
    return lines


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m softmcl_jax.data.check", description=__doc__.split("\n\n")[0]
    )
    parser.add_argument("paths", nargs="+", metavar="PATH")
    parser.add_argument("--format", required=True, choices=FORMATS)
    parser.add_argument("--on_bad_row", default="skip", choices=("skip", "raise"),
                        help="skip (default): read on and list every bad row; raise: stop at "
                             "the first")
    parser.add_argument("--scale", nargs=2, type=float, metavar=("LOW", "HIGH"),
                        help="the scale valences are on (default: the format's own)")
    parser.add_argument("--num_labels", type=int, help="label ids must be 0..N-1")
    parser.add_argument("--duplicates", default="raise", choices=("raise", "last"),
                        help="vader_lexicon: a token listed twice with different means")
    parser.add_argument("--text_column", help="csv/jsonl: the text column or key")
    parser.add_argument("--label_column", help="csv/jsonl: an integer label id column or key")
    parser.add_argument("--valence_column", help="csv/jsonl: a valence column (needs --scale)")
    parser.add_argument("--split_column", help="csv/jsonl: a split-name column or key")
    parser.add_argument("--delimiter", default=",", help="csv: field delimiter (default ',')")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(message)s")
    defaults = {"warriner": (1.0, 9.0), "vader_lexicon": (-4.0, 4.0),
                "vader_sentences": (-4.0, 4.0), "emobank": (1.0, 5.0)}
    scale = args.scale if args.scale is not None else defaults.get(args.format)
    status = 0
    for path in args.paths:
        bad = _Collect(args.on_bad_row)
        print(f"{path} (format {args.format}):", flush=True)
        try:
            result = _read(args.format, path, args, bad)
        except DataError as e:
            for error in bad.skipped:  # none under raise; rows before a file-level error
                print(error)
            print(e)
            if e is bad.raised:
                print("  stopped at the first bad row (--on_bad_row=raise)")
            status = 1
            continue
        except (OSError, ValueError) as e:
            print(f"  cannot read: {e}")
            status = 1
            continue
        for error in bad.skipped:
            print(error)
        for line in summarise(result, scale):
            print(line)
        print(f"  skipped bad rows: {len(bad.skipped)}")
        if bad.skipped:
            status = 1
    return status

if __name__ == "__main__":
    sys.exit(main())
