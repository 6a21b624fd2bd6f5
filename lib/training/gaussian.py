"""Toy data (docs/design.md §3): Gaussian inputs ``x ~ N(0, I_num_dim)`` and teacher targets.

The teacher and the student are two independently initialised :class:`~lib.core.models.BinaryMLP`
of the same architecture; the target of an input is the teacher's output.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from lib.core.models import BinaryMLP


def seeded_generator(seed: int) -> torch.Generator:
    """A CPU generator seeded with ``seed`` (all randomness in the project goes through one)."""
    return torch.Generator().manual_seed(int(seed))


def gaussian_batch(num_dim: int, batch_size: int, generator: torch.Generator,
                   dtype: torch.dtype = torch.float32, device: str | torch.device | None = None) -> torch.Tensor:
    """``batch_size`` rows of ``N(0, I_num_dim)`` drawn on the CPU from ``generator``."""
    x = torch.randn(batch_size, num_dim, generator=generator, dtype=torch.float64)
    return x.to(dtype=dtype, device=device)


@torch.no_grad()
def teacher_targets(teacher: torch.nn.Module, x: torch.Tensor) -> torch.Tensor:
    """``y = teacher(x)``, detached."""
    return teacher(x).detach()


@dataclass
class ToyProblem:
    """One initialisation of the toy: the teacher (target) and the student (evaluated model)."""

    teacher: BinaryMLP
    student: BinaryMLP
    seed: int

    def batch(self, batch_size: int, index: int, dtype: torch.dtype = torch.float32,
              device: str | torch.device | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """The ``index``-th gradient batch ``(x, y)`` of this initialisation (deterministic)."""
        gen = seeded_generator(1_000_003 * (self.seed + 1) + index)
        x = gaussian_batch(self.student.num_dim, batch_size, gen, dtype, device)
        return x, teacher_targets(self.teacher, x)


def toy_problem(num_dim: int, seed: int, hidden_layers: int = 3, act: str = "binary",
                teacher_act: str = "binary", dtype: torch.dtype = torch.float32,
                device: str | torch.device | None = None) -> ToyProblem:
    """Teacher and student for initialisation ``seed``, independently initialised."""
    teacher = BinaryMLP(num_dim, hidden_layers, act=teacher_act, seed=2 * seed + 1)
    student = BinaryMLP(num_dim, hidden_layers, act=act, seed=2 * seed)
    teacher.to(dtype=dtype, device=device).eval()
    student.to(dtype=dtype, device=device).eval()
    for p in teacher.parameters():
        p.requires_grad_(False)
    return ToyProblem(teacher, student, seed)
