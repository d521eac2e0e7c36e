"""The table of pretrained checkpoints: data only. Facts from shared/REFERENCE.md, "Pretrained weights".

torchvision: every file of its `resnet.py` (0.29), tagged tv_in1k (IMAGENET1K_V1) and tv2_in1k
(IMAGENET1K_V2, the default where it exists), as timm names the same files. timm: a few Hugging Face
Hub repositories, fetched through `hf-hub:` (weights/hub.py): each download is checked against
the sha256 the Hub publishes for it, and the preprocessing comes from the repository's config.json.
"""

from __future__ import annotations

from resnetlab.weights.entry import Metrics, WeightsEntry

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

_TV_URL = "https://download.pytorch.org/models/"
_TV_LICENSE = "BSD-3-Clause (torchvision)"
_TIMM_LICENSE = "Apache-2.0 (timm)"


def _torchvision(
    model: str,
    version: int,
    file_name: str,
    num_params: int,
    acc1: float,
    acc5: float,
    size_mb: float,
    resize_size: int,
    *,
    default: bool = False,
) -> WeightsEntry:
    """A torchvision IMAGENET1K_V<version> file; its name carries the first 8 hex digits of its sha256."""
    return WeightsEntry(
        model=model,
        tag="tv_in1k" if version == 1 else "tv2_in1k",
        url=_TV_URL + file_name,
        file_name=file_name,
        sha256=file_name.rsplit("-", 1)[1].removesuffix(".pth"),
        format="pth",
        num_params=num_params,
        num_classes=1000,
        in_chans=3,
        dataset="imagenet-1k",
        image_size=224,
        resize_size=resize_size,
        interpolation="bilinear",
        mean=IMAGENET_MEAN,
        std=IMAGENET_STD,
        metrics=Metrics(
            "imagenet-1k val", acc1, acc5, "torchvision docs: single 224 crop on ImageNet-1K val"
        ),
        license=_TV_LICENSE,
        size_mb=size_mb,
        default=default,
        notes=f"torchvision {model} IMAGENET1K_V{version}",
    )


def _fashion(
    model: str,
    tag: str,
    sha256: str,
    num_params: int,
    acc1: float,
    acc5: float,
    size_mb: float,
    mean: float,
    std: float,
    trained_by: str,
    *,
    default: bool = False,
) -> WeightsEntry:
    """resnetlab's own Fashion-MNIST weights, shipped in the package; figures measured by
    `resnetlab eval <model>.<tag>` (python -m resnetlab.train.ship prints the entry)."""
    return WeightsEntry(
        model=model,
        tag=tag,
        url=None,
        file_name=f"{model}-{tag}.safetensors",
        sha256=sha256,
        format="safetensors",
        num_params=num_params,
        num_classes=10,
        in_chans=1,
        dataset="fashion-mnist",
        image_size=28,
        resize_size=28,
        interpolation="bilinear",
        mean=(mean,),  # of the training set's pixels, [0, 1] units
        std=(std,),
        metrics=Metrics(
            "fashion-mnist test",
            acc1,
            acc5,
            f"resnetlab eval {model}.{tag}: the 10,000 test images, one view",
        ),
        license="MIT (resnetlab)",
        size_mb=size_mb,
        default=default,
        shipped=True,
        data="fashion-mnist",
        notes=f"trained by {trained_by}",
    )


def _timm(
    model: str,
    tag: str,
    num_params: int,
    *,
    image_size: int | None = None,
    resize_size: int | None = None,
    interpolation: str | None = None,
    acc1: float | None = None,
    how: str = "not in REFERENCE.md; see the timm model card",
    default: bool = False,
    notes: str = "",
) -> WeightsEntry:
    """A timm Hub repository `timm/<model>.<tag>`: model.safetensors plus config.json, fetched
    through `hf-hub:` and checked against the sha256 the Hub publishes for it."""
    return WeightsEntry(
        model=model,
        tag=tag,
        url=None,
        file_name="model.safetensors",  # in the Hugging Face cache's snapshot of the repository
        sha256=None,  # the Hub names it: every download is checked against that
        format="safetensors",
        num_params=num_params,
        num_classes=1000,
        in_chans=3,
        dataset="imagenet-1k",
        image_size=image_size,
        resize_size=resize_size,
        interpolation=interpolation,
        mean=None,  # from config.json
        std=None,
        metrics=Metrics("imagenet-1k val", acc1, None, how),
        license=_TIMM_LICENSE,
        default=default,
        hub=f"timm/{model}.{tag}",
        notes=notes,
    )


