"""Bad parameter files and paths are refused before anything runs: exit status 2, one line naming
the file (and the key or line), nothing written (lib/pipeline/yamlfile.py, lib/pipeline/runner.py)."""
from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from lib.pipeline import runner, yamlfile

ROOT = Path(__file__).resolve().parents[1]
BOMB = "a: &a [1, 1, 1, 1, 1, 1, 1, 1, 1, 1]\n" + "".join(
    f"{chr(98 + i)}: &{chr(98 + i)} [{', '.join([f'*{chr(97 + i)}'] * 10)}]\n" for i in range(5))

CASES = [
    ("duplicate key", b"num_dim: [8]\nnum_dim: [16]\n", "(line 2): duplicate key 'num_dim'"),
    ("empty", b"", "the file is empty"),
    ("comments only", b"# nothing here\n\n", "the file is empty"),
    ("not UTF-8", b"num_dim: [8]\nseed: \xff\xfe\n", "not UTF-8 text (byte 19, line 2)"),
    ("over 1 MB", b"# " + b"x" * (1 << 20) + b"\n", "a parameter file may have at most 1048576 (1 MB)"),
    ("alias bomb", BOMB.encode(), "more than 100000 values once its aliases are expanded"),
    ("not YAML", b"num_dim: [8\n", "invalid YAML"),
]


@pytest.fixture()
def folders(tmp_path):
    (tmp_path / "params").mkdir()
    shutil.copy(ROOT / "params" / "toy.yaml", tmp_path / "params" / "toy.yaml")
    return tmp_path


@pytest.mark.parametrize("what,content,message", CASES, ids=[c[0] for c in CASES])
def test_a_bad_params_file_is_refused_in_one_line_before_anything_runs(folders, capsys, what, content, message):
    bad = folders / "over.yaml"
    bad.write_bytes(content)
    code = runner.main(["--params-dir", str(folders / "params"), "--reports-dir", str(folders / "reports"),
                        "--only", "toy", "--params", str(bad)])
    err = capsys.readouterr().err.strip()
    assert code == 2
    assert err.count("\n") == 0 and err.startswith(f"{bad}: ") and message in err, err
    assert not (folders / "reports").exists()


def test_the_alias_bomb_is_small_on_disk_and_huge_expanded():
    """The case above is a real bomb: 10⁶ values from a few hundred bytes."""
    assert len(BOMB) < 400
    with pytest.raises(yamlfile.ParamsError):
        yamlfile.load_yaml(_write(BOMB), "bomb")


def _write(text: str) -> Path:
    import tempfile

    path = Path(tempfile.mkdtemp()) / "bomb.yaml"
    path.write_text(text)
    return path


def test_a_params_file_in_params_dir_is_read_as_strictly(folders, capsys):
    (folders / "params" / "toy.yaml").write_text((ROOT / "params" / "toy.yaml").read_text() + "notebook: again\n")
    assert runner.main(["--params-dir", str(folders / "params"), "--reports-dir", str(folders / "reports")]) == 2
    assert "duplicate key 'notebook'" in capsys.readouterr().err


def test_a_reports_dir_that_is_a_file_is_refused(folders, capsys):
    (folders / "reports").write_text("not a folder")
    assert runner.main(["--params-dir", str(folders / "params"), "--reports-dir", str(folders / "reports"),
                        "--only", "toy"]) == 2
    assert capsys.readouterr().err.strip() == f"--reports-dir: '{folders / 'reports'}' is a file, not a folder"
    assert (folders / "reports").read_text() == "not a folder"


def test_a_date_folder_that_is_a_file_is_refused(folders, capsys):
    (folders / "reports").mkdir()
    (folders / "reports" / "2026-01-01").write_text("not a folder")
    assert runner.main(["--params-dir", str(folders / "params"), "--reports-dir", str(folders / "reports"),
                        "--only", "toy", "--date", "2026-01-01"]) == 2
    assert capsys.readouterr().err.strip() == f"--date: '{folders / 'reports' / '2026-01-01'}' is a file, not a folder"


def test_a_device_this_machine_lacks_is_refused_before_compute(folders, capsys):
    from lib.pipeline.devices import cuda_device_count

    if cuda_device_count() > 7:
        pytest.skip("this machine has a CUDA device 7")
    (folders / "over.yaml").write_text("{device: 'cuda:7'}\n")
    code = runner.main(["--params-dir", str(folders / "params"), "--reports-dir", str(folders / "reports"),
                        "--only", "toy", "--params", str(folders / "over.yaml")])
    err = capsys.readouterr().err.strip()
    assert code == 2 and err.startswith(f"{folders / 'over.yaml'}: device: 'cuda:7' requested but this machine has")
    assert not (folders / "reports").exists()


