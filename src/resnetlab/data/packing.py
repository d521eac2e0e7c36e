"""`pack_folder`: write an image folder into a pack (`resnetlab.data.pack`), in parallel and resumably.

Each image is decoded once, turned upright, cut down to `max_side` on its long side (never up)
and stored as JPEG at `quality` or as raw RGB bytes. A JPEG that needs none of that (RGB, no
EXIF rotation, small enough) is stored as it is, bit for bit. Work goes in chunks of `CHUNK`
images; each finished chunk is saved in `.<pack name>.partial/` beside the output, so a killed
run picks up from the last whole chunk. The pack itself appears only when every chunk is done:
temp file, fsync, rename. The same folder and settings give the same pack, byte for byte.
"""

from __future__ import annotations

import dataclasses
import hashlib
import io
import json
import multiprocessing
import os
import shutil
import sys
import time
import uuid
import zlib
from collections.abc import Callable
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps
from tqdm import tqdm

from resnetlab.atomic import fsync_dir, write_atomic
from resnetlab.data.folder import (
    ORIENTATION,
    SWAPS_AXES,
    UnreadableImage,
    has_test_split,
    scan_split,
    to_mode,
    train_dir,
)
from resnetlab.data.loader import available_cpus
from resnetlab.data.pack import MAGIC, RECORD, PackHeader, layout
from resnetlab.errors import Error

CHUNK = 256  # images per unit of work and per resume point
DEFAULT_MAX_SIDE = 256  # pixels, long side: a quarter of the pixels of a 500x375 photo, FFCV-style
DEFAULT_QUALITY = 90


@dataclasses.dataclass(frozen=True)
class PackReport:
    path: Path
    counts: dict[str, int]  # images stored per split
    unreadable: list[str]  # one line per image left out
    resumed: int  # images found already packed by an earlier, interrupted run
    size: int  # bytes
    seconds: float


@dataclasses.dataclass(frozen=True)
class _Settings:
    max_side: int
    quality: int
    encoding: str


def pack_folder(
    root: str | os.PathLike,
    out: str | os.PathLike,
    *,
    max_side: int = DEFAULT_MAX_SIDE,
    quality: int = DEFAULT_QUALITY,
    raw: bool = False,
    workers: int | None = None,
    progress: Callable[[int], None] | None = None,
) -> PackReport:
    """Pack image folder `root` (train/ and val/, or class folders) into the file `out`.

    workers: processes decoding in parallel (default: the CPUs available). progress: called with
    the number of images packed so far after each chunk (the bar on stderr shows the same)."""
    start = time.perf_counter()
    root, out = Path(root).expanduser(), Path(out).expanduser()
    if not 16 <= max_side <= 65535:
        raise Error(f"--max-side must lie in [16, 65535] pixels, got {max_side}")
    if not 1 <= quality <= 100:
        raise Error(f"--quality must lie in [1, 100], got {quality}")
    if out.is_dir():
        raise Error(f"--out {out} is a folder; name the pack file to write")
    if not out.parent.is_dir():
        raise Error(f"--out {out}: folder {out.parent} does not exist")
    settings = _Settings(max_side, 0 if raw else quality, "raw" if raw else "jpeg")
    top = train_dir(root)
    classes = sorted(entry.name for entry in os.scandir(root / top) if entry.is_dir())
    listing = {"train": scan_split(root, top, classes)}
    if has_test_split(root):
        listing["test"] = scan_split(root, "val", classes)
    paths = np.concatenate([paths for paths, _ in listing.values()])
    labels = np.concatenate([labels for _, labels in listing.values()])
    if len(paths) == 0:
        raise Error(f"no images under {root / top}")
    split_of = np.repeat(np.arange(len(listing)), [len(p) for p, _ in listing.values()])

    work = out.parent / f".{out.name}.partial"
    manifest = _manifest(root, paths, labels, split_of, classes, settings)
    _prepare(work, manifest)
    chunks = [range(i, min(i + CHUNK, len(paths))) for i in range(0, len(paths), CHUNK)]
    todo = [k for k in range(len(chunks)) if not (work / _chunk_name(k)).exists()]
    done = resumed = len(paths) - sum(len(chunks[k]) for k in todo)
    if resumed:
        print(f"resuming: {resumed:,} of {len(paths):,} images were packed before", file=sys.stderr)
    jobs = [(str(root), [bytes(p) for p in paths[chunks[k]]], settings) for k in todo]
    with (
        tqdm(total=len(paths), initial=done, unit="img", desc=f"packing {out.name}", file=sys.stderr) as bar,
        _workers_context().Pool(workers or available_cpus()) as pool,
    ):
        for k, arrays in zip(todo, pool.imap(_pack_chunk, jobs), strict=True):
            _save_chunk(work / _chunk_name(k), arrays)
            done += len(chunks[k])
            bar.update(len(chunks[k]))
            if progress:
                progress(done)
    counts, unreadable = _assemble(out, work, len(chunks), labels, split_of, list(listing), classes, settings)
    shutil.rmtree(work, ignore_errors=True)
    return PackReport(out, counts, unreadable, resumed, out.stat().st_size, time.perf_counter() - start)


