"""Data file formats and fetching: IDX, CIFAR tarballs and pickles, downloads, search order.

Every file here is written by the test itself in the published format, with writers that share
no code with resnetlab's readers.
"""

from __future__ import annotations

import dataclasses
import functools
import gzip
import hashlib
import io
import os
import pickle
import socket
import struct
import tarfile
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from loopback import QuietFiles, serving
from resnetlab.cli import main
from resnetlab.data import load_dataset
from resnetlab.data import sources as sources_module
from resnetlab.data.cifar import load_batch, safe_extract
from resnetlab.data.datasets import locate
from resnetlab.data.download import download
from resnetlab.data.idx import parse_header, parse_idx, unpack
from resnetlab.data.paths import candidate_dirs
from resnetlab.data.sources import SOURCES, RemoteFile
from resnetlab.errors import Error

# ---------------------------------------------------------------- writers of the published formats

_IDX_TYPES = {"u1": 0x08, "i1": 0x09, "i2": 0x0B, "i4": 0x0C, "f4": 0x0D, "f8": 0x0E}
IDX_NAMES = (
    "train-images-idx3-ubyte",
    "train-labels-idx1-ubyte",
    "t10k-images-idx3-ubyte",
    "t10k-labels-idx1-ubyte",
)


def idx_bytes(array: np.ndarray) -> bytes:
    """An IDX file: 0, 0, type code, ndim, big-endian uint32 dims, then big-endian values."""
    code = _IDX_TYPES[array.dtype.str[1:]]
    header = bytes([0, 0, code, array.ndim]) + struct.pack(f">{array.ndim}I", *array.shape)
    return header + array.astype(array.dtype.newbyteorder(">")).tobytes()


def write_idx_set(folder: Path, *, n_train: int = 12, n_test: int = 5, gz: bool = True) -> dict[str, bytes]:
    """The four MNIST-layout files of a tiny random set; returns the raw bytes by file name."""
    rng = np.random.default_rng(0)
    folder.mkdir(parents=True, exist_ok=True)
    arrays = []
    for n in (n_train, n_test):
        arrays += [rng.integers(0, 256, (n, 28, 28), dtype=np.uint8), (np.arange(n) % 10).astype(np.uint8)]
    contents = {name: idx_bytes(array) for name, array in zip(IDX_NAMES, arrays, strict=True)}
    for name, data in contents.items():
        if gz:
            (folder / f"{name}.gz").write_bytes(gzip.compress(data))
        else:
            (folder / name).write_bytes(data)
    return contents


def table_for(
    folder: Path, contents: dict[str, bytes], url: str = "http://127.0.0.1:9/"
) -> tuple[RemoteFile, ...]:
    """Table rows whose checksums match the test's own files."""
    return tuple(
        RemoteFile(
            f"{name}.gz",
            md5=hashlib.md5((folder / f"{name}.gz").read_bytes()).hexdigest(),
            sha256=hashlib.sha256(contents[name]).hexdigest(),
        )
        for name in IDX_NAMES
    )


class Py2Pickler(pickle._Pickler):
    """Pickles as Python 2's cPickle did for the CIFAR batches: every str is a byte string and
    numpy's reconstructor lives in numpy.core.multiarray."""

    dispatch = pickle._Pickler.dispatch.copy()

    def save_py2_str(self, obj: bytes | str) -> None:
        data = obj.encode("latin-1") if isinstance(obj, str) else obj
        if len(data) < 256:
            self.write(pickle.SHORT_BINSTRING + bytes([len(data)]) + data)
        else:
            self.write(pickle.BINSTRING + struct.pack("<i", len(data)) + data)
        self.memoize(obj)

    dispatch[bytes] = save_py2_str
    dispatch[str] = save_py2_str

    def save_global(self, obj: object, name: str | None = None) -> None:
        if getattr(obj, "__name__", "") == "_reconstruct":
            self.write(pickle.GLOBAL + b"numpy.core.multiarray\n_reconstruct\n")
            self.memoize(obj)
            return
        super().save_global(obj, name)