# ----------------------------------------------------------------------------- what the machine must give


def _cifar(folder: Path, records: int = 2, broken: str | None = None, missing: str | None = None) -> Path:
    """A CIFAR-10 binary folder of ``records`` records per file; ``broken`` one byte short."""
    from lib.training.image_files import CIFAR10_FILES, CIFAR10_RECORD

    folder.mkdir()
    for name in CIFAR10_FILES["train"] + CIFAR10_FILES["test"]:
        if name != missing:
            (folder / name).write_bytes(bytes(records * CIFAR10_RECORD - (name == broken)))
    return folder


MACHINE_CASES = [  # (what, parameter file, --params text with {tmp}, the refusal after "<file>: ")
    ("data_source missing", "thin_resnet", "{{thin_resnet: {{data_source: {tmp}/nowhere}}}}",
     "thin_resnet.data_source: image source '{tmp}/nowhere': not 'digits' or 'teacher' and no such path"),
    ("data_source a file", "thin_resnet", "{{thin_resnet: {{data_source: {tmp}/a_file}}}}",
     "thin_resnet.data_source: CIFAR-10 folder '{tmp}/a_file' is a file; expected the CIFAR-10 binary version"),
    ("CIFAR file truncated", "thin_resnet", "{{thin_resnet: {{data_source: {tmp}/truncated}}}}",
     "thin_resnet.data_source: CIFAR-10 file '{tmp}/truncated/data_batch_3.bin' is corrupt: 6145 bytes"),
    ("CIFAR file missing", "thin_resnet", "{{thin_resnet: {{data_source: {tmp}/missing}}}}",
     "thin_resnet.data_source: CIFAR-10 file '{tmp}/missing/test_batch.bin' is missing"),
    ("batch larger than the data", "thin_resnet", "{{thin_resnet: {{data_source: {tmp}/cifar, batch_size: 8}}}}",
     "thin_resnet.batch_size: 40 training images needed (two batches of 8 and 3 decrease batches of 8); "
     "{tmp}/cifar has 10"),
    ("batch larger than the digits", "thin_resnet", "{{thin_resnet: {{batch_size: 1000}}}}",
     "thin_resnet.batch_size: 5000 training images needed (two batches of 1000 and 3 decrease batches of 1000); "
     "digits has 1437"),
    ("batch above train_limit", "thin_resnet", "{{thin_resnet: {{train_limit: 40}}}}",
     "thin_resnet.train_limit: 160 training images needed (two batches of 32 and 3 decrease batches of 32); "
     "train_limit keeps 40 of digits's 1437"),
    ("batch of 10^30", "toy", "{{toy: {{batch_size: {huge}}}}}",
     f"toy.batch_size: a batch of {10**30} × 8 Gaussian inputs (float64) would take 6.40e+31 bytes, more than"),
    ("num_dim of 10^9", "toy", "{{toy: {{num_dim: [1000000000]}}}}",
     "toy.num_dim: a 1000000000 × 1000000000 weight (float32) would take 4.00e+18 bytes, more than"),
    ("pretraining batch of 10^12", "toy_pretrained", "{{toy_pretrained: {{pretrain_batch_size: 1000000000000}}}}",
     "toy_pretrained.pretrain_batch_size: a pretraining batch of 1000000000000 × 8 inputs (float64) would take 5.96e+04 GiB"),
    ("cache_dir a file", "toy_pretrained", "{{toy_pretrained: {{cache_dir: {tmp}/a_file}}}}",
     "toy_pretrained.cache_dir: '{tmp}/a_file' is a file, not a folder"),
    ("cache_dir under a file", "thin_resnet", "{{thin_resnet: {{cache_dir: {tmp}/a_file/cache}}}}",
     "thin_resnet.cache_dir: '{tmp}/a_file/cache' cannot be created: '{tmp}/a_file' is a file, not a folder"),
    ("convergence batch of 10^12", "convergence", "{{convergence: {{batch_sizes: [1000, 1000000000000]}}}}",
     "convergence.batch_sizes: a batch of 1000000000000 × 32 Gaussian inputs (float64) would take"),
]


@pytest.fixture()
def machine_folders(tmp_path):
    (tmp_path / "params").mkdir()
    for name in ("toy", "toy_pretrained", "thin_resnet", "convergence"):
        shutil.copy(ROOT / "params" / f"{name}.yaml", tmp_path / "params" / f"{name}.yaml")
    _cifar(tmp_path / "cifar")
    _cifar(tmp_path / "truncated", broken="data_batch_3.bin")
    _cifar(tmp_path / "missing", missing="test_batch.bin")
    (tmp_path / "a_file").write_text("not a folder")
    return tmp_path


