"""`hf-hub:ORG/NAME[@REVISION]`: a Hugging Face Hub repository in timm's layout (weights/hf.py).

The files come through `huggingface_hub` into its cache, so `HF_HOME`, `HF_HUB_CACHE`,
`HF_ENDPOINT`, `HF_HUB_OFFLINE` and `HF_TOKEN` work as with timm, and a repository fetched
once loads offline. Only `config.json` and `model.safetensors` are fetched, never a pickle. The Hub
names a file stored in LFS by its sha256 (the blob's name in the cache), so the weights are
checked against it after every download.
"""

from __future__ import annotations

import hashlib
import os
import re
from pathlib import Path

from resnetlab.errors import Error
from resnetlab.weights import hf

PREFIX = "hf-hub:"
_REPO = re.compile(r"[A-Za-z0-9][\w.-]*/[A-Za-z0-9][\w.-]*")
_SHA256 = re.compile(r"[0-9a-f]{64}")


def _split(spec: str) -> tuple[str, str | None]:
    repo, _, revision = spec.removeprefix(PREFIX).partition("@")
    if not _REPO.fullmatch(repo) or ".." in repo:
        raise Error(f"{spec}: give hf-hub:ORG/NAME or hf-hub:ORG/NAME@REVISION")
    return repo, revision or None


def fetch(spec: str, files: tuple[str, ...] = (hf.CONFIG_FILE, hf.WEIGHTS_FILE)) -> Path:
    """The local snapshot folder holding `files` of the repository `spec` names (downloaded once)."""
    repo, revision = _split(spec)
    try:
        from huggingface_hub import hf_hub_download
    except ImportError:
        raise Error(f"{spec} needs huggingface_hub: pip install 'huggingface_hub~=2.4'") from None
    folder = None
    for name in files:
        try:
            path = Path(
                hf_hub_download(repo, name, revision=revision, endpoint=os.environ.get("HF_ENDPOINT"))
            )
        except Exception as exc:  # huggingface_hub's errors: not found, offline, HTTP, connection
            raise Error(f"cannot fetch {name} of {spec}: {_reason(exc)}") from None
        if name == hf.WEIGHTS_FILE:
            _verify(path, spec)
        folder = path.parent
    assert folder is not None
    return folder


def cached(spec: str, name: str = hf.WEIGHTS_FILE) -> Path | None:
    """File `name` of the repository `spec` names if the Hugging Face cache holds it, else None;
    nothing is fetched and nothing is checked."""
    repo, revision = _split(spec)
    try:
        from huggingface_hub import try_to_load_from_cache
    except ImportError:
        return None
    found = try_to_load_from_cache(repo, name, revision=revision)
    return Path(found) if isinstance(found, str) else None


def _reason(exc: Exception) -> str:
    kind = type(exc).__name__
    if kind == "LocalEntryNotFoundError":
        return "not in the Hugging Face cache, and the Hub cannot be reached (offline, or HF_HUB_OFFLINE=1)"
    if kind in ("RepositoryNotFoundError", "GatedRepoError"):
        return "no such repository, or it is private or gated (log in with `hf auth login` or set HF_TOKEN)"
    if kind in ("RevisionNotFoundError", "EntryNotFoundError", "RemoteEntryNotFoundError"):
        return f"{kind.removesuffix('Error')}: the repository has no such revision or file"
    return f"{kind}: {str(exc).strip().splitlines()[0] if str(exc).strip() else 'no detail'}"


def _verify(path: Path, spec: str) -> None:
    """An LFS file's blob is named by its sha256: the bytes must hash to it."""
    blob = Path(os.path.realpath(path))
    if not _SHA256.fullmatch(blob.name):
        return  # a file kept in git, named by its git hash: nothing published to check against
    digest = hashlib.sha256()
    with open(blob, "rb") as f:
        while chunk := f.read(1 << 20):
            digest.update(chunk)
    if digest.hexdigest() != blob.name:
        blob.unlink(missing_ok=True)  # so that the next try downloads it again
        raise Error(
            f"{spec}: {hf.WEIGHTS_FILE} does not match the sha256 the Hub published ({blob.name[:12]}...); "
            "it was removed from the cache, try again"
        )