def _workers_context() -> multiprocessing.context.BaseContext:
    """Workers forked from a server process that has imported this module once: cheap to start,
    and never forked from the caller, whose other threads (tqdm's monitor, a test runner's) could
    hold a lock that the child then waits on forever."""
    context = multiprocessing.get_context("forkserver")
    context.set_forkserver_preload([__name__])
    return context


def _chunk_name(k: int) -> str:
    return f"chunk-{k:07d}.npz"


def _manifest(
    root: Path,
    paths: np.ndarray,
    labels: np.ndarray,
    split_of: np.ndarray,
    classes: list[str],
    settings: _Settings,
) -> dict:
    """What a partial pack was started from: the settings and a digest of every file's name,
    label, size and modification time. A resume goes on only if all of it still holds."""
    digest = hashlib.sha256()
    for path, label, split in zip(paths, labels, split_of, strict=True):
        info = os.stat(root / os.fsdecode(path))
        digest.update(b"%s\0%d\0%d\0%d\0%d\n" % (path, label, split, info.st_size, info.st_mtime_ns))
    return {
        "root": str(root.resolve()),
        "classes": classes,
        "settings": dataclasses.asdict(settings),
        "chunk": CHUNK,
        "files": digest.hexdigest(),
    }


def _prepare(work: Path, manifest: dict) -> None:
    """Create `work`, or keep it and the chunks in it if it was started from the same manifest."""
    path = work / "manifest.json"
    try:
        if json.loads(path.read_text()) == manifest:
            return
    except (OSError, ValueError):
        pass
    shutil.rmtree(work, ignore_errors=True)
    try:
        work.mkdir()
        write_atomic(path, json.dumps(manifest))
    except OSError as exc:
        raise Error(f"cannot write in {work.parent}: {exc.strerror or exc}") from None


def _pack_chunk(job: tuple[str, list[bytes], _Settings]) -> dict[str, np.ndarray]:
    """Encode one chunk of images: their bytes end to end plus one row per image."""
    root, paths, settings = job
    blobs, rows, errors = [], [], []
    for path in paths:
        full = Path(root) / os.fsdecode(path)
        try:
            data, width, height, mean, mean_sq = _encode(full, settings)
        except UnreadableImage as exc:
            data, width, height, mean, mean_sq = b"", 0, 0, (0.0,) * 3, (0.0,) * 3
            errors.append(str(exc))
        else:
            errors.append("")
        blobs.append(data)
        rows.append((len(data), zlib.crc32(data), width, height, mean, mean_sq))
    return {
        "data": np.frombuffer(b"".join(blobs), np.uint8),
        "length": np.array([r[0] for r in rows], np.uint32),
        "crc32": np.array([r[1] for r in rows], np.uint32),
        "width": np.array([r[2] for r in rows], np.uint16),
        "height": np.array([r[3] for r in rows], np.uint16),
        "mean": np.array([r[4] for r in rows], np.float32).reshape(-1, 3),
        "mean_sq": np.array([r[5] for r in rows], np.float32).reshape(-1, 3),
        "error": np.array(errors, dtype=str),
    }


def _encode(path: Path, settings: _Settings) -> tuple[bytes, int, int, tuple, tuple]:
    """(stored bytes, width, height, channel means, channel mean squares) of the image at `path`."""
    try:
        with Image.open(path) as file:
            orientation = file.getexif().get(ORIENTATION, 1)
            width, height = file.size[::-1] if orientation in SWAPS_AXES else file.size  # upright
            scale = min(1.0, settings.max_side / max(width, height))
            size = (max(1, round(width * scale)), max(1, round(height * scale)))
            as_is = (
                settings.encoding == "jpeg"
                and scale == 1.0
                and file.format == "JPEG"
                and file.mode == "RGB"
                and orientation == 1
            )
            if file.format == "JPEG" and scale < 1.0:
                # Decode at the smallest DCT scale still at least the target size: 2-8x less work.
                file.draft("RGB", size if orientation not in SWAPS_AXES else size[::-1])
            image = to_mode(ImageOps.exif_transpose(file), "RGB")
    except Exception as exc:  # Pillow signals bad files with OSError, SyntaxError, ValueError, bomb errors...
        raise UnreadableImage(f"{path}: {type(exc).__name__}: {exc}") from None
    if image.size != size:
        image = image.resize(size, Image.Resampling.LANCZOS)
    pixels = np.asarray(image)
    flat = pixels.reshape(-1, 3).astype(np.float64) / 255
    mean, mean_sq = tuple(flat.mean(0).tolist()), tuple((flat**2).mean(0).tolist())
    if settings.encoding == "raw":
        data = pixels.tobytes()
    elif as_is:
        data = path.read_bytes()
    else:
        buffer = io.BytesIO()
        image.save(buffer, "JPEG", quality=settings.quality)
        data = buffer.getvalue()
    return data, image.width, image.height, mean, mean_sq


