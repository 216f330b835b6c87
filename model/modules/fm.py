"""The factorization machine's second-order term.

For field embeddings ``x_1 .. x_N`` (each a D-vector) the pairwise interaction sum
``sum_{i<j} x_i * x_j`` (element-wise) is computed in O(N * D) as

    FM(x) = 0.5 * ((sum_i x_i)^2 - sum_i x_i^2)

The output keeps the D components; summing them gives the scalar FM term
``sum_{i<j} <x_i, x_j>`` of the DeepFM paper.
"""

from __future__ import annotations

import torch
from torch import nn


class FactorizationMachine(nn.Module):
    """FM second-order interactions, no parameters.

    ``forward(x: [B, N, D]) -> [B, D]``. Example: two fields ``[[1, 2], [3, 4]]`` give
    ``[1*3, 2*4] = [3, 8]``.
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        square_of_sum = x.sum(dim=1).square()
        sum_of_square = x.square().sum(dim=1)
        return 0.5 * (square_of_sum - sum_of_square)
