"""Several weight files of one network (nnU-Net's folds, a card's ``folds``) as one scorer.

Each member scores the same batch; their probabilities are averaged, so one pass
over the input serves every fold, and the ensemble's outputs are probabilities.
Where the card blends logits (``merge: logits``, nnU-Net's way) and the members
give logits, their logits are averaged instead and the outputs stay logits.
"""

from __future__ import annotations

import torch
from torch import nn


class Ensemble(nn.Module):
    """The mean of ``members``' probabilities; ``outputs`` says what each member gives."""

    def __init__(self, members: list[nn.Module], *, outputs: str = "logits") -> None:
        super().__init__()
        if not members:
            raise ValueError("an ensemble needs at least one member")
        self.members = nn.ModuleList(members)
        self.outputs = outputs
        self.average = "probabilities"  # or "logits": the members' logits averaged (nnU-Net's way)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        total: torch.Tensor | None = None
        for member in self.members:
            scores = member(x)
            p = scores.float() if self.average == "logits" else probabilities(scores, self.outputs)
            total = p if total is None else total.add_(p)
        assert total is not None
        return total.div_(len(self.members))


def probabilities(scores: torch.Tensor, outputs: str) -> torch.Tensor:
    """A member's scores as float32 class probabilities along axis 1."""
    scores = scores.float()
    if outputs == "probabilities":
        return scores
    if outputs == "sigmoid":
        p = torch.sigmoid(scores)
        return torch.cat([1 - p, p], dim=1)
    return torch.softmax(scores, dim=1)
