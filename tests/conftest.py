from dataclasses import dataclass
from types import SimpleNamespace

import pytest
import torch

from lib.experiments import registry
from lib.experiments.progress import Reporter
from lib.experiments.schema import DEVICE, NON_NEGATIVE_INT, POSITIVE, POSITIVE_INT, one_of, param, validate


@pytest.fixture(autouse=True)
def _one_thread():
    """Tiny tensors run fastest (and most predictably) on one thread of a shared 2-core machine."""
    saved = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(saved)


@dataclass
class FixtureParams:
    """The parameters of tests/fixtures/toy.ipynb, a fast stand-in notebook for the runner's tests."""

    num_dim: int = param(8, POSITIVE_INT)
    pretrained: bool = param(False)
    eps: float = param(0.1, POSITIVE)
    seed: int = param(0, NON_NEGATIVE_INT)
    mode: str = param("ok", one_of("ok", "raise", "nowrite", "progress"))
    lrs: list[float] = param([0.1, 0.01], POSITIVE)
    device: str = param("cpu", DEVICE)

    def __post_init__(self) -> None:
        validate(self)

    def problems(self) -> list[tuple[str, str]]:
        return [("eps", f"expected eps < 1 with mode progress, got {self.eps}")] \
            if self.mode == "progress" and self.eps >= 1 else []


def _register(monkeypatch, notebook: str = "tests/fixtures/toy.ipynb") -> None:
    """Make ``notebook`` (relative to the repository root, or absolute) an experiment of the
    registry while ``monkeypatch`` lasts, with :class:`FixtureParams` and no report section."""
    experiments = [*registry.EXPERIMENTS, registry.Experiment(f"fixture:{notebook}", notebook, FixtureParams, None)]
    monkeypatch.setattr(registry, "EXPERIMENTS", experiments)


@pytest.fixture(scope="session")
def register_fixture_notebook():
    """``register(monkeypatch, notebook="tests/fixtures/toy.ipynb")``: see :func:`_register`."""
    return _register


class Killed(Exception):
    """Stands for the kernel dying after some steps."""


class DiesAfter(Reporter):
    """A reporter that raises :class:`Killed` once ``steps`` steps are done (the state is saved)."""

    def __init__(self, results_path, steps: int) -> None:
        super().__init__(results_path)
        self.steps = steps

    def __call__(self, done, total, what=""):
        super().__call__(done, total, what)
        if done == self.steps:
            raise Killed


class Recording(Reporter):
    """A reporter that keeps ``(done, done_at_start, what)`` of every report in ``calls``."""

    def __init__(self, results_path) -> None:
        super().__init__(results_path)
        self.calls: list[tuple[int, int, str]] = []

    def __call__(self, done, total, what=""):
        super().__call__(done, total, what)
        self.calls.append((done, self.done_at_start, what))


@pytest.fixture(scope="session")
def reporters():
    """``Killed``, ``DiesAfter(results_path, steps)`` and ``Recording(results_path)``: a run
    interrupted after some steps, and the reports of its rerun."""
    return SimpleNamespace(Killed=Killed, DiesAfter=DiesAfter, Recording=Recording)
