"""Does reduced JPEG decoding (or a pack) cost accuracy? A trained model, three ways of reading.

The Fashion-MNIST test set is written as a JPEG folder at 4x size (112x112 greyscale, bicubic,
quality 90), and the shipped `resnet20.fmnist` weights classify it read back at 28 px, the whole
image (resize to 28, no crop):

  in memory       the original 28x28 test images, for reference
  --decode full   every JPEG decoded at 112 px, then resized to 28 (Pillow's antialiased bilinear)
  --decode reduced
                  decoded at 1/4 scale (libjpeg's scaled IDCT: 28 px straight from the DCT)
  pack            packed by `resnetlab data pack --max-side 56`, read with --decode reduced

    python -m benchmarks.decode_accuracy           # about a minute
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from resnetlab.data import load_dataset
from resnetlab.data.folder import FolderDataset
from resnetlab.data.packed import load_pack
from resnetlab.data.packing import pack_folder
from resnetlab.weights import load_pretrained

SCALE = 4  # the folder's images are 4 x 28 = 112 px
QUALITY = 90


def write_folder(root: Path, images: torch.Tensor, labels: torch.Tensor) -> FolderDataset:
    """The test images as root/<label>/<index>.jpg at SCALE times their size; class folders are
    named by label index (a name such as T-shirt/top holds a slash), so they sort as the labels."""
    for label in range(int(labels.max()) + 1):
        (root / str(label)).mkdir(parents=True)
    side = images.shape[-1] * SCALE
    for i, (image, label) in enumerate(zip(images, labels, strict=True)):
        picture = Image.fromarray(image[0].numpy(), "L").resize((side, side), Image.Resampling.BICUBIC)
        picture.save(root / str(int(label)) / f"{i:05d}.jpg", quality=QUALITY)
    return load_dataset(f"imagefolder:{root}", "train", image_size=images.shape[-1])


@torch.no_grad()
def accuracy(model: torch.nn.Module, images: torch.Tensor, labels: torch.Tensor) -> float:
    """Top-1 accuracy (%) on (N, 1, 28, 28) uint8 `images`, normalised as the model was trained."""
    mean, std = model.pretrained_cfg["mean"][0], model.pretrained_cfg["std"][0]
    correct = sum(
        (model((x.float() / 255 - mean) / std).argmax(1) == y).sum().item()
        for x, y in zip(images.split(500), labels.split(500), strict=True)
    )
    return 100 * correct / len(labels)


def read_back(dataset: FolderDataset, decode: str) -> torch.Tensor:
    """(N, 1, 28, 28) uint8: `dataset` read whole at 28 px with `decode`, channel 0 (the grey)."""
    dataset.decode, dataset.resize_size = decode, dataset.image_size  # resize to 28, crop nothing
    return torch.stack([dataset[i][0][:1] for i in range(len(dataset))])


def measure(limit: int | None = None) -> dict[str, tuple[float, float]]:
    """Per way of reading: (test accuracy of resnet20.fmnist, %; mean |pixel - original|, grey
    levels). `limit`: the first N test images."""
    torch.set_num_threads(1)
    test = load_dataset("fashion-mnist", "test")
    images, labels = test.images[:limit], test.labels[:limit]
    model = load_pretrained(None, "resnet20.fmnist").eval()
    with tempfile.TemporaryDirectory() as tmp:
        folder = write_folder(Path(tmp) / "fmnist", images, labels)
        order = np.argsort([int(p.rsplit(b"/", 1)[-1][:5]) for p in folder.paths])  # back to test order
        folder = folder.subset(order)
        pack_folder(folder.root, Path(tmp) / "fmnist.pack", max_side=2 * images.shape[-1], workers=1)
        packed = load_pack(Path(tmp) / "fmnist.pack", "train", image_size=images.shape[-1])
        packed = packed.subset(order)
        ways = {
            "in memory (28 px originals)": images,
            "--decode full": read_back(folder, "full"),
            "--decode reduced": read_back(folder, "reduced"),
            "pack (--max-side 56), reduced": read_back(packed, "reduced"),
        }
    return {
        name: (accuracy(model, x, labels), (x.float() - images.float()).abs().mean().item())
        for name, x in ways.items()
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=None, help="the first N test images (default all)")
    args = parser.parse_args(argv)
    start = time.perf_counter()
    results = measure(args.images)
    full = results["--decode full"][0]
    seconds = time.perf_counter() - start
    print(f"resnet20.fmnist on the Fashion-MNIST test set as 112 px JPEGs, read at 28 px ({seconds:.0f} s)")
    print(f"{'reading':<32} {'accuracy':>9} {'vs full':>8} {'|pixel - original|':>19}")
    for name, (value, error) in results.items():
        print(f"{name:<32} {value:>8.2f}% {value - full:>+7.2f} {error:>19.2f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
