import numpy as np
import pytest
import torch

from lib.training.images import (CIFAR10_MEAN, CIFAR10_RECORD, CIFAR10_STD, batches, image_data, load_cifar10,
                        load_digits32, step_batches)


def make_records(labels, seed):
    """Records with known pixels: random bytes, plus R(0,0)=255, G(0,0)=0, B(0,0)=label·10."""
    rng = np.random.default_rng(seed)
    recs = rng.integers(0, 256, size=(len(labels), CIFAR10_RECORD), dtype=np.uint8)
    recs[:, 0] = labels
    recs[:, 1] = 255                  # R plane, row 0, col 0
    recs[:, 1 + 1024] = 0             # G plane, row 0, col 0
    recs[:, 1 + 2048] = np.asarray(labels) * 10  # B plane, row 0, col 0
    recs[:, 1 + 32 * 5 + 7] = 77      # R plane, row 5, col 7
    return recs


def write_cifar(folder, records_per_file=2):
    folder.mkdir(parents=True, exist_ok=True)
    all_recs = []
    for i, name in enumerate([f"data_batch_{k}.bin" for k in range(1, 6)] + ["test_batch.bin"]):
        labels = [(i + r) % 10 for r in range(records_per_file)]
        recs = make_records(labels, i)
        recs.tofile(folder / name)
        all_recs.append(recs)
    return all_recs


def expect(byte, ch):
    return (byte / 255.0 - CIFAR10_MEAN[ch]) / CIFAR10_STD[ch]


@pytest.mark.parametrize("nested", [False, True])
def test_cifar_parse(tmp_path, nested):
    folder = tmp_path / "cifar-10-batches-bin" if nested else tmp_path
    recs = write_cifar(folder)
    x, y = load_cifar10(tmp_path, "train")
    assert x.shape == (10, 3, 32, 32) and x.dtype == torch.float32
    assert y.dtype == torch.int64
    assert y.tolist() == [(i + r) % 10 for i in range(5) for r in range(2)]
    assert x[0, 0, 0, 0].item() == pytest.approx(expect(255, 0), abs=1e-5)
    assert x[0, 1, 0, 0].item() == pytest.approx(expect(0, 1), abs=1e-5)
    assert x[3, 2, 0, 0].item() == pytest.approx(expect(int(y[3]) * 10, 2), abs=1e-5)
    assert x[4, 0, 5, 7].item() == pytest.approx(expect(77, 0), abs=1e-5)
    # a random pixel, row-major, G plane
    rec = recs[2][1]
    assert x[5, 1, 9, 20].item() == pytest.approx(expect(int(rec[1 + 1024 + 9 * 32 + 20]), 1), abs=1e-5)
    xt, yt = load_cifar10(tmp_path, "test")
    assert xt.shape == (2, 3, 32, 32) and yt.tolist() == [5, 6]
    xl, yl = load_cifar10(tmp_path, "train", limit=3)
    assert torch.equal(xl, x[:3]) and torch.equal(yl, y[:3])
    xs, ys = image_data(str(tmp_path), "train", limit=3)
    assert torch.equal(xs, xl) and torch.equal(ys, yl)


def test_cifar_missing(tmp_path):
    missing = tmp_path / "nowhere"
    with pytest.raises(FileNotFoundError, match="nowhere"):
        load_cifar10(missing)
    with pytest.raises(FileNotFoundError, match="nowhere"):
        image_data(str(missing))
    with pytest.raises(FileNotFoundError, match="data_batch_1.bin"):
        load_cifar10(tmp_path)
    make_records([1], 0).tofile(tmp_path / "data_batch_1.bin")
    with pytest.raises(FileNotFoundError, match="data_batch_2.bin"):
        load_cifar10(tmp_path)


def test_cifar_corrupt(tmp_path):
    write_cifar(tmp_path)
    bad = tmp_path / "data_batch_3.bin"
    bad.write_bytes(bad.read_bytes()[:-5])
    with pytest.raises(ValueError, match="data_batch_3.bin"):
        load_cifar10(tmp_path)
    recs = make_records([1, 2], 0)
    recs[1, 0] = 10
    recs.tofile(tmp_path / "test_batch.bin")
    with pytest.raises(ValueError, match="test_batch.bin.*label 10"):
        load_cifar10(tmp_path, "test")


def test_digits_default():
    x, y = load_digits32("train")
    xt, yt = load_digits32("test")
    assert x.shape == (1437, 3, 32, 32) and xt.shape == (360, 3, 32, 32)
    assert x.dtype == torch.float32 and y.dtype == torch.int64
    assert set(y.tolist()) == set(range(10)) and set(yt.tolist()) == set(range(10))
    assert abs(x.mean().item()) < 1e-4 and abs(x.std().item() - 1) < 1e-3
    assert torch.equal(x[:, 0], x[:, 2])
    x2, y2 = image_data("digits", "train", limit=50)
    assert torch.equal(x2, x[:50]) and torch.equal(y2, y[:50])
    x3, _ = load_digits32("train", seed=1)
    assert not torch.equal(x3, x)
    # the two splits partition the 1797 images: label histograms add up to the full set's
    from sklearn.datasets import load_digits
    full = torch.bincount(torch.from_numpy(load_digits().target), minlength=10)
    assert torch.equal(torch.bincount(y, minlength=10) + torch.bincount(yt, minlength=10), full)


def test_batches_deterministic():
    x = torch.arange(10, dtype=torch.float32).view(10, 1)
    y = torch.arange(10)
    e0 = list(batches(x, y, 4, seed=0, epoch=0))
    assert [len(b[1]) for b in e0] == [4, 4, 2]
    assert sorted(torch.cat([b[1] for b in e0]).tolist()) == list(range(10))
    assert all(torch.equal(bx[:, 0].long(), by) for bx, by in e0)
    again = list(batches(x, y, 4, seed=0, epoch=0))
    assert all(torch.equal(a[1], b[1]) for a, b in zip(e0, again))
    e1 = torch.cat([b[1] for b in batches(x, y, 4, seed=0, epoch=1)])
    assert not torch.equal(e1, torch.cat([b[1] for b in e0]))
    assert [len(b[1]) for b in batches(x, y, 4, seed=0, epoch=0, drop_last=True)] == [4, 4]
    fn = step_batches(x, y, 4, seed=0)
    assert torch.equal(fn(1)[1], e0[1][1])
    assert torch.equal(fn(2)[1], next(iter(batches(x, y, 4, seed=0, epoch=1)))[1])


def test_image_data_bad_source():
    with pytest.raises(FileNotFoundError, match="mnist"):
        image_data("mnist")
    with pytest.raises(ValueError, match="split"):
        image_data("digits", "val")
