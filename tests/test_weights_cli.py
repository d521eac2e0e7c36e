"""`resnetlab weights`, `weights download`, `predict --weights`, `eval TAG` and torch.hub."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from resnetlab import create_model
from resnetlab.cli import main
from resnetlab.models import list_models
from resnetlab.weights import Metrics, class_names
from resnetlab.weights.table import IMAGENET_MEAN, IMAGENET_STD
from weights_fixtures import TINY, closed_port, entry, isolate_caches, register, serve, tiny, torchvision_file

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture
def home(tmp_path, monkeypatch):
    return isolate_caches(tmp_path, monkeypatch)


@pytest.fixture
def served(tmp_path, monkeypatch, home):
    """A tiny 1000-class ImageNet-style entry `cifar_resnet.test` served from 127.0.0.1."""
    with serve(tmp_path / "www") as (base, requests):
        torch.manual_seed(0)
        source = create_model("cifar_resnet", **TINY, num_classes=1000).eval()
        path = torchvision_file(tmp_path / "www", "tiny", source.state_dict())
        imagenet = dict(num_classes=1000, dataset="imagenet-1k", image_size=32, resize_size=36)
        imagenet.update(mean=IMAGENET_MEAN, std=IMAGENET_STD, size_mb=None)
        register(monkeypatch, entry(base + path.name, path.name, path.name[-12:-4], **imagenet))
        yield path, requests


def run(capsys, *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def test_weights_lists_the_table_with_sources_and_the_cache(home, capsys):
    code, out, _ = run(capsys, "weights")
    assert code == 0
    lines = out.splitlines()
    assert lines[0].split() == ["tag", "params", "dataset", "acc@1", "size", "cached", "source"]
    row = next(line for line in lines if line.startswith("resnet50.tv2_in1k *"))
    assert row.split()[2:] == [
        "25,557,032",
        "imagenet-1k",
        "80.86",
        "97.8",
        "MB",
        "no",
        "https://download.pytorch.org/models/resnet50-11ad3fa6.pth",
    ]
    assert sum(".tv_in1k" in line or ".tv2_in1k" in line for line in lines) == 17
    a1 = next(line for line in lines if line.startswith("resnet50.a1_in1k"))
    assert a1.split()[-3:] == ["?", "no", "hf-hub:timm/resnet50.a1_in1k"]  # checked by the Hub's sha256
    assert "hf-hub: checked against the sha256 the Hub publishes" in out
    torch_dir = home.parent / "torch" / "hub" / "checkpoints"
    assert lines[-1] == f"cache: {home / 'weights'} (files in {torch_dir} are used too)"
    code, out, _ = run(capsys, "weights", "resnet50")  # a model name: its tags only
    tags = [line.split()[0] for line in out.splitlines()[1:] if line.startswith("resnet")]
    assert code == 0 and tags == ["resnet50.tv_in1k", "resnet50.tv2_in1k", "resnet50.a1_in1k"]
    code, out, _ = run(capsys, "weights", "*d.ra2_in1k")
    assert code == 0 and "resnet50d.ra2_in1k *" in out and "resnet50.tv_in1k" not in out


def test_weights_download_fetches_into_the_cache_and_the_table_says_so(served, home, capsys):
    path, requests = served
    code, out, _ = run(capsys, "weights", "download", "cifar_resnet.test")
    assert code == 0 and out == f"cifar_resnet.test: cached at {home / 'weights' / path.name}\n"
    assert (home / "weights" / path.name).read_bytes() == path.read_bytes()
    code, out, _ = run(capsys, "weights", "cifar_resnet")
    row = out.splitlines()[1].split()
    assert code == 0 and row[0] == "cifar_resnet.test" and row[5:7] == ["MB", "yes"]  # size from the file
    run(capsys, "weights", "download", "cifar_resnet.test")
    assert len(requests) == 1


def test_predict_with_weights_prints_the_top5_imagenet_names(served, tmp_path, capsys):
    image = tmp_path / "cat.png"
    Image.new("RGB", (48, 40), (200, 120, 40)).save(image)
    code, out, _ = run(capsys, "predict", "--weights", "cifar_resnet.test", str(image), str(image))
    assert code == 0
    lines = out.splitlines()
    assert len(lines) == 2 and lines[0] == lines[1]
    head, ranked = lines[0].split(": ", 1)
    assert head == str(image) and ranked.count("%") == 5
    model = create_model("cifar_resnet", pretrained="test").eval()  # the same view, computed here
    # A uniform image: its 32 px centre crop at any scale is exactly that colour.
    x = torch.from_numpy(np.array(Image.open(image).resize((32, 32)))).permute(2, 0, 1).float() / 255
    x = (x - torch.tensor(IMAGENET_MEAN).view(3, 1, 1)) / torch.tensor(IMAGENET_STD).view(3, 1, 1)
    probs = model(x[None]).softmax(1)[0]
    top = probs.topk(5)
    names = class_names("imagenet-1k")
    expected = ", ".join(
        f"{names[i]} {100 * p:.1f}%" for i, p in zip(top.indices.tolist(), top.values.tolist(), strict=True)
    )
    assert ranked == expected


def test_eval_of_an_imagenet_tag_needs_data_and_checks_it(served, tmp_path, capsys):
    code, _, err = run(capsys, "eval", "cifar_resnet.test")
    assert code == 2 and err.splitlines()[0].startswith("downloading http://127.0.0.1:")
    assert err.splitlines()[1].startswith("resnetlab: error: ") and len(err.splitlines()) == 2
    assert "cifar_resnet.test was trained on imagenet-1k, which resnetlab cannot fetch; give --data" in err
    folder = tmp_path / "folder"
    for split in ("train", "val"):
        for name in ("a", "b"):
            (folder / split / name).mkdir(parents=True)
            Image.new("RGB", (40, 40), (9, 99, 199)).save(folder / split / name / "0.png")
    code, _, err = run(capsys, "eval", "cifar_resnet.test", "--data", f"imagefolder:{folder}")
    assert code == 2 and "has 2 classes and 3 channels, but the model was trained for 1000 classes" in err


def test_eval_of_a_tag_on_a_folder_uses_the_entrys_preprocessing(tmp_path, monkeypatch, home, capsys):
    source = tiny()
    path = torchvision_file(tmp_path, "two", source.state_dict())
    (home / "weights").mkdir(parents=True)
    path.rename(home / "weights" / path.name)
    url = f"http://127.0.0.1:{closed_port()}/{path.name}"  # never asked: the file is in the cache
    folder_like = {"num_classes": 2, "dataset": "imagenet-1k", "image_size": 24, "resize_size": 40}
    folder_like["metrics"] = Metrics("imagenet-1k val", 50.0, None, "a test figure")
    register(monkeypatch, entry(url, path.name, None, **folder_like))
    folder = tmp_path / "folder"
    for split in ("train", "val"):
        for name, colour in (("a", (0, 0, 0)), ("b", (255, 255, 255))):
            (folder / split / name).mkdir(parents=True)
            Image.new("RGB", (40, 40), colour).save(folder / split / name / "0.png")
    monkeypatch.chdir(tmp_path)
    code, out, err = run(
        capsys, "eval", "cifar_resnet.test", "--data", f"imagefolder:{folder}", "--device", "cpu"
    )
    assert code == 0, err
    assert out.startswith("cifar_resnet on imagefolder:")
    assert "test (2 images): top-1 error" in out
    assert (
        "cifar_resnet.test records top-1 accuracy 50.0% on imagenet-1k val (a test figure); measured here: "
        in out
    )
    assert "confusion matrix: not drawn" in out and not list(tmp_path.glob("*.png"))  # none unasked


@pytest.mark.parametrize(
    "argv, fragment",
    [
        (["weights", "download"], "needs at least one TAG"),
        (
            ["weights", "download", "resnet50.tv9"],
            "unknown weights 'resnet50.tv9'; did you mean resnet50.tv_in1k",
        ),
        (["weights", "nothing*"], "no pretrained weights match 'nothing*'"),
        (["weights", "resnet50", "resnet18"], "give one PATTERN, or `download TAG...`"),
        (
            ["predict", "x.png"],
            "give a model (RUN_DIR, weights file or --weights TAG) and at least one IMAGE",
        ),
        (["predict", "--weights", "resnet50.v9", "x.png"], "unknown weights 'resnet50.v9'"),
        (["eval", "tv2_in1k"], "weights tag 'tv2_in1k' is ambiguous"),
        (["eval", "/no/such/w.pth"], "/no/such/w.pth does not exist"),
    ],
)
def test_weights_user_errors_are_one_line_and_exit_2(argv, fragment, home, capsys):
    code, _, err = run(capsys, *argv)
    assert code == 2 and err.count("\n") == 1 and err.startswith("resnetlab: error: ")
    assert fragment in err


def test_download_offline_is_one_line_naming_where_to_put_the_file(home, monkeypatch, capsys):
    url = f"http://127.0.0.1:{closed_port()}/tiny-0badc0de.pth"
    register(monkeypatch, entry(url, "tiny-0badc0de.pth", "0badc0de"))
    code, _, err = run(capsys, "weights", "download", "cifar_resnet.test")
    assert code == 2 and err.count("\n") == 1
    assert f"offline? fetch {url} by hand and save it as tiny-0badc0de.pth in {home / 'weights'}" in err


def test_torch_hub_loads_every_registered_model_from_the_checkout(home, tmp_path):
    spec = importlib.util.spec_from_file_location("resnetlab_hubconf", REPO / "hubconf.py")
    hubconf = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(hubconf)
    entry_points = sorted(n for n in dir(hubconf) if callable(getattr(hubconf, n)) and not n.startswith("_"))
    assert entry_points == sorted(list_models())  # what torch.hub.list shows
    assert "ResNet-50 [He15 Table 1]" in hubconf.resnet50.__doc__
    model = torch.hub.load(str(REPO), "resnet50", source="local")
    assert sum(p.numel() for p in model.parameters()) == 25_557_032 and not hasattr(model, "pretrained_cfg")
    source = create_model("resnet18").eval()
    torch.save(source.state_dict(), tmp_path / "r18.pth")
    hub = torch.hub.load(
        str(REPO), "resnet18", source="local", pretrained=tmp_path / "r18.pth", num_classes=5
    )
    assert hub.pretrained_cfg["num_classes"] == 5 and hub.fc.out_features == 5
    got, want = hub.state_dict(), source.state_dict()
    assert all(torch.equal(got[k], v) for k, v in want.items() if not k.startswith("fc."))
