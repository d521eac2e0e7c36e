"""Weights folders in the Hugging Face Hub layout timm reads and writes.

A folder holds `model.safetensors`, `config.json` and a `README.md` model card. config.json is
timm's (`timm.models.load_model_config_from_hf`): `architecture` (a model name; timm's and
resnetlab's agree for the ImageNet ResNets), `num_classes`, `num_features`, `global_pool`,
`model_args` (builder arguments beyond the defaults), `label_names` and `pretrained_cfg`
(`input_size` [C, S, S], `crop_pct`, `interpolation`, `mean`, `std`, ...). resnetlab also keeps
its own metadata in the safetensors header, which timm ignores, so a folder it writes reads back
exactly; a folder from timm or the Hub is read from config.json alone.
"""

from __future__ import annotations

import json
import os
import shutil
import uuid
from pathlib import Path
from typing import Any

from resnetlab.atomic import fsync_dir, write_atomic
from resnetlab.errors import Error
from resnetlab.weights.classes import class_names
from resnetlab.weights.preprocessing import Preprocessing

WEIGHTS_FILE = "model.safetensors"
CONFIG_FILE = "config.json"
CARD_FILE = "README.md"
PREFIX = "local-dir:"  # timm's spelling of a local folder in this layout
# resnetlab models timm builds under the same name with the same state-dict keys.
TIMM_MODELS = frozenset(
    {
        "resnet18",
        "resnet18d",
        "resnet34",
        "resnet34d",
        "resnet50",
        "resnet50d",
        "resnet101",
        "resnet101d",
        "resnet152",
        "resnet152d",
        "resnext50_32x4d",
        "resnext101_32x8d",
        "resnext101_64x4d",
        "wide_resnet50_2",
        "wide_resnet101_2",
    }
)
_TIMM_ARGS = frozenset({"in_chans", "num_classes", "drop_rate", "drop_path_rate"})  # same meaning in timm


def is_hf_folder(path: Path) -> bool:
    """Whether `path` is a folder in this layout (a run directory's config.json has no architecture)."""
    try:
        config = json.loads((path / CONFIG_FILE).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    return isinstance(config, dict) and "architecture" in config and (path / WEIGHTS_FILE).is_file()


def timm_loads(meta: dict[str, Any]) -> bool:
    """Whether timm builds the model `meta` describes, with the same weights and the same outputs."""
    return meta["model"] in TIMM_MODELS and set(meta.get("model_kwargs") or {}) <= _TIMM_ARGS


def hf_config(meta: dict[str, Any], num_features: int) -> dict[str, Any]:
    """The config.json of a folder holding the weights `meta` describes."""
    args = {k: v for k, v in (meta.get("model_kwargs") or {}).items() if k != "num_classes"}
    if int(meta["in_chans"]) != 3:
        args["in_chans"] = int(meta["in_chans"])
    config: dict[str, Any] = {
        "architecture": meta["model"],
        "num_classes": int(meta["num_classes"]),
        "num_features": num_features,
        "global_pool": "avg",
        "model_args": args,
        "pretrained_cfg": {
            "tag": meta.get("tag") or "resnetlab",
            **Preprocessing.from_meta(meta).pretrained_cfg(),
            "num_classes": int(meta["num_classes"]),
            "first_conv": "conv1",
            "classifier": "fc",
        },
    }
    if meta.get("classes"):
        config["label_names"] = list(meta["classes"])
    return config


def read_config(folder: Path) -> dict[str, Any]:
    """resnetlab metadata (model, kwargs, shape, classes, preprocessing) from a folder's config.json."""
    path = folder / CONFIG_FILE
    try:
        config = json.loads(path.read_text(encoding="utf-8"))
        arch, cfg = config["architecture"], config.get("pretrained_cfg") or {}
        args = dict(config.get("model_args") or {})
        input_size = cfg.get("input_size") or [args.get("in_chans", 3), 224, 224]
        preprocessing = Preprocessing.from_pretrained_cfg({**cfg, "input_size": input_size})
        meta = {
            **preprocessing.meta(),
            "model": str(arch),
            "model_kwargs": {k: v for k, v in args.items() if k not in ("in_chans", "num_classes")},
            "num_classes": int(config.get("num_classes", cfg.get("num_classes", 1000))),
            "in_chans": int(args.get("in_chans", input_size[0])),
            "classes": config.get("label_names") or cfg.get("label_names"),
        }
        if meta["classes"] is None and meta["num_classes"] == 1000:
            # timm's ImageNet repositories carry no names: theirs are ImageNet-1k's, in index order
            meta["classes"], meta["dataset"] = list(class_names("imagenet-1k")), "imagenet-1k"
    except OSError as exc:
        raise Error(f"cannot read {path}: {exc.strerror or exc}") from None
    except (ValueError, KeyError, TypeError, IndexError, AttributeError) as exc:
        raise Error(f"{path} is not a timm config.json ({type(exc).__name__}: {exc})") from None
    return meta


def write_folder(out: Path, files: dict[str, bytes]) -> None:
    """Create folder `out` holding `files` (name -> bytes) whole or not at all: written into a
    hidden folder beside it, fsynced, renamed. An existing `out` must be empty."""
    out = Path(out)
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise Error(f"--out {out} exists and is not an empty folder; remove it or name another")
    if not out.parent.is_dir():
        raise Error(f"--out {out}: folder {out.parent} does not exist")
    tmp = out.with_name(f".{out.name}.{uuid.uuid4().hex}.tmp")
    try:
        tmp.mkdir()
        for name, data in files.items():
            write_atomic(tmp / name, data)
        fsync_dir(tmp)
        if out.exists():
            out.rmdir()
        os.replace(tmp, out)
        fsync_dir(out.parent)
    except OSError as exc:
        raise Error(f"cannot write {out}: {exc.strerror or exc}") from None
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