def py2_pickle(obj: object) -> bytes:
    buffer = io.BytesIO()
    Py2Pickler(buffer, protocol=2).dump(obj)
    return buffer.getvalue()


def add_member(tar: tarfile.TarFile, name: str, data: bytes = b"", **fields: object) -> None:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    for key, value in fields.items():
        setattr(info, key, value)
    tar.addfile(info, io.BytesIO(data) if data else None)


def write_cifar_tarball(path: Path, *, hundred: bool, per_batch: int = 4) -> dict[str, np.ndarray]:
    """A CIFAR-10 (five train batches) or CIFAR-100 (one train file) python tarball, tiny batches."""
    rng = np.random.default_rng(1)
    folder, n_classes = ("cifar-100-python", 100) if hundred else ("cifar-10-batches-py", 10)
    files = {"train": ["train"], "test": ["test"]}
    if not hundred:
        files = {"train": [f"data_batch_{i}" for i in range(1, 6)], "test": ["test_batch"]}
    expected: dict[str, list] = {"train_data": [], "train_labels": [], "test_data": [], "test_labels": []}
    with tarfile.open(path, "w:gz") as tar:
        add_member(tar, folder, type=tarfile.DIRTYPE)
        for part, names in files.items():
            for name in names:
                data = rng.integers(0, 256, (per_batch, 3072), dtype=np.uint8)
                labels = [int(v) for v in rng.integers(0, n_classes, per_batch)]
                batch = {
                    "batch_label": f"{part} batch",
                    "data": data,
                    "filenames": [f"{i}.png" for i in labels],
                }
                if hundred:
                    batch |= {"fine_labels": labels, "coarse_labels": [v // 5 for v in labels]}
                else:
                    batch["labels"] = labels
                add_member(tar, f"{folder}/{name}", py2_pickle(batch))
                expected[f"{part}_data"].append(data)
                expected[f"{part}_labels"] += labels
        names = [f"class{i}" for i in range(n_classes)]
        if hundred:
            meta = {"fine_label_names": names, "coarse_label_names": [f"super{i}" for i in range(20)]}
            add_member(tar, f"{folder}/meta", py2_pickle(meta))
        else:
            add_member(tar, f"{folder}/batches.meta", py2_pickle({"label_names": names, "num_vis": 3072}))
    return {k: np.concatenate(v) if k.endswith("data") else np.array(v) for k, v in expected.items()}


@pytest.fixture
def isolated(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """No $RESNETLAB_DATA, a fresh ~ (so ~/.cache/resnetlab is empty) and no Debian folder."""
    home = tmp_path / "home"
    home.mkdir()
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.delenv("RESNETLAB_DATA", raising=False)
    fashion = dataclasses.replace(SOURCES["fashion-mnist"], system_dirs=())
    monkeypatch.setitem(sources_module.SOURCES, "fashion-mnist", fashion)
    return tmp_path


def set_source(monkeypatch: pytest.MonkeyPatch, name: str, **changes: object) -> None:
    monkeypatch.setitem(sources_module.SOURCES, name, dataclasses.replace(SOURCES[name], **changes))


# ---------------------------------------------------------------- IDX

_IDX_DTYPES = st.sampled_from(["u1", "i1", ">i2", ">i4", ">f4", ">f8"])


@settings(max_examples=60, deadline=None)
@given(shape=st.lists(st.integers(0, 5), min_size=1, max_size=4), dtype=_IDX_DTYPES, seed=st.integers(0, 99))
def test_idx_parser_reads_any_shape_and_type(shape: list[int], dtype: str, seed: int) -> None:
    array = (np.random.default_rng(seed).standard_normal(shape) * 100).astype(dtype)
    data = idx_bytes(array)
    header = parse_header(data)
    assert header.shape == tuple(shape) and header.offset == 4 + 4 * len(shape)
    parsed = parse_idx(data)
    assert parsed.dtype == array.dtype.newbyteorder("=") and parsed.flags.writeable
    np.testing.assert_array_equal(parsed, array)
    if array.size:
        with pytest.raises(Error, match="truncated or corrupt"):
            parse_idx(data[:-1])


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (b"", "not an IDX file"),
        (b"\x00\x01\x08\x01", "bad magic"),
        (b"\x00\x00\x07\x01", "bad magic"),
        (b"\x00\x00\x08\x03\x00\x00", "truncated inside its IDX header"),
    ],
)
def test_idx_parser_rejects_bad_headers(data: bytes, message: str) -> None:
    with pytest.raises(Error, match=message):
        parse_idx(data, "f.idx")


def test_idx_gz_and_raw_files_give_the_same_arrays(tmp_path: Path) -> None:
    contents = write_idx_set(tmp_path / "gz")
    write_idx_set(tmp_path / "raw", gz=False)
    for name, data in contents.items():
        assert unpack((tmp_path / "gz" / f"{name}.gz").read_bytes(), name) == data
        assert unpack((tmp_path / "raw" / name).read_bytes(), name) == data
    with pytest.raises(Error, match="not a valid gzip file"):
        unpack(b"\x1f\x8b" + b"junk" * 10, "broken.gz")


def test_unpacked_mnist_files_load_with_their_shapes_checked(isolated: Path) -> None:
    write_idx_set(isolated / "d" / "mnist", n_train=12, n_test=5, gz=False)
    train = load_dataset("mnist", "train", data_dir=isolated / "d", download=False, val_size=2)
    test = load_dataset("mnist", "test", data_dir=isolated / "d", download=False)
    assert (len(train), len(test)) == (10, 5)
    assert train.images.shape[1:] == (1, 28, 28) and train.classes == [str(d) for d in range(10)]


def test_flips_on_digits_are_warned_about_in_training_and_in_flip_tta(isolated: Path, capsys) -> None:
    write_idx_set(isolated / "d" / "mnist", n_train=16, n_test=4, gz=False)
    data = ["--data", "mnist", "--data-dir", str(isolated / "d")]
    tiny = ["--model", "cifar_resnet", "--model-kwargs", "depth=8", "--batch-size", "8", "--epochs", "1"]
    train = ["train", *data, *tiny, "--val-size", "0", "--eval-splits", "test", "--no-progress"]
    warning = "a mirrored digit is not its class"
    assert main([*train, "--flip", "--out", str(isolated / "flip")]) == 0
    assert capsys.readouterr().err.count(warning) == 1
    assert main([*train, "--no-flip", "--out", str(isolated / "no-flip")]) == 0
    assert warning not in capsys.readouterr().err
    assert main(["eval", str(isolated / "no-flip"), *data, "--tta", "flip"]) == 0
    assert capsys.readouterr().err.count(warning) == 1


def test_gzipped_mnist_with_the_wrong_md5_is_refused(isolated: Path) -> None:
    write_idx_set(isolated / "d")  # random content, so not the official .gz
    with pytest.raises(Error, match=r"is not the official mnist file train-images-idx3-ubyte\.gz"):
        load_dataset("mnist", "train", data_dir=isolated / "d", download=False)


# ---------------------------------------------------------------- CIFAR


@pytest.mark.parametrize("name", ["cifar10", "cifar100"])
def test_cifar_tarball_is_checked_unpacked_and_read(
    isolated: Path, monkeypatch: pytest.MonkeyPatch, name: str
) -> None:
    spec = SOURCES[name].files[0]
    archive = isolated / "d" / name / spec.name
    archive.parent.mkdir(parents=True)
    expected = write_cifar_tarball(archive, hundred=name == "cifar100")
    md5 = hashlib.md5(archive.read_bytes()).hexdigest()
    with pytest.raises(Error, match="is not the official"):  # the real md5 is still in the table
        load_dataset(name, "train", data_dir=isolated / "d", download=False)
    set_source(monkeypatch, name, files=(dataclasses.replace(spec, md5=md5),))
    train = load_dataset(name, "train", data_dir=isolated / "d", download=False)
    test = load_dataset(name, "test", data_dir=isolated / "d", download=False)
    assert (archive.parent / SOURCES[name].extracts_to).is_dir()
    assert train.num_classes == (100 if name == "cifar100" else 10) and train.classes[3] == "class3"
    assert train.images.shape[1:] == (3, 32, 32) and train.in_chans == 3 and train.image_size == 32
    # Rows are channel-major: 1024 red, 1024 green, 1024 blue values.
    np.testing.assert_array_equal(train.images.reshape(len(train), -1).numpy(), expected["train_data"])
    np.testing.assert_array_equal(train.labels.numpy(), expected["train_labels"])
    np.testing.assert_array_equal(test.images.reshape(len(test), -1).numpy(), expected["test_data"])
    assert not list(archive.parent.glob(".*.part"))


@pytest.mark.parametrize(
    ("member", "fields", "why"),
    [
        ("/tmp/evil", {}, "has an absolute path"),
        ("cifar-10-batches-py/../../evil", {}, r"leaves the target folder through '\.\.'"),
        ("cifar-10-batches-py/link", {"type": tarfile.SYMTYPE, "linkname": "../../evil"}, "is a link"),
        ("cifar-10-batches-py/hard", {"type": tarfile.LNKTYPE, "linkname": "/etc/passwd"}, "is a link"),
        ("cifar-10-batches-py/dev", {"type": tarfile.CHRTYPE}, "is not a regular file"),
    ],
)
def test_unsafe_tar_members_are_refused_before_anything_is_written(
    tmp_path: Path, member: str, fields: dict, why: str
) -> None:
    archive = tmp_path / "evil.tar.gz"
    with tarfile.open(archive, "w:gz") as tar:
        add_member(tar, "cifar-10-batches-py/data_batch_1", b"harmless")
        add_member(tar, member, b"" if fields else b"payload", **fields)
    target = tmp_path / "a" / "b"
    target.mkdir(parents=True)
    with pytest.raises(Error, match=f"refusing to extract evil.tar.gz: member .* {why}"):
        safe_extract(archive, target)
    assert list(target.iterdir()) == []  # not even the harmless member
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a", "evil.tar.gz"]


class _Exploit:
    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self) -> tuple:
        return os.system, (f"touch {self.marker}",)


