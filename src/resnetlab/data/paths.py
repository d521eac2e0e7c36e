"""Where data sets are looked for and where downloads go.

Search order: `--data-dir`, `$RESNETLAB_DATA`, the folders a distribution installs (Debian's
/usr/share/datasets/fashion-mnist), `~/.cache/resnetlab`. In a root the files may sit in
`ROOT/<name>/` or in ROOT itself. Downloads go to `<first of data-dir, $RESNETLAB_DATA, cache>/<name>`.
"""

from __future__ import annotations

import os
from pathlib import Path

from resnetlab.data.sources import SOURCES
from resnetlab.errors import Error


def cache_dir() -> Path:
    return Path.home() / ".cache" / "resnetlab"


def check_data_dir(data_dir: str | os.PathLike | None) -> None:
    """Refuse a `--data-dir` that is not a folder. Every command's data goes through here (by way
    of `load_dataset`), so none quietly uses data found elsewhere instead; `locate` alone (the
    Python download API) still creates the folder it is asked to download into."""
    if data_dir is not None and not Path(data_dir).expanduser().is_dir():
        raise Error(f"--data-dir {data_dir} is not a directory; fix the path or create it to download into")


def _roots(data_dir: str | os.PathLike | None) -> list[Path]:
    return [Path(root).expanduser() for root in (data_dir, os.environ.get("RESNETLAB_DATA")) if root]


def candidate_dirs(name: str, data_dir: str | os.PathLike | None = None) -> list[Path]:
    """Folders that may hold data set `name`, in the order they are tried."""
    dirs = [d for root in _roots(data_dir) for d in (root / name, root)]
    dirs += [Path(d) for d in SOURCES[name].system_dirs]
    dirs.append(cache_dir() / name)
    return dirs


def download_dir(name: str, data_dir: str | os.PathLike | None = None) -> Path:
    """The folder a download of `name` goes to."""
    roots = _roots(data_dir)
    return (roots[0] if roots else cache_dir()) / name


def manual_install(name: str, data_dir: str | os.PathLike | None = None) -> str:
    """What to do by hand when a data set is missing and cannot be downloaded, in one sentence."""
    source = SOURCES[name]
    files = ", ".join(spec.name for spec in source.files)
    elsewhere = f"or into DIR/{name} and pass --data-dir DIR or set RESNETLAB_DATA=DIR"
    package = f", or install {source.package}" if source.package else ""
    return f"download {files} from {source.url} into {download_dir(name, data_dir)} ({elsewhere}){package}"
