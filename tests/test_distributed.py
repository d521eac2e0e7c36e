"""Data-parallel training on real processes: 2 gloo ranks on loopback, as torchrun starts them.

One process group (`ranks` below, torch.multiprocessing with torchrun's environment contract)
answers the questions about sharding, reduced evaluation and DDP steps; each test compares its
ranks' answers with a single-process run in this process.
"""

from __future__ import annotations

import functools
import socket

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from ddp_harness import drift, one_thread, spawn
from resnetlab.data import FolderDataset, ImageArrays, load_dataset, make_loader
from resnetlab.errors import Error
from resnetlab.models import create_model
from resnetlab.train.distributed import Runtime, setup_runtime, teardown_runtime, unwrap
from resnetlab.train.evaluate import evaluate

# Both modules start real process groups (2 ranks, plus torchrun's agent); on one xdist worker
# (`--dist loadgroup`) they run one group at a time instead of oversubscribing 2 cores with 4-6
# processes, and their module fixtures (the reference runs) are built once, not once per worker.
pytestmark = pytest.mark.xdist_group("process-groups")

WORLD = 2
GLOBAL_BATCH = 16
STEPS = 4
EXAMPLES = 301  # odd on purpose: rank 0 evaluates 151 examples, rank 1 150


@functools.cache
def _test_images(n: int) -> ImageArrays:
    """The first n examples of Fashion-MNIST's test split (the real images, their real labels)."""
    return load_dataset("fashion-mnist", "test").subset(range(n))


def _numbered(data: ImageArrays) -> ImageArrays:
    """The same images labelled 0..N-1, so the labels of a batch say which examples it holds."""
    n = len(data)
    return ImageArrays(data.images, torch.arange(n), [str(i) for i in range(n)], data.mean, data.std)


def _tiny_model() -> torch.nn.Module:
    """75k-parameter CIFAR ResNet with BN frozen (eval-mode statistics), so that one batch of
    2B examples and two ranks of B examples each compute the same gradient, up to fp32 rounding."""
    torch.manual_seed(0)
    return create_model("cifar_resnet", depth=8, in_chans=1, norm="frozen_bn")


def _sgd_steps(model: torch.nn.Module, train_model: torch.nn.Module, loader) -> dict[str, torch.Tensor]:
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9, weight_decay=1e-4)
    for _, (x, y) in zip(range(STEPS), loader, strict=False):
        loss = F.cross_entropy(train_model(x), y)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def _labels(loader) -> list[torch.Tensor]:
    return [y for _, y in loader]


