"""`WeightsEntry`: what one pretrained checkpoint is, where it comes from and how it was measured."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True)
class Metrics:
    """Published accuracy of a checkpoint; None where the source publishes no figure."""

    dataset: str  # e.g. "imagenet-1k val", "fashion-mnist test"
    acc1: float | None  # top-1 accuracy, percent
    acc5: float | None  # top-5 accuracy, percent
    how: str  # how the figure was measured, and by whom


@dataclass(frozen=True)
class WeightsEntry:
    """One checkpoint, named `<model>.<tag>` as timm does (resnet50.tv2_in1k).

    The file comes from `url` (downloaded into the cache), from a Hugging Face Hub repository
    (`hub`, through weights/hub.py: the Hub publishes each LFS file's sha256, and every download
    is checked against it), or ships inside the package (`shipped`). `sha256` is the file's digest
    or a prefix of it (torchvision's names carry the first 8 hex digits); None for Hub files,
    whose digest the Hub gives. Preprocessing fields left None are read from the repository's
    `config.json`.
    """

    model: str  # registered model name
    tag: str  # the part after the dot
    url: str | None  # where to download the file; None for a shipped file
    file_name: str  # path of the file inside the cache (or inside weights/shipped/)
    sha256: str | None  # full hex digest or its first digits; None: not published
    format: str  # "pth" (zip torch.save of a state dict) or "safetensors"
    num_params: int  # parameters of the model with this checkpoint's head and stem
    num_classes: int
    in_chans: int
    dataset: str  # trained on: "imagenet-1k" or "fashion-mnist"; names the classes (weights.classes)
    image_size: int | None  # crop side, px
    resize_size: int | None  # short side before the centre crop, px
    interpolation: str | None  # "bilinear" or "bicubic"
    mean: tuple[float, ...] | None  # per input channel, [0, 1] units
    std: tuple[float, ...] | None
    metrics: Metrics
    license: str
    size_mb: float | None = None  # published file size, MiB
    default: bool = False  # the weights `pretrained=True` means for this model
    shipped: bool = False  # the file is in the package (works offline)
    hub: str | None = None  # "ORG/NAME" of a Hub repository in timm's layout (weights/hf.py)
    data: str | None = None  # resnetlab data set name to evaluate on (`resnetlab eval`); None: not here
    notes: str = ""
    model_kwargs: dict[str, object] = field(default_factory=dict)  # builder options it needs (depth=8)

    @property
    def name(self) -> str:
        return f"{self.model}.{self.tag}"

    @property
    def source(self) -> str:
        """Where the file comes from, as `pretrained=` would spell it."""
        if self.hub is not None:
            return f"hf-hub:{self.hub}"
        return self.url or "inside the package"