@pytest.mark.parametrize("what,name,override,message", MACHINE_CASES, ids=[c[0] for c in MACHINE_CASES])
def test_a_run_the_machine_cannot_hold_is_refused_before_compute(machine_folders, capsys, what, name, override,
                                                                 message):
    tmp = machine_folders
    over = tmp / "over.yaml"
    over.write_text(override.format(tmp=tmp, huge=10**30) + "\n")
    code = runner.main(["--params-dir", str(tmp / "params"), "--reports-dir", str(tmp / "reports"),
                        "--only", name, "--params", str(over)])
    err = capsys.readouterr().err.strip()
    assert code == 2
    assert err.count("\n") == 0 and err.startswith(f"{over}: " + message.format(tmp=tmp)), err
    assert not (tmp / "reports").exists()


def test_a_cifar_folder_of_whole_records_and_enough_images_passes(machine_folders):
    """The checks above can pass: the same small folder with a batch that fits, and the digits."""
    from lib.pipeline import grid
    from lib.training.image_files import image_counts

    tmp = machine_folders
    assert image_counts(tmp / "cifar") == {"train": 10, "test": 2}
    over = tmp / "over.yaml"
    over.write_text(f"{{thin_resnet: {{data_source: {tmp}/cifar, batch_size: 5, decrease_batches: 0, cache_dir: {tmp}/new/cache}}}}\n")
    files = grid.validate(tmp / "params", ["thin_resnet"], "quick", over)
    assert files[0].values["batch_size"] == 5


def test_a_folder_this_user_cannot_write_is_named(tmp_path):
    import os

    from lib.common.resources import folder_problem

    if os.geteuid() == 0:
        pytest.skip("root writes everywhere")
    locked = tmp_path / "locked"
    locked.mkdir(mode=0o500)
    assert folder_problem(locked / "cache") == f"'{locked / 'cache'}' cannot be created: this user cannot write in '{locked}'"


def test_a_results_folder_this_user_cannot_write_is_refused_before_compute(folders, capsys, monkeypatch):
    """A report folder whose results/ cannot be written (read-only, or a mount that is): one line
    naming it, status 2, before any run; the write check is simulated, so that it holds for root too."""
    import os

    from lib.common import resources

    results = folders / "reports" / "2026-01-02" / "results"
    results.mkdir(parents=True)
    real = os.access
    monkeypatch.setattr(resources.os, "access", lambda path, mode: Path(path) != results and real(path, mode))
    code = runner.main(["--params-dir", str(folders / "params"), "--reports-dir", str(folders / "reports"),
                        "--date", "2026-01-02", "--only", "toy"])
    err = capsys.readouterr().err.strip()
    assert code == 2 and err == f"--date: '{results}' is a folder this user cannot write", err
    assert sorted(p.name for p in results.parent.iterdir()) == ["results"]  # nothing written


def test_memory_is_refused_only_past_the_machine():
    from lib.common.resources import GIB, memory_problem

    assert memory_problem(2 * GIB, "x", available=4 * GIB) is None
    assert memory_problem(4 * GIB, "x", available=4 * GIB) is None
    assert memory_problem(6 * GIB, "a batch", available=4 * GIB) == (
        "a batch would take 6 GiB, more than this machine's 4 GiB of memory; make it smaller")


@pytest.mark.parametrize("args,message", [
    (["--jobs", "0"], "argument --jobs: expected a positive integer, got '0'"),
    (["--date", "yesterday"], "argument --date: expected YYYY-MM-DD, got 'yesterday'"),
    (["--frob"], "unrecognized arguments: --frob"),
])
def test_a_bad_option_is_refused_in_one_line(folders, capsys, args, message):
    code = runner.main(["--params-dir", str(folders / "params"), "--reports-dir", str(folders / "reports"), *args])
    err = capsys.readouterr().err.strip()
    assert code == 2 and err == f"ste-report: {message} (--help lists the options)", err
    assert not (folders / "reports").exists()


def test_the_grid_check_of_the_sigma_search_shares_the_toy_setting():
    """params/toy_grid.yaml's runs are the brute-force twins of params/toy.yaml's
    (lib/experiments/toy/sigma_tuning_report.py pairs runs whose parameters differ only there):
    each of its profiles equals toy.yaml's but for num_dim (a subset) and sigma_search."""
    toy, grid = (yamlfile.load_yaml(ROOT / "params" / f"{n}.yaml", n)["profiles"] for n in ("toy", "toy_grid"))
    for name, profile in grid.items():
        assert profile["sigma_search"] == "grid" and set(profile["num_dim"]) <= set(toy[name]["num_dim"])
        assert {k: v for k, v in profile.items() if k not in ("num_dim", "sigma_search")} == \
            {k: v for k, v in toy[name].items() if k not in ("num_dim", "sigma_search")}