def test_a_pickle_that_would_run_code_is_refused_without_running_it(tmp_path: Path) -> None:
    marker = tmp_path / "pwned"
    batch = tmp_path / "data_batch_1"
    batch.write_bytes(py2_pickle({"data": _Exploit(marker), "labels": [0]}))
    with pytest.raises(Error, match=r"refusing to read .*data_batch_1: it refers to (posix|os|nt)\.system"):
        load_batch(batch)
    assert not marker.exists()
    pickle.loads(batch.read_bytes())  # the same bytes do run code under plain pickle:
    assert marker.exists()  # proof that the test's exploit is real


def test_cifar_batches_of_the_wrong_shape_are_refused(tmp_path: Path) -> None:
    path = tmp_path / "batch"
    path.write_bytes(py2_pickle({"data": np.zeros((2, 100), np.uint8), "labels": [0, 1]}))
    from resnetlab.data.cifar import _images_labels

    with pytest.raises(Error, match=r"no \(N, 3072\) uint8 array"):
        _images_labels(path, b"labels")


# ---------------------------------------------------------------- download, search order, offline


@pytest.fixture
def server(tmp_path: Path):
    """An HTTP server on 127.0.0.1 serving tmp_path/www; yields its base URL."""
    root = tmp_path / "www"
    root.mkdir()

    with serving(functools.partial(QuietFiles, directory=str(root))) as url:
        yield url


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_download_fetches_checks_and_moves_into_place(isolated: Path, server: str, monkeypatch) -> None:
    www = isolated / "www"
    contents = write_idx_set(www)
    set_source(monkeypatch, "fashion-mnist", url=server, files=table_for(www, contents))
    train = load_dataset("fashion-mnist", "train")
    target = isolated / "home" / ".cache" / "resnetlab" / "fashion-mnist"
    assert sorted(p.name for p in target.iterdir()) == sorted(f"{n}.gz" for n in IDX_NAMES)
    assert len(train) == 12 and train.classes[0] == "T-shirt/top"
    expected = np.frombuffer(contents["train-images-idx3-ubyte"], np.uint8, offset=16).reshape(12, 1, 28, 28)
    assert torch.equal(train.images, torch.from_numpy(expected.copy()))


