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
    assert capsys.readouterr().err.strip() == f"--reports-dir: {folders / 'reports'} exists and is not a folder"
    assert (folders / "reports").read_text() == "not a folder"


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
