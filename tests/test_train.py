import os
import platform
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from lib.training.gaussian import toy_problem
from lib.core.models import BinaryMLP, xnor_resnet18
from lib.common.files import canonical_json, content_key
from lib.training.train import cached_train, train_ste, train_wide

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(autouse=True)
def one_thread():
    """The toy's tensors are tiny: with a busy second core, OpenMP threading makes each op ~1000×
    slower, so these tests run single-threaded (restored afterwards)."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def test_loss_decreases_on_toy():
    prob = toy_problem(8, 0)
    curve = train_ste(prob.student, lambda t: prob.batch(256, t), 200, lr=1e-2, progress=False)
    assert len(curve) == 200
    assert sum(curve[-20:]) / 20 < 0.8 * sum(curve[:20]) / 20
    assert not prob.student.training


def test_resnet_steps_update_batchnorm_and_end_in_eval():
    model = xnor_resnet18(4, seed=0)
    x, y = torch.randn(8, 3, 32, 32), torch.randint(0, 10, (8,))
    bn = model.layer1[0].conv1.bn
    curve = train_ste(model, lambda t: (x, y), 2, loss="cross_entropy", variant="swishsign", progress=False)
    assert len(curve) == 2 and not model.training
    assert not torch.all(bn.running_mean == 0)
    # surrogates restored
    assert model.layer1[0].conv1.act.surrogate == "clipped"


def test_non_finite_loss_raises():
    model = BinaryMLP(4, seed=0)
    y = torch.full((4, 1), float("nan"))
    with pytest.raises(FloatingPointError):
        train_ste(model, lambda t: (torch.randn(4, 4), y), 3, progress=False)
    assert not model.training


def test_cached_train(tmp_path):
    calls = []
    params = {"num_dim": 8, "steps": 30, "lr": 1e-2, "variant": "clipped", "seed": 0}
    prob = toy_problem(8, 0)

    def build():
        return BinaryMLP(8, seed=0)

    def train(model):
        calls.append(1)
        return train_ste(model, lambda t: prob.batch(64, t), params["steps"], lr=params["lr"], progress=False)

    m1, c1, hit1 = cached_train(tmp_path, params, build, train)
    m2, c2, hit2 = cached_train(tmp_path, dict(reversed(list(params.items()))), build, train)
    assert (hit1, hit2) == (False, True) and len(calls) == 1
    assert c1 == c2 and len(c1) == 30
    s1, s2 = m1.state_dict(), m2.state_dict()
    assert all(torch.equal(s1[k], s2[k]) for k in s1)
    assert not torch.equal(s2["fc1.weight"], build().state_dict()["fc1.weight"])
    assert not m2.training

    key, text = content_key(params), canonical_json(params)
    files = list(tmp_path.iterdir())
    assert [f.name for f in files] == [f"{key}.pt"]  # no temp file left behind
    ckpt = torch.load(files[0], weights_only=True)
    assert set(ckpt) == {"state_dict", "curve", "params_json"}
    assert ckpt["params_json"] == text and ckpt["curve"].tolist() == c1

    _, _, hit3 = cached_train(tmp_path, {**params, "seed": 1}, build, train)
    assert not hit3 and len(calls) == 2


@pytest.mark.parametrize("content", [b"", b"not a checkpoint", b"PK\x03\x04" + b"\x00" * 40])
def test_an_unreadable_checkpoint_is_moved_aside_and_trained_again(tmp_path, capsys, content):
    params = {"num_dim": 4, "steps": 3, "seed": 0}
    prob = toy_problem(4, 0)
    path = tmp_path / f"{content_key(params)}.pt"
    path.write_bytes(content)  # empty, foreign, or a truncated zip (torch's own format)
    calls = []

    def train(model):
        calls.append(1)
        return train_ste(model, lambda t: prob.batch(32, t), params["steps"], lr=1e-2, progress=False)

    _, curve, hit = cached_train(tmp_path, params, lambda: BinaryMLP(4, seed=0), train)
    assert not hit and calls == [1] and len(curve) == 3
    err = capsys.readouterr().err
    assert f"warning: checkpoint {path} is unreadable" in err and "moved to" in err
    assert "weights_only" not in err  # torch's advice to unpickle arbitrary code is not passed on
    assert (tmp_path / f"{path.name}.corrupt").read_bytes() == content
    assert torch.load(path, weights_only=True)["curve"].tolist() == curve  # a good checkpoint in its place


def test_a_checkpoint_of_other_parameters_is_moved_aside_and_trained_again(tmp_path, capsys):
    """A good checkpoint written for other parameters under this key's name (copied into the cache
    by hand): moved aside with a warning, trained again; before, every rerun stopped with an error."""
    prob = toy_problem(4, 0)

    def train(model):
        return train_ste(model, lambda t: prob.batch(32, t), 3, lr=1e-2, progress=False)

    mine, other = {"num_dim": 4, "steps": 3, "seed": 0}, {"num_dim": 4, "steps": 3, "seed": 1}
    cached_train(tmp_path, other, lambda: BinaryMLP(4, seed=0), train)
    path = tmp_path / f"{content_key(mine)}.pt"
    os.replace(tmp_path / f"{content_key(other)}.pt", path)
    foreign = path.read_bytes()
    _, curve, hit = cached_train(tmp_path, mine, lambda: BinaryMLP(4, seed=0), train)
    assert not hit and len(curve) == 3
    assert f"warning: checkpoint {path} was written for other parameters; moved to {path.name}.other-parameters" \
        in capsys.readouterr().err
    assert (tmp_path / f"{path.name}.other-parameters").read_bytes() == foreign
    assert torch.load(path, weights_only=True)["params_json"] == canonical_json(mine)


_PRETRAIN_SCRIPT = """
import hashlib, sys, torch
torch.set_num_threads(1)
import lib.experiments.toy.run as toy
from lib.experiments.toy.params import ToyParams
from lib.training.gaussian import toy_problem
toy.PRETRAIN_DTYPE = getattr(torch, sys.argv[1])
p = ToyParams(num_dim=8, pretrained=True, pretrain_steps=40, pretrain_batch_size=4000, cache_dir=sys.argv[2])
student, _, hit = toy.pretrain_student(toy_problem(8, 0), p, progress=False)
assert not hit
state = student.state_dict()
print(hashlib.sha256(b"".join(state[k].numpy().tobytes() for k in sorted(state))).hexdigest())
"""


# The code paths of the libraries under torch: MKL (matmuls), oneDNN (float32 convolutions) and
# ATen's own vectorised kernels (elementwise, reductions), each forced to one instruction set.
_ISA_ENV = {"SSE4_2": {"MKL_ENABLE_INSTRUCTIONS": "SSE4_2", "ONEDNN_MAX_CPU_ISA": "SSE41",
                       "ATEN_CPU_CAPABILITY": "default"},
            "AVX2": {"MKL_ENABLE_INSTRUCTIONS": "AVX2", "ONEDNN_MAX_CPU_ISA": "AVX2", "ATEN_CPU_CAPABILITY": "avx2"}}


def _run_script(script: str, isa: str, *args: str) -> str:
    env = {**os.environ, **_ISA_ENV[isa], "OMP_NUM_THREADS": "1"}
    out = subprocess.run([sys.executable, "-c", script, *args], cwd=ROOT, env=env,
                         capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    return out.stdout.strip()


def _pretrained_sha(dtype: str, isa: str, cache: Path) -> str:
    return _run_script(_PRETRAIN_SCRIPT, isa, dtype, str(cache))


@pytest.mark.skipif(not torch.backends.mkl.is_available() or platform.machine() not in ("x86_64", "AMD64"),
                    reason="needs MKL on x86-64 (its instruction set is chosen with MKL_ENABLE_INSTRUCTIONS)")
def test_a_pretrained_student_does_not_depend_on_the_cpus_vector_instructions(tmp_path):
    """The toy's pretraining (float64) gives the same student, bit for bit, whether MKL takes its
    SSE4.2 or its AVX2 code path, as on two machines. The control: trained in float32, the
    students differ, so the two paths do sum differently here."""
    float32 = [_pretrained_sha("float32", isa, tmp_path / f"f32-{isa}") for isa in ("SSE4_2", "AVX2")]
    if float32[0] == float32[1]:
        pytest.skip("MKL's SSE4.2 and AVX2 paths give the same float32 sums on this machine")
    assert _pretrained_sha("float64", "SSE4_2", tmp_path / "a") == _pretrained_sha("float64", "AVX2", tmp_path / "b")


_THIN_RESNET_SCRIPT = """
import dataclasses, sys, torch
torch.set_num_threads(1)
import lib.experiments.thin_resnet.states as states
from lib.experiments.thin_resnet.params import ThinResNetParams
states.TRAIN_DTYPE = getattr(torch, sys.argv[1])
p = ThinResNetParams(initial_channels=8, train_epochs=1, train_limit=512, cache_dir=sys.argv[2])
model, info = states.make_state(p, "binary", "trained", states.load_data(p), torch.device("cpu"))
assert not info["cache_hit"] and info["dtype"] == sys.argv[1] and next(model.parameters()).dtype == torch.float32
torch.save({"state": model.state_dict(), "curve": torch.tensor(info["curve"], dtype=torch.float64)}, sys.argv[3])
"""


def _thin_resnet_trained(dtype: str, isa: str, tmp_path: Path) -> dict:
    out = tmp_path / f"{dtype}-{isa}.pt"
    _run_script(_THIN_RESNET_SCRIPT, isa, dtype, str(tmp_path / f"cache-{dtype}-{isa}"), str(out))
    return torch.load(out, weights_only=True)


def _same_model(a: dict, b: dict) -> bool:
    """Every float tensor equal to float32's rounding (biases that train at ~1e-11, having no
    gradient in exact arithmetic, within 1e-9), and the training curves to 1e-9."""
    return all(torch.allclose(a["state"][k], b["state"][k], rtol=1e-6, atol=1e-9)
               for k in a["state"] if a["state"][k].dtype.is_floating_point) \
        and torch.allclose(a["curve"], b["curve"], rtol=0, atol=1e-9)


@pytest.mark.skipif(not torch.backends.mkl.is_available() or platform.machine() not in ("x86_64", "AMD64"),
                    reason="needs MKL on x86-64 (its instruction set is chosen with MKL_ENABLE_INSTRUCTIONS)")
def test_a_trained_thin_resnet_does_not_depend_on_the_cpus_vector_instructions(tmp_path):
    """The thin ResNet's training (float64, rounded back to float32) gives the same model under
    the SSE4.2 and the AVX2 code paths of MKL, oneDNN and ATen, as on two machines. The control:
    trained in float32 (8 steps), the models already differ beyond float32's rounding."""
    if _same_model(*(_thin_resnet_trained("float32", isa, tmp_path) for isa in ("SSE4_2", "AVX2"))):
        pytest.skip("the SSE4.2 and AVX2 paths give the same float32 training on this machine")
    assert _same_model(*(_thin_resnet_trained("float64", isa, tmp_path) for isa in ("SSE4_2", "AVX2")))


def test_train_wide_trains_a_float64_copy_and_rounds_the_result_back():
    model = BinaryMLP(4, seed=0)
    seen = []

    def train(wide):
        seen.append({p.dtype for p in wide.parameters()})
        with torch.no_grad():
            next(wide.parameters()).fill_(1 / 3)  # a float64 value, not a float32 one
        return [0.5]

    assert train_wide(model, train) == [0.5]
    assert seen == [{torch.float64}]
    first = next(model.parameters())
    assert first.dtype == torch.float32 and bool((first == torch.tensor(1 / 3, dtype=torch.float32)).all())