def test_download_into_data_dir_when_given(isolated: Path, server: str, monkeypatch) -> None:
    www = isolated / "www"
    set_source(monkeypatch, "fashion-mnist", url=server, files=table_for(www, write_idx_set(www)))
    files = locate("fashion-mnist", isolated / "mine")
    assert {p.parent for p in files} == {isolated / "mine" / "fashion-mnist"}


def test_checksum_mismatch_is_an_error_and_leaves_no_file(tmp_path: Path, server: str) -> None:
    (tmp_path / "www" / "blob.gz").write_bytes(b"not what was published")
    dest = tmp_path / "cache" / "resnetlab" / "blob.gz"
    with pytest.raises(
        Error, match=r"checksum mismatch for .*blob\.gz: md5 \w+, expected 0+; nothing was saved"
    ):
        download(server + "blob.gz", dest, md5="0" * 32)
    assert not (tmp_path / "cache").exists()  # not even the folders it made
    dest.parent.mkdir(parents=True)
    (dest.parent / "other").write_text("kept")
    with pytest.raises(Error, match="HTTP 404"):
        download(server + "missing.gz", dest)
    assert [p.name for p in dest.parent.iterdir()] == ["other"]


def test_offline_error_is_one_line_naming_the_files_and_where_to_put_them(
    isolated: Path, monkeypatch
) -> None:
    set_source(monkeypatch, "fashion-mnist", url=f"http://127.0.0.1:{closed_port()}/")
    with pytest.raises(Error) as error:
        load_dataset("fashion-mnist", "train")
    message = str(error.value)
    assert "\n" not in message
    assert "Connection refused" in message
    for name in IDX_NAMES:
        assert f"{name}.gz" in message
    assert str(isolated / "home" / ".cache" / "resnetlab" / "fashion-mnist") in message
    assert "--data-dir" in message and "RESNETLAB_DATA" in message and "dataset-fashion-mnist" in message
    assert not (isolated / "home" / ".cache" / "resnetlab" / "fashion-mnist").exists()


