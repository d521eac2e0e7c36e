"""Real English text offline: the `fortunes` corpus (quotations, literature, jokes), read as bytes.

Debian's `fortunes` and `fortunes-min` packages put about 2.6 MB of text in /usr/share/games/fortunes,
one file per topic, documents separated by lines holding only "%". The corpus is every such file
in name order; documents are split into train/val/test by their position (fixed, not drawn), so
no document is in two splits. A split is its documents joined by "\\n%\\n", as uint8 bytes
(vocabulary 256).

Training batches are random windows of `context` bytes whose starts are drawn from (seed, step)
alone: step k's batch is the same whether the run started at 0 or resumed at k.
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from resnetlab.errors import Error

CORPUS = "fortunes"
SYSTEM_DIRS = (
    "/usr/share/games/fortunes",
    "/usr/share/games/fortune",
    "/usr/share/fortune",
)  # Debian, Fedora, Arch
PACKAGE = "Debian's fortunes package (apt-get install fortunes)"
SEPARATOR = b"\n%\n"
VAL_EVERY = 20  # document i is val when i % 20 == 18, test when i % 20 == 19: 5% each
TEXT_SPLITS = ("train", "val", "test")
# The sha256 of the corpus as Debian bookworm's fortunes 1:1.99.1-7.3 installs it (43 files,
# 15,217 documents): the figures in docs/experiments.md were measured on it.
KNOWN_SHA256 = {
    "fbc2d796dde8ea64a51345ce4c18ff486a778a2d2259603987073bedb3fc3cd7": (
        "Debian bookworm fortunes 1:1.99.1-7.3"
    ),
}


@dataclass(frozen=True)
class TextCorpus:
    """The three splits as 1-D uint8 tensors of bytes, and where they came from."""

    folder: Path
    files: tuple[str, ...]
    documents: int
    sha256: str  # of the files' bytes in name order
    train: Tensor
    val: Tensor
    test: Tensor

    def split(self, name: str) -> Tensor:
        if name not in TEXT_SPLITS:
            raise Error(f"unknown split {name!r}; choose one of {', '.join(TEXT_SPLITS)}")
        return getattr(self, name)

    @property
    def known_as(self) -> str:
        """The release this corpus is, or "" if its checksum is not one resnetlab was measured on."""
        return KNOWN_SHA256.get(self.sha256, "")


def corpus_files(folder: Path) -> list[Path]:
    """The fortune files of a folder: regular files with no suffix (not the .dat indexes, not the
    .u8 links), in name order."""
    return [
        p
        for p in sorted(folder.iterdir())
        if p.is_file() and not p.is_symlink() and not p.suffix and not p.name.startswith(".")
    ]


def find_corpus(data_dir: str | os.PathLike | None = None) -> Path:
    """The first folder holding fortune files among --data-dir(/fortunes), $RESNETLAB_DATA(/fortunes)
    and the distribution's folder; one-line Error naming the package when there is none."""
    roots = [Path(r).expanduser() for r in (data_dir, os.environ.get("RESNETLAB_DATA")) if r]
    candidates = [d for root in roots for d in (root / CORPUS, root)] + [Path(d) for d in SYSTEM_DIRS]
    for folder in candidates:
        # A corpus folder holds the file named "fortunes" (in every distribution's package).
        if (folder / CORPUS).is_file() and corpus_files(folder):
            return folder
    looked = ", ".join(str(d) for d in candidates)
    raise Error(f"the fortunes text corpus is not in {looked}; install {PACKAGE}, or pass --data-dir DIR")


def split_documents(text: bytes) -> list[bytes]:
    """A fortune file's documents: the text between lines holding only "%", trimmed, non-empty."""
    docs: list[bytes] = []
    lines: list[bytes] = []
    for line in text.split(b"\n"):
        if line.rstrip(b" \t\r") == b"%":
            docs.append(b"\n".join(lines))
            lines = []
        else:
            lines.append(line)
    docs.append(b"\n".join(lines))
    return [doc.strip(b"\n") for doc in docs if doc.strip()]


def split_of(index: int) -> str:
    """The split of the document at position `index` of the corpus."""
    r = index % VAL_EVERY
    return "val" if r == VAL_EVERY - 2 else "test" if r == VAL_EVERY - 1 else "train"


def load_corpus(data_dir: str | os.PathLike | None = None) -> TextCorpus:
    """Find, read and split the corpus (about a second for 2.6 MB)."""
    folder = find_corpus(data_dir)
    files = corpus_files(folder)
    digest = hashlib.sha256()
    by_split: dict[str, list[bytes]] = {s: [] for s in TEXT_SPLITS}
    index = 0
    for path in files:
        try:
            text = path.read_bytes()
        except OSError as e:
            raise Error(f"cannot read {path}: {e.strerror or e}") from None
        digest.update(text)
        for doc in split_documents(text):
            by_split[split_of(index)].append(doc)
            index += 1
    joined = {s: SEPARATOR.join(docs) for s, docs in by_split.items()}
    if any(len(text) < 2 for text in joined.values()):  # every split needs a document
        raise Error(f"{folder} holds too little text ({index} documents); it needs at least {VAL_EVERY}")
    splits = {s: torch.frombuffer(bytearray(text), dtype=torch.uint8) for s, text in joined.items()}
    return TextCorpus(folder, tuple(p.name for p in files), index, digest.hexdigest(), **splits)


def window_starts(n_bytes: int, *, batch: int, context: int, seed: int, step: int) -> np.ndarray:
    """`batch` window starts in [0, n_bytes - context - 1], a function of (seed, step) alone."""
    if n_bytes <= context + 1:
        raise Error(f"a split of {n_bytes} bytes is too short for windows of {context} + 1 bytes")
    return np.random.default_rng([seed, step]).integers(0, n_bytes - context - 1, size=batch, endpoint=True)


def batch_windows(data: Tensor, *, batch: int, context: int, seed: int, step: int) -> tuple[Tensor, Tensor]:
    """Step `step`'s training batch: inputs x and next-byte targets y, both (batch, context) int64."""
    starts = torch.from_numpy(window_starts(len(data), batch=batch, context=context, seed=seed, step=step))
    idx = starts[:, None] + torch.arange(context + 1)  # (batch, context + 1)
    chunk = data[idx].long()
    return chunk[:, :-1], chunk[:, 1:]


def eval_windows(data: Tensor, *, context: int, max_windows: int) -> tuple[Tensor, Tensor]:
    """Non-overlapping windows from the start of a split, at most `max_windows`: the fixed
    evaluation set, (n, context) inputs and targets."""
    n = min(max_windows, (len(data) - 1) // context)
    chunk = data[: n * context + 1].long()
    x = chunk[:-1].view(n, context)
    y = chunk[1:].view(n, context)
    return x, y
