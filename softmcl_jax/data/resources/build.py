"""Regenerate the shipped VADER files from the vaderSentiment 3.3.2 source distribution.

Run by hand, never at import or test time:

    pip download vaderSentiment==3.3.2 --no-binary :all: --no-deps -d /tmp/vader
    python softmcl_jax/data/resources/build.py /tmp/vader/vaderSentiment-3.3.2.tar.gz

The sdist is read in place (no unpacking) and its SHA-256 is checked first, so the outputs can only
come from that exact file. Each output is the source file with its CRLF line ends turned into LF and
a final LF added, nothing else: same rows, same order, same bytes in every field. So line N of a
shipped file is line N of the original, and ``DataError`` messages point at both. The gzip streams
carry no name and no time stamp, so a rebuild with the same zlib gives the same bytes.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import sys
import tarfile
from pathlib import Path

SDIST_SHA256 = "5d7c06e027fc8b99238edb0d53d970cf97066ef97654009890b83703849632f9"
ROOT = "vaderSentiment-3.3.2"
INNER = f"{ROOT}/additional_resources/hutto_ICWSM_2014.tar.gz"

# output name -> (member of the sdist, or of the inner tarball when the name has no ROOT prefix)
OUTPUTS = {
    "vader_lexicon.tsv.gz": f"{ROOT}/vaderSentiment/vader_lexicon.txt",
    "vader_tweets.tsv.gz": "hutto_ICWSM_2014/tweets_GroundTruth.txt",
    "vader_movie_reviews.tsv.gz": "hutto_ICWSM_2014/movieReviewSnippets_GroundTruth.txt",
    "vader_product_reviews.tsv.gz": "hutto_ICWSM_2014/amazonReviewSnippets_GroundTruth.txt",
    "vader_nyt.tsv.gz": "hutto_ICWSM_2014/nytEditorialSnippets_GroundTruth.txt",
}


def normalise(raw: bytes, name: str) -> bytes:
    """CRLF -> LF and a final LF; refuse anything that would need more than that."""
    if raw.startswith(b"\xef\xbb\xbf"):
        raw = raw[3:]  # none of the files we ship has one, but the ratings files do
    raw.decode("utf-8")  # a decoding error here must stop the build, not be papered over
    text = raw.replace(b"\r\n", b"\n")
    if b"\r" in text:
        raise SystemExit(f"{name}: a bare CR is left after CRLF -> LF")
    return text if text.endswith(b"\n") else text + b"\n"


def main(sdist: str) -> None:
    data = Path(sdist).read_bytes()
    digest = hashlib.sha256(data).hexdigest()
    if digest != SDIST_SHA256:
        raise SystemExit(f"{sdist}: sha256 {digest}, not vaderSentiment 3.3.2's {SDIST_SHA256}")
    out_dir = Path(__file__).resolve().parent
    with tarfile.open(fileobj=io.BytesIO(data)) as outer:
        members = {m: outer.extractfile(m).read() for m in (INNER, OUTPUTS["vader_lexicon.tsv.gz"])}
        (out_dir / "LICENSE").write_bytes(outer.extractfile(f"{ROOT}/LICENSE.txt").read())
    with tarfile.open(fileobj=io.BytesIO(members[INNER])) as inner:
        for member in OUTPUTS.values():
            if not member.startswith(ROOT):
                members[member] = inner.extractfile(member).read()
    for out_name, member in OUTPUTS.items():
        text = normalise(members[member], member)
        buf = io.BytesIO()
        with gzip.GzipFile(filename="", mode="wb", fileobj=buf, compresslevel=9, mtime=0) as gz:
            gz.write(text)
        (out_dir / out_name).write_bytes(buf.getvalue())
        lines = text.count(b"\n")
        print(f"{out_name}: {lines} lines from {member}; sha256 of the decompressed text "
              f"{hashlib.sha256(text).hexdigest()}")


if __name__ == "__main__":
    if len(sys.argv) != 2:
        raise SystemExit(__doc__)
    main(sys.argv[1])