def test_no_download_flag_names_the_files_instead(isolated: Path) -> None:
    with pytest.raises(
        Error, match=r"cifar10 not found; download cifar-10-python\.tar\.gz from https://\S+ into "
    ):
        load_dataset("cifar10", "train", download=False)


def test_search_order(isolated: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    set_source(monkeypatch, "fashion-mnist", system_dirs=("/usr/share/datasets/fashion-mnist",))
    monkeypatch.setenv("RESNETLAB_DATA", str(isolated / "env"))
    dirs = candidate_dirs("fashion-mnist", isolated / "flag")
    assert dirs == [
        isolated / "flag" / "fashion-mnist",
        isolated / "flag",
        isolated / "env" / "fashion-mnist",
        isolated / "env",
        Path("/usr/share/datasets/fashion-mnist"),
        isolated / "home" / ".cache" / "resnetlab" / "fashion-mnist",
    ]
    contents = write_idx_set(isolated / "env" / "fashion-mnist")
    set_source(monkeypatch, "fashion-mnist", files=table_for(isolated / "env" / "fashion-mnist", contents))
    assert locate("fashion-mnist", download=False)[0].parent == isolated / "env" / "fashion-mnist"
    write_idx_set(isolated / "flag")  # directly in the --data-dir root
    assert locate("fashion-mnist", isolated / "flag", download=False)[0].parent == isolated / "flag"


def test_a_found_file_with_the_wrong_content_is_named(isolated: Path, monkeypatch) -> None:
    write_idx_set(isolated / "d" / "fashion-mnist")  # not the real Fashion-MNIST bytes
    with pytest.raises(
        Error, match=r"d/fashion-mnist/train-images-idx3-ubyte\.gz is not the official fashion-mnist"
    ):
        load_dataset("fashion-mnist", "train", data_dir=isolated / "d")
