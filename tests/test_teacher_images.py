"""The teacher-labelled image source of the thin ResNet (lib/training/teacher_images.py): the
labels are the teacher's, recomputed independently; images and labels are the same on every call;
classes are not collapsed; splits are independent; the runner's checks know the source."""
import pytest
import torch
import torch.nn.functional as F

from lib.core.resnet import xnor_resnet18
from lib.experiments.thin_resnet.params import ThinResNetParams
from lib.training import teacher_images as T
from lib.training.image_files import image_counts, source_path
from lib.training.images import image_data


@pytest.fixture(scope="module")
def train_images():
    return image_data("teacher", "train", 600)


def test_labels_are_the_centred_argmax_of_an_independently_built_teacher(train_images):
    x, y = train_images
    model = xnor_resnet18(8, 10, act="binary", seed=T.SEED).double()
    calibration = []
    for b in range(T.CALIBRATION_BLOCKS):  # the calibration images, drawn here from their seeds
        g = torch.Generator().manual_seed(T.SEED + 2 * 1_000_003 + b)
        low = torch.randn(1024, 3, 8, 8, generator=g, dtype=torch.float64)
        calibration.append(1.4 * F.interpolate(low, size=(32, 32), mode="bilinear", align_corners=False))
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.reset_running_stats()
                m.momentum = None
        model.train()
        for c in calibration:
            model(c)
        model.eval()
        centre = torch.cat([model(c) for c in calibration]).mean(0)
        low = torch.randn(1024, 3, 8, 8, generator=torch.Generator().manual_seed(T.SEED), dtype=torch.float64)
        images = 1.4 * F.interpolate(low, size=(32, 32), mode="bilinear", align_corners=False)[:600]
        want = (model(images) - centre).argmax(1)  # the train split's first block
    assert torch.equal(x, images.float())
    assert torch.equal(y, want)
    assert 1.0 / 1.2 < x.std() < 1.2


def test_the_same_images_and_labels_on_every_call_and_a_prefix_for_fewer(train_images):
    x, y = train_images
    x2, y2 = image_data("teacher", "train", 600)
    assert torch.equal(x, x2) and torch.equal(y, y2)
    x3, y3 = image_data("teacher", "train", 100)
    assert torch.equal(x3, x[:100]) and torch.equal(y3, y[:100])
    assert x.shape == (600, 3, 32, 32) and x.dtype == torch.float32 and y.dtype == torch.int64


def test_classes_are_not_collapsed_and_splits_differ(train_images):
    _, y = train_images
    counts = torch.bincount(y, minlength=10)
    assert (counts > 0).all() and counts.max() < 0.3 * len(y)  # a random teacher without centring: > 0.4
    xt, _ = image_data("teacher", "test", 64)
    assert not torch.allclose(xt, train_images[0][:64])


def test_the_runner_knows_the_source():
    assert source_path("teacher") == "teacher" and image_counts("teacher")["train"] >= 100_000
    with pytest.raises(ValueError, match="train_limit"):
        ThinResNetParams(data_source="teacher")  # generated on demand: the training set needs a size
    p = ThinResNetParams(data_source="teacher", train_limit=512, batch_size=128)
    assert p.machine_problems() == []