ENTRIES: tuple[WeightsEntry, ...] = (
    _torchvision("resnet18", 1, "resnet18-f37072fd.pth", 11_689_512, 69.758, 89.078, 44.7, 256, default=True),
    _torchvision("resnet34", 1, "resnet34-b627a593.pth", 21_797_672, 73.314, 91.420, 83.3, 256, default=True),
    _torchvision("resnet50", 1, "resnet50-0676ba61.pth", 25_557_032, 76.130, 92.862, 97.8, 256),
    _torchvision("resnet50", 2, "resnet50-11ad3fa6.pth", 25_557_032, 80.858, 95.434, 97.8, 232, default=True),
    _torchvision("resnet101", 1, "resnet101-63fe2227.pth", 44_549_160, 77.374, 93.546, 170.5, 256),
    _torchvision(
        "resnet101", 2, "resnet101-cd907fc2.pth", 44_549_160, 81.886, 95.780, 170.5, 232, default=True
    ),
    _torchvision("resnet152", 1, "resnet152-394f9c45.pth", 60_192_808, 78.312, 94.046, 230.4, 256),
    _torchvision(
        "resnet152", 2, "resnet152-f82ba261.pth", 60_192_808, 82.284, 96.002, 230.5, 232, default=True
    ),
    _torchvision("resnext50_32x4d", 1, "resnext50_32x4d-7cdf4587.pth", 25_028_904, 77.618, 93.698, 95.8, 256),
    _torchvision(
        "resnext50_32x4d",
        2,
        "resnext50_32x4d-1a0047aa.pth",
        25_028_904,
        81.198,
        95.340,
        95.8,
        232,
        default=True,
    ),
    _torchvision(
        "resnext101_32x8d", 1, "resnext101_32x8d-8ba56ff5.pth", 88_791_336, 79.312, 94.526, 339.6, 256
    ),
    _torchvision(
        "resnext101_32x8d",
        2,
        "resnext101_32x8d-110c445d.pth",
        88_791_336,
        82.834,
        96.228,
        339.7,
        232,
        default=True,
    ),
    _torchvision(
        "resnext101_64x4d",
        1,
        "resnext101_64x4d-173b62eb.pth",
        83_455_272,
        83.246,
        96.454,
        319.3,
        232,
        default=True,
    ),
    _torchvision(
        "wide_resnet50_2", 1, "wide_resnet50_2-95faca4d.pth", 68_883_240, 78.468, 94.086, 131.8, 256
    ),
    _torchvision(
        "wide_resnet50_2",
        2,
        "wide_resnet50_2-9ba9bcbe.pth",
        68_883_240,
        81.602,
        95.758,
        263.1,
        232,
        default=True,
    ),
    _torchvision(
        "wide_resnet101_2", 1, "wide_resnet101_2-32ee1156.pth", 126_886_696, 78.848, 94.284, 242.9, 256
    ),
    _torchvision(
        "wide_resnet101_2",
        2,
        "wide_resnet101_2-d733dc28.pth",
        126_886_696,
        82.510,
        96.020,
        484.7,
        232,
        default=True,
    ),
    # timm: resnet50.a1_in1k was trained at 224 and is best tested at 288 (81.24); crop_pct 0.95.
    _timm(
        "resnet50",
        "a1_in1k",
        25_557_032,
        image_size=224,
        resize_size=235,  # floor(224 / 0.95), timm's eval resize for crop_pct 0.95
        interpolation="bicubic",
        acc1=80.38,
        how="timm (REFERENCE.md): 224 crop, crop_pct 0.95, bicubic; 81.24 at 288",
    ),
    _timm("resnet18d", "ra2_in1k", 11_708_744, default=True),
    _timm("resnet50d", "ra2_in1k", 25_576_264, default=True),
    _timm("resnet50d", "a1_in1k", 25_576_264),
    _timm("resnet101d", "ra2_in1k", 44_568_392, default=True),
    # resnetlab's own, measured here (the shipped file, 10,000 Fashion-MNIST test images).
    _fashion(
        "resnet20",
        "fmnist",
        sha256="7e9340e6e2753834c05c590e54976744fc6afba1004c237eef11e335b36f62d4",
        num_params=269_434,
        acc1=93.98,
        acc5=99.97,
        size_mb=1.04,
        mean=0.2860405969887955,
        std=0.3530242445149226,
        trained_by="python -m benchmarks.time_to_accuracy --model resnet20 --recipe fast --epochs 15 "
        "--val-size 0 --target 0.93 --out /tmp/ship/r20",
        default=True,
    ),
    _fashion(
        "resnet56",
        "fmnist",
        sha256="b875c9e70d656d258982eb33d31a9d7339b9e5fd11376d9de0d45732ffed4c31",
        num_params=852_730,
        acc1=95.06,
        acc5=99.92,
        size_mb=3.3,
        mean=0.2860405969887955,
        std=0.3530242445149226,
        trained_by="resnetlab train --recipe fast-long --seed 0 --out /tmp/ship/r56/seed-0 "
        "--overwrite --no-progress --model resnet56 --val-size 0 --final-eval-only",
        default=True,
    ),
)
