"""The seal's tolerance under damage the attacker chooses, with and without the cap (issue 25 item 8).

    python -m benchmarks.seal_cap [--K 64,256] [--ratios 1.5,2,4] [--columns 128] [--out FILE.json]

One sealed K × columns float32 leaf per (K, K/n), encoded along its first axis, a fixed key.  Per damage case
(gross errors on half and all of the capacity ⌊(K − n)/2⌋ per column; erasures of half, three
quarters and all of K − n − 1 entries per column), purify it and judge the certified columns
against the seal with purify's own per-chunk tolerance, capped (``_seal_bound.CAP``) and not
(``CAP = inf``, the tolerance before the cap).  Uncertified columns are replaced by the clean
values first, so a failure is a false alarm on honestly purified columns.  Printed per case: the
certified columns, the largest statistic / tolerance, the largest tolerance (per entry, the
leaf's units), and whether the seal verified.  Then the attack: erase 55% of every column and add
an in-range change s·D; the largest s that still passes, as a fraction of ‖W‖_F, without damage,
with the erasures, and with the erasures but no cap.
"""

from __future__ import annotations

import argparse
import math
import warnings

import numpy as np

import jaxpurify as jp
from benchmarks._common import dump_json
from jaxpurify import _seal_bound

CASES = (("gross", 0.5), ("gross", 1.0), ("erase", 0.5), ("erase", 0.75), ("erase", 1.0))


class _Spy:
    """Keeps the per-chunk tolerances purify computes (``_seal_bound.chunk_errors``)."""

    def __init__(self):
        self.eps, self._orig = {}, _seal_bound.chunk_errors

    def __call__(self, *a, **k):
        self.eps = self._orig(*a, **k)
        return self.eps


def _leaf(K: int, ratio: float, columns: int, seed: int):
    # encoded along axis 0 (one group, K rows): the default layout would interleave the leaf
    cb = jp.Codebook.create(
        {"w": np.zeros((K, columns), np.float32)}, bytes(range(32)), redundancy=ratio, select=lambda path, leaf: 0
    )
    raw = np.random.default_rng(seed).standard_normal((K, columns)).astype(np.float32)
    W = np.asarray(cb.decode(cb.init_latent({"w": raw}))["w"])
    return cb.seal({"w": W}), W


def _tolerance(spy: _Spy, cb, V, cap: float):
    _seal_bound.CAP = cap
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        purified, report = jp.purify({"w": V}, cb)
    return np.asarray(purified["w"]), report, spy.eps


def damage_rows(spy: _Spy, K: int, ratio: float, columns: int, cap: float) -> list[dict]:
    cb, W = _leaf(K, ratio, columns, 0)
    ((name, g),) = cb.groups.items()
    rng = np.random.default_rng(1)
    rows = []
    for kind, frac in CASES:
        k = int(frac * ((K - g.n) // 2)) if kind == "gross" else int(frac * (K - g.n - 1))
        V = W.copy()
        for j in range(columns):
            idx = rng.choice(K, k, replace=False)
            V[idx, j] = V[idx, j] + rng.choice([-1, 1], k) * rng.uniform(10, 100, k) if kind == "gross" else np.nan
        row = {"K": K, "K/n": ratio, "damage": kind, "of_capacity": frac, "per_column": k}
        for label, c in (("capped", cap), ("uncapped", math.inf)):
            P, report, eps = _tolerance(spy, cb, V, c)
            cert = np.asarray(jp.recover(cb.matrix(name), V).certified)
            v = cb.verify({"w": np.where(cert[None, :], P, W)}, eps)["w"]
            row["certified"] = int(cert.sum())
            row[label] = {"verified": v.verified, "stat_over_tol": v.statistic / v.tolerance, "max_tol": v.tolerance}
        rows.append(row)
    return rows


def attack_row(spy: _Spy, K: int, ratio: float, columns: int, cap: float) -> dict:
    cb, W = _leaf(K, ratio, columns, 2)
    ((name, g),) = cb.groups.items()
    A = np.asarray(cb.matrix(name, np.float32), np.float64)
    D = A @ np.random.default_rng(3).standard_normal((g.n, columns))
    D *= np.linalg.norm(W) / np.linalg.norm(D)
    rng = np.random.default_rng(4)
    erased = np.zeros(W.shape, bool)
    for j in range(columns):
        erased[rng.choice(K, int(0.55 * K), replace=False), j] = True
    out = {"K": K, "K/n": ratio}
    for label, mask, c in (("clean", False, cap), ("erased", True, cap), ("erased_uncapped", True, math.inf)):
        V = np.where(erased & mask, np.nan, W + 1e-3 * D).astype(np.float32)
        _, report, _ = _tolerance(spy, cb, V, c)
        v = report.seal[0]
        out[label] = 1e-3 * v.tolerance / v.statistic  # the statistic is linear in s
    return out


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--K", default="64,256")
    p.add_argument("--ratios", default="1.5,2,4")
    p.add_argument("--columns", type=int, default=128)
    p.add_argument("--out", help="write the rows as JSON here")
    a = p.parse_args(argv)
    spy, cap = _Spy(), _seal_bound.CAP
    _seal_bound.chunk_errors = spy
    rows = []
    try:
        for K in map(int, a.K.split(",")):
            for ratio in map(float, a.ratios.split(",")):
                for r in damage_rows(spy, K, ratio, a.columns, cap):
                    rows.append(r)
                    c, u = r["capped"], r["uncapped"]
                    print(
                        f"K={K:4d} K/n={ratio:<3g} {r['damage']} {r['per_column']:3d}/col  certified "
                        f"{r['certified']:3d}/{a.columns}  capped: stat/tol {c['stat_over_tol']:.1e} tol "
                        f"{c['max_tol']:.1e} {'ok' if c['verified'] else 'FALSE ALARM'}  uncapped: tol "
                        f"{u['max_tol']:.1e}",
                        flush=True,
                    )
        for K in map(int, a.K.split(",")):
            r = attack_row(spy, K, 4.0, a.columns, cap)
            rows.append(r)
            print(
                f"attack K={K} K/n=4, 55% of every column erased: largest in-range change that passes "
                f"{100 * r['clean']:.3f}% of ‖W‖_F undamaged, {100 * r['erased']:.3f}% erased "
                f"({r['erased'] / r['clean']:.2f}×), {100 * r['erased_uncapped']:.3f}% without the cap "
                f"({r['erased_uncapped'] / r['clean']:.2f}×)",
                flush=True,
            )
    finally:
        _seal_bound.chunk_errors, _seal_bound.CAP = spy._orig, cap
    if a.out:
        dump_json(a.out, rows)
    return rows


if __name__ == "__main__":
    main()
