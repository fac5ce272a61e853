"""What readers produce and how bad input is reported.

Every record carries ``where`` ("PATH:LINE") so that any later complaint can point at the source.
Valences (and arousal, dominance) are already normalised to [0, 1] from the scale the config states
(see ``scale_to_unit``).
"""

from __future__ import annotations

import dataclasses
import logging

log = logging.getLogger(__name__)


class DataError(ValueError):
    """Bad input. The message starts with ``PATH:LINE:`` and says what is wrong."""

    def __init__(self, path: str, line: int | None, what: str):
        self.path, self.line, self.what = path, line, what
        super().__init__(f"{path}:{line if line is not None else '-'}: {what}")


@dataclasses.dataclass(frozen=True)
class Sentence:
    """One text with whatever supervision its source has."""

    text: str
    valence: float | None = None  # in [0, 1]
    arousal: float | None = None  # in [0, 1] (EmoBank's A; calm 0 .. excited 1)
    dominance: float | None = None  # in [0, 1] (EmoBank's D; controlled 0 .. in control 1)
    label: int | None = None  # single class id (SST, single-label GoEmotions)
    labels: tuple[int, ...] = ()  # multi-label ids (GoEmotions)
    split: str | None = None  # "train" | "dev" | "test" where the source says
    where: str = ""
    # A second text, encoded as segment B of a pair (data.pair_column; fine-tuning's aspect).
    pair: str | None = None


@dataclasses.dataclass(frozen=True)
class SentencePair:
    """STS-B: two sentences and a similarity score (0..5 as in the source)."""

    text_a: str
    text_b: str
    score: float
    where: str = ""


@dataclasses.dataclass(frozen=True)
class AspectExample:
    """SemEval-2014: a sentence, the aspect term it contains, polarity -1/0/1 as label 0/1/2."""

    text: str  # with the aspect term put back in place of $T$
    aspect: str
    label: int
    where: str = ""


def scale_to_unit(value: float, low: float, high: float, *, path: str, line: int,
                  what: str = "valence") -> float:
    """Map a rating on [low, high] to [0, 1]; a value outside the scale is a DataError.

    ``what`` names the rating in that error ("valence", "arousal", "dominance").
    """
    if not low <= value <= high:
        raise DataError(path, line, f"{what} {value} is outside the stated scale [{low}, {high}]")
    return (value - low) / (high - low)


class BadRows:
    """The ``on_bad_row`` policy: ``"raise"`` (default) or ``"skip"`` (skip, count, report).

    Readers call ``handle(error)`` for each bad row; with "skip" it is counted and logged, and
    ``report()`` says how many rows of which file were skipped. Nothing is dropped silently.
    """

    def __init__(self, policy: str = "raise"):
        if policy not in ("raise", "skip"):
            raise ValueError(f"on_bad_row must be 'raise' or 'skip', got {policy!r}")
        self.policy = policy
        self.skipped: list[DataError] = []

    def handle(self, error: DataError) -> None:
        if self.policy == "raise":
            raise error
        self.skipped.append(error)
        log.warning("skipped bad row: %s", error)

    def report(self) -> str:
        if not self.skipped:
            return "no bad rows"
        by_file: dict[str, int] = {}
        for e in self.skipped:
            by_file[e.path] = by_file.get(e.path, 0) + 1
        return "skipped bad rows: " + ", ".join(f"{p}: {n}" for p, n in sorted(by_file.items()))