def _save_chunk(path: Path, arrays: dict[str, np.ndarray]) -> None:
    buffer = io.BytesIO()
    np.savez(buffer, **arrays)
    write_atomic(path, buffer.getvalue())


_CHUNK_FIELDS = ("length", "crc32", "width", "height", "mean", "mean_sq", "error")


def _read_chunk(path: Path, *, data: bool) -> dict[str, np.ndarray]:
    """A saved chunk's rows (and bytes, with `data`), checked to agree with each other. A damaged
    one is deleted, so that running the command again packs just that chunk anew."""
    try:
        with np.load(path, allow_pickle=False) as arrays:
            chunk = {name: arrays[name] for name in (*_CHUNK_FIELDS, *(["data"] if data else []))}
        if len({len(chunk[name]) for name in _CHUNK_FIELDS}) != 1:
            raise ValueError("its rows disagree")
        if data and int(chunk["length"].sum()) != chunk["data"].size:
            raise ValueError("its rows and bytes disagree")
    except Exception as exc:  # numpy and zipfile raise many kinds for a damaged .npz
        path.unlink(missing_ok=True)
        raise Error(
            f"{path} of the interrupted pack is damaged ({type(exc).__name__}); it was removed: "
            "run the command again to pack that chunk anew"
        ) from None
    return chunk


def _assemble(
    out: Path,
    work: Path,
    num_chunks: int,
    labels: np.ndarray,
    split_of: np.ndarray,
    splits: list[str],
    classes: list[str],
    settings: _Settings,
) -> tuple[dict[str, int], list[str]]:
    """Join the chunks into the pack at `out` (atomically); (images per split, unreadable lines)."""
    rows = [_read_chunk(work / _chunk_name(k), data=False) for k in range(num_chunks)]
    table = {name: np.concatenate([r[name] for r in rows]) for name in rows[0]}
    kept = table["error"] == ""
    errors = [str(e) for e in table["error"][~kept]]
    index = np.zeros(int(kept.sum()), RECORD)
    for name in ("length", "crc32", "width", "height", "mean", "mean_sq"):
        index[name] = table[name][kept]
    index["label"] = labels[kept]
    index["offset"] = np.concatenate([[0], np.cumsum(index["length"], dtype=np.uint64)[:-1]])
    counts = {"train": 0, "test": 0}
    for number, name in enumerate(splits):
        counts[name] = int((split_of[kept] == number).sum())
    if counts["train"] == 0:
        raise Error(f"none of the {len(labels)} training images could be decoded (first: {errors[0]})")
    raw_index = index.tobytes()
    header = PackHeader(
        encoding=settings.encoding,
        max_side=settings.max_side,
        quality=settings.quality,
        classes=classes,
        counts=counts,
        index_sha256=hashlib.sha256(raw_index).hexdigest(),
        data_length=int(index["length"].sum(dtype=np.uint64)),
    )
    text = header.to_json()
    index_at, data_at = layout(text, len(index))
    temp = out.with_name(f".{out.name}.{uuid.uuid4().hex}.tmp")
    try:
        with open(temp, "wb") as f:
            f.write(MAGIC + len(text).to_bytes(8, "little") + text)
            f.write(b"\0" * (index_at - f.tell()))
            f.write(raw_index)
            f.write(b"\0" * (data_at - f.tell()))
            for k in range(num_chunks):
                f.write(_read_chunk(work / _chunk_name(k), data=True)["data"].tobytes())
            f.flush()
            os.fsync(f.fileno())
        os.replace(temp, out)
        fsync_dir(out.parent)
    except OSError as exc:
        raise Error(f"cannot write {out}: {exc.strerror or exc}") from None
    finally:
        temp.unlink(missing_ok=True)
    return counts, errors
