"""Pairs that the k-nearest-neighbour search must never return: a query and a database row that
share a group id (the same image, duplicate group or patient)."""

from __future__ import annotations

import math
from typing import Union

import numpy as np
import torch

from fundus_cli.errors import FundusError

ArrayLike = Union[np.ndarray, torch.Tensor]


class Exclusion:
    """Group ids that forbid query/database pairs, checked per block on only the matching ids."""

    def __init__(self, exclude_groups: tuple[ArrayLike, ArrayLike], n_queries: int, dev: torch.device):
        try:
            q_groups, d_groups = exclude_groups
        except (TypeError, ValueError):
            raise ValueError("exclude_groups must be a pair (query_groups, database_groups)") from None
        self.q = _as_group_matrix(q_groups, dev, what="query groups")
        self.d = _as_group_matrix(d_groups, dev, what="database groups")
        if self.q.shape[0] != n_queries:
            raise FundusError(f"query groups have {self.q.shape[0]} rows but there are {n_queries} queries")
        if self.q.shape[1] != self.d.shape[1]:
            raise FundusError(f"query groups have {self.q.shape[1]} columns but database groups have "
                              f"{self.d.shape[1]}; give one column per kind of group")

    def check_ids(self, ids: torch.Tensor) -> None:
        if ids.numel() and int(ids.max()) >= self.d.shape[0]:
            raise FundusError(f"database row {int(ids.max())} has no entry in the database groups "
                              f"({self.d.shape[0]} rows); give one group row per database row")

    def mask(self, scores: torch.Tensor, sl: slice, ids: torch.Tensor) -> None:
        q_groups = self.q[sl]
        d_groups = self.d[ids]
        for c in range(q_groups.shape[1]):
            qg = q_groups[:, c]
            present = qg[qg >= 0]
            # Matches are sparse (one patient's images), so compare only columns whose id occurs.
            cols = torch.isin(d_groups[:, c], present).nonzero(as_tuple=True)[0]
            if cols.numel() == 0:
                continue
            a, j = (qg[:, None] == d_groups[cols, c][None, :]).nonzero(as_tuple=True)
            scores[a, cols[j]] = math.inf


def _as_group_matrix(x: ArrayLike, dev: torch.device, *, what: str) -> torch.Tensor:
    t = torch.as_tensor(np.asarray(x) if not isinstance(x, torch.Tensor) else x)
    if t.is_floating_point() or t.is_complex() or t.dtype == torch.bool:
        raise FundusError(f"{what} must be integer ids (negative for none), got {t.dtype}")
    if t.ndim == 1:
        t = t[:, None]
    if t.ndim != 2:
        raise FundusError(f"{what} must be 1-D or 2-D, got shape {tuple(t.shape)}")
    return t.to(device=dev, dtype=torch.int64)