def _rank_report(folder: str) -> dict:
    """What one rank sees and computes; runs in each spawned process."""
    runtime = setup_runtime("cpu")
    try:
        images = _test_images(EXAMPLES)
        numbered = _numbered(images)
        shared = dict(device=runtime.device, rank=runtime.rank, world_size=runtime.world_size)
        train = make_loader(numbered, batch_size=GLOBAL_BATCH // WORLD, train=True, seed=5, **shared)
        epochs = []
        for epoch in (0, 1):
            train.set_epoch(epoch)
            epochs.append(_labels(train))
        eval_labels = _labels(make_loader(numbered, batch_size=64, train=False, **shared))
        folder_set = FolderDataset(
            folder,
            np.array([b"x.png"] * 11),
            np.arange(11),
            [str(i) for i in range(11)],
            mean=(0.5,) * 3,
            std=(0.25,) * 3,
            image_size=8,
        )
        folder_train = make_loader(folder_set, batch_size=2, train=True, num_workers=0, seed=5, **shared)
        folder_eval = make_loader(folder_set, batch_size=2, train=False, num_workers=0, **shared)

        model = _tiny_model()
        result = evaluate(
            model, make_loader(images, batch_size=64, train=False, **shared), num_classes=10, runtime=runtime
        )
        ddp = runtime.wrap(model)
        loader = make_loader(images, batch_size=GLOBAL_BATCH // WORLD, train=True, seed=5, **shared)
        weights = _sgd_steps(unwrap(ddp), ddp, loader)
        return {
            "rank": runtime.rank,
            "world_size": runtime.world_size,
            "backend": runtime.backend,
            "train_epochs": epochs,
            "eval_labels": eval_labels,
            "folder_train": _labels(folder_train),
            "folder_eval": _labels(folder_eval),
            "eval": {**result.record(), "confusion": result.confusion},
            "weights": weights,
            "wrapped": type(ddp).__name__,
        }
    finally:
        teardown_runtime(runtime)


@pytest.fixture(scope="module", autouse=True)
def _single_threaded():
    with one_thread():
        yield


@pytest.fixture(scope="module")
def ranks(tmp_path_factory) -> list[dict]:
    folder = tmp_path_factory.mktemp("folder")
    Image.fromarray(np.full((10, 12, 3), 200, dtype=np.uint8)).save(folder / "x.png")
    return spawn(_rank_report, str(folder), world_size=WORLD, timeout=90)


def test_ranks_join_one_gloo_group(ranks):
    assert [(r["rank"], r["world_size"], r["backend"]) for r in ranks] == [(0, 2, "gloo"), (1, 2, "gloo")]
    assert {r["wrapped"] for r in ranks} == {"DistributedDataParallel"}


def test_training_shards_are_disjoint_and_cover_each_epoch(ranks):
    per_batch = GLOBAL_BATCH // WORLD
    usable = EXAMPLES // GLOBAL_BATCH * GLOBAL_BATCH  # the same steps as one process would take
    for epoch in (0, 1):
        shards = [torch.cat(r["train_epochs"][epoch]) for r in ranks]
        assert [len(s) for s in shards] == [usable // WORLD] * WORLD
        assert all(len(b) == per_batch for r in ranks for b in r["train_epochs"][epoch])
        assert len(set(torch.cat(shards).tolist())) == usable  # disjoint
        # Batch b of the two ranks together is batch b of one process with the global batch.
        single = make_loader(
            _numbered(_test_images(EXAMPLES)), batch_size=GLOBAL_BATCH, train=True, device="cpu", seed=5
        )
        single.set_epoch(epoch)
        for b, whole in enumerate(_labels(single)):
            together = torch.cat([r["train_epochs"][epoch][b] for r in ranks])
            assert sorted(together.tolist()) == sorted(whole.tolist())
    assert not torch.equal(ranks[0]["train_epochs"][0][0], ranks[0]["train_epochs"][1][0])  # reshuffled


def test_eval_shards_count_every_example_exactly_once(ranks):
    seen = torch.cat([torch.cat(r["eval_labels"]) for r in ranks])
    assert sorted(seen.tolist()) == list(range(EXAMPLES))
    folder_seen = torch.cat([torch.cat(r["folder_eval"]) for r in ranks])
    assert sorted(folder_seen.tolist()) == list(range(11))
    folder_train = [torch.cat(r["folder_train"]).tolist() for r in ranks]
    assert len(folder_train[0]) == len(folder_train[1]) == 4  # 5 per rank, 2 per batch, drop_last
    assert not set(folder_train[0]) & set(folder_train[1])


def test_distributed_eval_equals_single_process_eval(ranks):
    images = _test_images(EXAMPLES)
    single = evaluate(
        _tiny_model(), make_loader(images, batch_size=64, train=False, device="cpu"), num_classes=10
    )
    for r in ranks:  # every rank gets the reduced result
        assert torch.equal(r["eval"]["confusion"], single.confusion)
        assert int(r["eval"]["confusion"].sum()) == EXAMPLES
        assert r["eval"]["err"] == single.err and r["eval"]["top5_err"] == single.top5_err
        assert r["eval"]["loss"] == pytest.approx(single.loss, rel=1e-5)


def test_ddp_steps_equal_single_process_steps_with_the_global_batch(ranks):
    images = _test_images(EXAMPLES)
    model = _tiny_model()
    loader = make_loader(images, batch_size=GLOBAL_BATCH, train=True, device="cpu", seed=5)
    single = _sgd_steps(model, model, loader)
    for name in single:
        assert torch.equal(ranks[0]["weights"][name], ranks[1]["weights"][name]), name  # ranks in lockstep
    assert drift(ranks[0]["weights"], single, _tiny_model().state_dict()) < 1e-3


def test_half_set_launch_environment_is_one_clear_error(monkeypatch):
    for name in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("RANK", "1")
    with pytest.raises(Error, match="RANK is set but WORLD_SIZE is not; launch with `torchrun"):
        setup_runtime("cpu")
    monkeypatch.setenv("WORLD_SIZE", "2")
    with pytest.raises(Error, match="LOCAL_RANK, MASTER_ADDR, MASTER_PORT are not set"):
        setup_runtime("cpu")
    monkeypatch.setenv("RANK", "2")
    with pytest.raises(Error, match="need 0 <= RANK < WORLD_SIZE"):
        setup_runtime("cpu")
    monkeypatch.setenv("RANK", "one")
    with pytest.raises(Error, match="RANK='one' is not an integer"):
        setup_runtime("cpu")
    monkeypatch.setenv("RANK", "0")
    monkeypatch.setenv("WORLD_SIZE", "1")
    assert setup_runtime("cpu") == Runtime(torch.device("cpu"))  # a one-process "group" starts nothing


def test_a_process_group_that_cannot_start_is_one_clear_error(monkeypatch):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        env = {"RANK": "0", "WORLD_SIZE": "2", "LOCAL_RANK": "0", "MASTER_ADDR": "127.0.0.1"}
        for name, value in {**env, "MASTER_PORT": str(port)}.items():
            monkeypatch.setenv(name, value)
        with pytest.raises(Error, match=f"rank 0 could not join the gloo process group at 127.0.0.1:{port}"):
            setup_runtime("cpu")


def test_torchrun_restarts_are_part_of_the_runtime(monkeypatch):
    for name, value in {"RANK": "0", "WORLD_SIZE": "1", "TORCHELASTIC_RESTART_COUNT": "1"}.items():
        monkeypatch.setenv(name, value)
    monkeypatch.setenv("TORCHELASTIC_MAX_RESTARTS", "3")
    runtime = setup_runtime("cpu")
    assert (runtime.restart_count, runtime.max_restarts, runtime.is_main) == (1, 3, True)


def test_sync_bn_on_the_cpu_is_refused_before_training():
    runtime = Runtime(torch.device("cpu"), rank=0, world_size=2)
    with pytest.raises(Error, match="--sync-bn needs CUDA"):
        runtime.wrap(_tiny_model(), sync_bn=True)
