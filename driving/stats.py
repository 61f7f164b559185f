"""Paired statistics of a policy comparison: differences per (seed, road) cell, a two-way
bootstrap, win/tie/loss counts, and the field's robustness summaries (mCE, mRR).

Why paired: every policy drives the same held-out roads with the same starts, traffic and
corruption streams, and every training seed is one more draw of the training randomness. The
difference of two policies on one (seed, road) cell removes the road's difficulty, which
dominates the unpaired spread. Why a two-way bootstrap: both the roads and the training seeds
are samples (of the road distribution and of training outcomes); resampling only one of them
would understate the uncertainty. Each bootstrap draw resamples the seeds with replacement
*and* the roads with replacement and takes the mean of the difference over the drawn grid.

Conventions: a cell grid is a 2-D array ``(seeds, roads)``; NaN marks a missing cell (a run
or an evaluation that did not finish); means skip NaN. The point estimate is the mean over
the cells present; the interval is the percentile interval of the bootstrap means.

Robustness summaries (Hendrycks & Dietterich 2019, ImageNet-C; RoboBEV, Xie et al. 2023):

- corruption error ``CE_c = Σ_s E(c, s) / Σ_s E_base(c, s)`` for an error ``E`` (lower is
  better) and a baseline policy; ``mCE`` = mean over corruptions ``c`` (a corruption whose
  baseline error sums to 0 has no CE and is left out, and named);
- resilience rate ``RR_c = Σ_s S(c, s) / (n_s · S(clean))`` for a score ``S`` (higher is
  better); ``mRR`` = mean over corruptions.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np

__all__ = [
    "PairedResult",
    "bootstrap_means",
    "corruption_errors",
    "grid",
    "paired",
    "resilience_rates",
    "win_tie_loss",
]

Cells = Mapping[tuple[int, int], float]  # (seed, road) -> value


def grid(cells: Cells, seeds: Sequence[int], roads: Sequence[int]) -> np.ndarray:
    """The (seeds, roads) array of ``cells``; NaN where a cell is missing."""
    out = np.full((len(seeds), len(roads)), np.nan)
    for i, s in enumerate(seeds):
        for j, r in enumerate(roads):
            v = cells.get((s, r))
            if v is not None:
                out[i, j] = float(v)
    return out


def bootstrap_means(d: np.ndarray, n_boot: int = 4000, seed: int = 0) -> np.ndarray:
    """Means of ``d`` (seeds, roads) over ``n_boot`` grids with seeds and roads both resampled
    with replacement. A draw whose grid holds no cell at all is NaN (dropped by callers)."""
    d = np.asarray(d, dtype=np.float64)
    if d.ndim != 2 or d.size == 0:
        raise ValueError(f"the cell grid must be a non-empty (seeds, roads) array, got shape {d.shape}")
    if n_boot < 1:
        raise ValueError(f"n_boot must be >= 1, got {n_boot}")
    s, r = d.shape
    rng = np.random.default_rng(seed)
    si = rng.integers(0, s, size=(n_boot, s))
    ri = rng.integers(0, r, size=(n_boot, r))
    present = ~np.isnan(d)
    vals = np.where(present, d, 0.0)
    # sum and count over the drawn grid: counts of each seed and road in the draw, weighted
    cs = np.stack([np.bincount(x, minlength=s) for x in si]).astype(np.float64)  # (B, S)
    cr = np.stack([np.bincount(x, minlength=r) for x in ri]).astype(np.float64)  # (B, R)
    total = np.einsum("bs,sr,br->b", cs, vals, cr)
    count = np.einsum("bs,sr,br->b", cs, present.astype(np.float64), cr)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(count > 0, total / np.maximum(count, 1.0), np.nan)


@dataclass
class PairedResult:
    """One policy against a reference under one condition, over the (seed, road) cells."""

    policy: str
    reference: str
    mean_diff: float | None  # policy − reference, mean over the cells both have
    ci95: tuple[float, float] | None
    cells: int
    wins: int
    ties: int
    losses: int
    higher_is_better: bool
    tie_cells: list[tuple[int, int]] = field(default_factory=list)

    @property
    def verdict(self) -> str:
        """'better' / 'worse' when the interval excludes 0, else 'no difference shown'."""
        if self.ci95 is None or self.mean_diff is None:
            return "n/a"
        lo, hi = self.ci95
        if lo > 0 or hi < 0:
            good = (lo > 0) == self.higher_is_better
            return "better" if good else "worse"
        return "no difference shown"

    def to_dict(self) -> dict:
        return {"policy": self.policy, "reference": self.reference, "mean_diff": self.mean_diff,
                "ci95": None if self.ci95 is None else list(self.ci95), "cells": self.cells,
                "wins": self.wins, "ties": self.ties, "losses": self.losses,
                "tie_cells": [list(c) for c in self.tie_cells], "verdict": self.verdict,
                "higher_is_better": self.higher_is_better}


def win_tie_loss(diff: np.ndarray, higher_is_better: bool, tol: float = 0.0,
                 keys: Sequence[tuple[int, int]] | None = None) -> tuple[int, int, int, list]:
    """Counts of cells where the policy is better / within ``tol`` / worse than the reference.

    ``diff`` is policy − reference; NaN cells are not counted. Returns (wins, ties, losses,
    tied keys) where the keys come from ``keys`` (flattened in the order of ``diff``)."""
    flat = np.asarray(diff, dtype=np.float64).reshape(-1)
    keys = list(keys) if keys is not None else list(range(flat.size))
    wins = ties = losses = 0
    tied = []
    for k, v in zip(keys, flat):
        if np.isnan(v):
            continue
        if abs(v) <= tol:
            ties += 1
            tied.append(k)
        elif (v > 0) == higher_is_better:
            wins += 1
        else:
            losses += 1
    return wins, ties, losses, tied


def paired(policy_cells: Cells, ref_cells: Cells, seeds: Sequence[int], roads: Sequence[int],
           *, policy: str = "policy", reference: str = "reference", higher_is_better: bool,
           tol: float = 0.0, n_boot: int = 4000, seed: int = 0) -> PairedResult:
    """Paired difference policy − reference with its two-way bootstrap 95% interval."""
    a, b = grid(policy_cells, seeds, roads), grid(ref_cells, seeds, roads)
    d = a - b  # NaN where either is missing
    keys = [(s, r) for s in seeds for r in roads]
    w, t, lo_, tied = win_tie_loss(d, higher_is_better, tol, keys)
    n = int(np.sum(~np.isnan(d)))
    if n == 0:
        return PairedResult(policy, reference, None, None, 0, 0, 0, 0, higher_is_better)
    means = bootstrap_means(d, n_boot, seed)
    means = means[~np.isnan(means)]
    lo, hi = np.percentile(means, [2.5, 97.5], method="inverted_cdf")
    return PairedResult(policy, reference, float(np.nanmean(d)), (float(lo), float(hi)), n, w, t,
                        lo_, higher_is_better, tied)


def corruption_errors(errors: Mapping[str, Mapping[str, Mapping[int, float]]], baseline: str
                      ) -> dict[str, dict]:
    """CE per corruption and mCE for every policy, relative to ``baseline`` (module doc).

    ``errors[policy][corruption][severity]`` is the mean error (lower is better)."""
    base = errors[baseline]
    out: dict[str, dict] = {}
    for pol, by_c in errors.items():
        ce: dict[str, float] = {}
        undefined: list[str] = []
        for c, by_s in by_c.items():
            sevs = [s for s in by_s if s in base.get(c, {})]
            den = sum(base[c][s] for s in sevs)
            if not sevs or den <= 0:
                undefined.append(c)
                continue
            ce[c] = sum(by_s[s] for s in sevs) / den
        out[pol] = {"ce": ce, "mce": float(np.mean(list(ce.values()))) if ce else None,
                    "undefined": undefined}
    return out


def resilience_rates(scores: Mapping[str, Mapping[str, Mapping[int, float]]],
                     clean: Mapping[str, float]) -> dict[str, dict]:
    """RR per corruption and mRR for every policy (module doc); ``clean[policy]`` is the
    policy's clean score (higher is better). A clean score of 0 gives no rate."""
    out: dict[str, dict] = {}
    for pol, by_c in scores.items():
        c0 = clean.get(pol)
        rr = {}
        if c0 is not None and c0 > 0:
            rr = {c: float(sum(by_s.values()) / (len(by_s) * c0)) for c, by_s in by_c.items() if by_s}
        out[pol] = {"rr": rr, "mrr": float(np.mean(list(rr.values()))) if rr else None}
    return out
