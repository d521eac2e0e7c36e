"""Where each published data set lives and how to check it: addresses, checksums, class names.

This file is the table that downloads and checks come from; no other file holds an address or a
checksum. Figures are from ../shared/REFERENCE.md (the data sets' own pages and Debian's package).
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class RemoteFile:
    name: str  # the file name as published
    md5: str  # of the published file (the .gz or the .tar.gz)
    sha256: str | None = None  # of the decompressed bytes, where known (survives recompression)


@dataclass(frozen=True)
class Source:
    format: str  # "idx" (gzipped IDX files) or "cifar" (a tarball of pickled batches)
    url: str  # base address; a file is fetched from url + file.name
    files: tuple[RemoteFile, ...]
    classes: tuple[str, ...] = ()  # when the files do not name them (CIFAR's meta file does)
    system_dirs: tuple[str, ...] = ()  # read-only copies a distribution installs
    package: str = ""  # the distribution package that installs them
    extracts_to: str = ""  # the folder a tarball unpacks to
    mirror_keeps_class: bool = True  # False where a mirrored image is not of its class (digits)


_FASHION_CLASSES = (
    "T-shirt/top",
    "Trouser",
    "Pullover",
    "Dress",
    "Coat",
    "Sandal",
    "Shirt",
    "Sneaker",
    "Bag",
    "Ankle boot",
)

SOURCES: dict[str, Source] = {
    "fashion-mnist": Source(
        format="idx",
        url="http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/",
        files=(
            RemoteFile(
                "train-images-idx3-ubyte.gz",
                md5="8d4fb7e6c68d591d4c3dfef9ec88bf0d",
                sha256="c59f468a2f672dc815687fe0f83887768d799fd8a3f3276145d20f83aa44d888",
            ),
            RemoteFile(
                "train-labels-idx1-ubyte.gz",
                md5="25c81989df183df01b3e8a0aad5dffbe",
                sha256="bad3541b69d912435c50bb6ba87bec294ff4f6a2e1246121d8633921760443d9",
            ),
            RemoteFile(
                "t10k-images-idx3-ubyte.gz",
                md5="bef4ecab320f06d8554ea6380940ec79",
                sha256="5b4141f0afbad91edebe8549f8fcffe087ea10ca49f1dbef5c9a5cd8815ce37b",
            ),
            RemoteFile(
                "t10k-labels-idx1-ubyte.gz",
                md5="bb300cfdad3c16e7a12a480ee83cd310",
                sha256="0402a96d92fd2663957122ceb108a494c5af83dab82d92729df917d7dec38c34",
            ),
        ),
        classes=_FASHION_CLASSES,
        # Debian's dataset-fashion-mnist; it recompressed the .gz files, hence the sha256 above.
        system_dirs=("/usr/share/datasets/fashion-mnist",),
        package="Debian's dataset-fashion-mnist (apt install dataset-fashion-mnist)",
    ),
    "mnist": Source(
        format="idx",
        url="https://ossci-datasets.s3.amazonaws.com/mnist/",
        files=(
            RemoteFile("train-images-idx3-ubyte.gz", md5="f68b3c2dcbeaaa9fbdd348bbdeb94873"),
            RemoteFile("train-labels-idx1-ubyte.gz", md5="d53e105ee54ea40749a09fcbcd1e9432"),
            RemoteFile("t10k-images-idx3-ubyte.gz", md5="9fb629c4189551a2d022fa330f9573f3"),
            RemoteFile("t10k-labels-idx1-ubyte.gz", md5="ec29112dd5afa0611ce80d1b7f02629c"),
        ),
        classes=tuple(str(digit) for digit in range(10)),
        mirror_keeps_class=False,
    ),
    "cifar10": Source(
        format="cifar",
        url="https://www.cs.toronto.edu/~kriz/",
        files=(RemoteFile("cifar-10-python.tar.gz", md5="c58f30108f718f92721af3b95e74349a"),),
        extracts_to="cifar-10-batches-py",
    ),
    "cifar100": Source(
        format="cifar",
        url="https://www.cs.toronto.edu/~kriz/",
        files=(RemoteFile("cifar-100-python.tar.gz", md5="eb9058c3a382ffc7106e4002c42a8d85"),),
        extracts_to="cifar-100-python",
    ),
}
