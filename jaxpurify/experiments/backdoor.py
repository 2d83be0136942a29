"""``jaxpurify reproduce backdoor``: every attack × every defense × benign-data budget: which defense
undoes which weight attack, and with how much clean data.

Threat model: the defender trains an encoded CNN (W = A·Θ, codebook key secret, every floating
parameter protected), deploys W, seals it (``codebook.seal``) and keeps RADAR-style checksums
(:func:`jaxpurify.defenses.checksum_signatures`). The attacker holds the deployed weights and a
disjoint half of the training set, and changes the weights with each attack of
:mod:`jaxpurify.attacks` at its fixed default hyper-parameters (recorded in the output). The
defender then runs each defense of :mod:`jaxpurify.defenses` with a benign share of the training
set (``FRACTIONS``; the data-free defenses run once, at 0).

Metrics on the test set (BackdoorBench): CA, ASR (triggered non-target inputs sent to the target),
RA (triggered non-target inputs still correct). The forensic map compares, per leaf and channel,
the entries l1 flags as outliers (:func:`jaxpurify.defenses.outlier_masks`) with those the
attack changed (``Attack.changed``).
"""

from __future__ import annotations

import hashlib
import math
import os
import time
from collections.abc import Callable, Sequence
from typing import Any, TypedDict, cast

import jax
import numpy as np

from jaxpurify import Codebook, attacks, data
from jaxpurify import defenses as D
from jaxpurify.experiments import recipes
from jaxpurify.experiments._common import QUICK_EXAMPLES, Record, first, write_json
from jaxpurify.experiments.realdata import Model, build
from jaxpurify.progress import Progress
from jaxpurify.tree import Select

PyTree = Any
Data = tuple[np.ndarray, np.ndarray]  # (x, y)
# what ``run``'s ``keep`` receives trees and objects by: (attack, defense, benign_fraction), a name
# ("apply", "test", "trigger", "codebook") or ("trigger", attack)
KeepKey = tuple[str, str, float] | str | tuple[str, str]


class Metrics(TypedDict):
    """CA, ASR and RA on the test set (BackdoorBench's metrics)."""

    ca: float
    asr: float
    ra: float


class Row(TypedDict):
    """One row of backdoor.json's ``rows``: an attack, a defense and its benign data, the metrics
    (a :class:`Metrics`' fields) and what the defense reported."""

    attack: str
    defense: str
    benign_fraction: float
    ca: float
    asr: float
    ra: float
    flagged: int | None
    certified_fraction: float | None
    detected: bool | None
    seconds: float


ATTACKS: dict[str, Callable[..., attacks.Attack]] = {
    "badnets": attacks.badnets,
    "sparse": attacks.sparse_trojan,
    "channels": attacks.channel_trojan,
    "pbfa": attacks.pbfa,
    "bit_trojan": attacks.bit_trojan,
    "span": attacks.span_trojan,
}
# Hyper-parameters the experiment sets on top of each attack's defaults, fixed before any defense
# was evaluated.  The bit trojan is TBT: the read-out rows of largest target gradient (64), a
# trigger of TBT's size (``tbt_trigger``) crafted for them in 500 Adam steps, their weights to the
# target trained for 300 steps and realised by bit flips (at most 200).  The greedy flip search
# with a crafted trigger stalled on the digits (one-hidden: 3-5 flips, 39.5% ASR); with ``tune``
# at rate 0.01 it cost 9.4 pt of CA, at 0.05 1.3 pt (98.8% ASR, 158 flips; a scratch run on a
# 600-step model).  Channel replacement rewrites as many channels per layer as it needs
# (``CHANNELS``, the fewest that reach the attack's goal).
ATTACK_HYPER: dict[str, dict[str, Any]] = {
    "bit_trojan": {"craft": 500, "neurons": 64, "candidates": 16, "tune": 300, "tune_rate": 0.05, "flips": 200},
    # the sparse trojan's own rate (0.1) cost the digits' multi CNN 10.7 pt of test CA with no state
    # within its guard; at 0.01, 1.6 and 2.9 pt (two keys) at 98.5% ASR (0.03: 4.9 pt; quick runs)
    "sparse": {"finetune": attacks.Finetune(learning_rate=0.01)},
}
CHANNELS = (1, 2, 4, 8, 16)
STRONG_ASR, MAX_CA_LOSS, PBFA_CA = 0.90, 0.02, 0.11  # what makes an attack worth defending against


def tbt_trigger(h: int) -> attacks.Trigger:
    """TBT's trigger size scaled with the image: a 10 × 10 patch on CIFAR-10's 32 × 32 (9.8% of the
    image; 9 × 9 on 28 × 28, 3 × 3 on 8 × 8), bottom-right; its pixels are then crafted."""
    return attacks.Trigger(max(1, math.ceil(10 * h / 32)))


def split_of(model: Model) -> attacks.Split:
    """The model's frozen feature extractor and its head (``jaxpurify.models``' ``part``)."""

    # Module.apply returns (output, state) only when given mutable collections: here the output alone
    def features(p: PyTree, x: jax.Array) -> jax.Array:
        return cast(jax.Array, model.apply({"params": p}, x, part="features"))

    def head(p: PyTree, h: jax.Array) -> jax.Array:
        return cast(jax.Array, model.apply({"params": p}, h, part="head"))

    return attacks.Split(features=features, head=head, leaves=tuple(model.HEAD))


FRACTIONS = (0.05, 0.01, 0.0)
TARGET = 0
LAST_CONV = {"one-hidden": "hidden", "multi": "conv1"}  # the layer fine-pruning prunes


def output_axis(path: str, leaf: Any) -> int | None:
    """The ``output`` layout: a kernel with ≥ 16 output channels is encoded along its output axis
    (K = channels; for the one-hidden CNN's hidden layer, the paper's layout), everything else as
    the default. A column then holds one weight of every output channel, so rewriting a channel
    puts one change in each of its columns (the default's coprime interleave puts one or two).
    The 10-class read-out stays default: along its 10 outputs a column
    would hold n = 3 latent values, and the logits would be confined to a 3-dimensional space."""
    shape: tuple[int, ...] = getattr(leaf, "shape", ())
    return -1 if len(shape) >= 2 and shape[-1] >= 16 else None


def interleave(path: str, leaf: Any) -> int | str | None:
    """The ``interleave`` layout (the default): every kernel's column holds only a few weights of
    any one channel, and columns are tall.

    - A kernel with fan-in < 16 (the multi CNN's first conv, 3×3×1×32): the library default,
      which pools it with the biases (columns of up to 512 rows; here K = 261, 2 columns, 97
      correctable) rather than K = 32 along its outputs (12 correctable), where the 1% sparse
      trojan, free to put most of its budget into these 288 weights, overfilled columns.
    - A kernel with ≥ 16 output channels: along its output axis, as ``output`` (a column holds one
      weight of every channel; one-hidden: K = 256).
    - Any other kernel, here the 10-class read-out: the coprime interleave (``select`` →
      ``"interleave"``): its C outputs laid into m > C columns coprime to C and the fan-in F,
      entry (i, c) in column (i·C + c) mod m (read-out (256, 10): m = 17, K = 151). A rewritten
      read-out channel (the channel trojan's target column) puts ⌈F/m⌉ or fewer changes in a
      column instead of filling one, and an input's C weights lie in C distinct columns.
    Biases and other 1-D leaves: pooled (the default)."""
    shape: tuple[int, ...] = getattr(leaf, "shape", ())
    if len(shape) < 2 or math.prod(shape[:-1]) < 16:  # 16: the library pools leaves with fewer rows
        return None
    return -1 if shape[-1] >= 16 else "interleave"


LAYOUTS: dict[str, Select | None] = {"interleave": interleave, "output": output_axis, "default": None}


def secret_for(seed: int) -> bytes:
    """256 bits derived from the seed, so a run can be repeated; no attack ever sees them.  Anyone
    who knows the seed does: a research key, not one that protects a deployment (``key=None``)."""
    return hashlib.blake2b(f"jaxpurify reproduce backdoor {seed}".encode(), digest_size=32).digest()


def last_conv_features(model: Model, layer: str) -> Callable[[PyTree, jax.Array], jax.Array]:
    """features(params, x): the ReLU outputs (N, …, C) of ``layer``, for fine-pruning."""

    def features(params: PyTree, x: jax.Array) -> jax.Array:
        _, state = model.apply({"params": params}, x, capture_intermediates=True, mutable=["intermediates"])
        return jax.nn.relu(state["intermediates"][layer]["__call__"][0])

    return features


def metrics(apply: recipes.ApplyFn, params: PyTree, test: data.Split, trigger: attacks.Trigger, target: int) -> Metrics:
    x, y = test
    return {
        "ca": attacks.clean_accuracy(apply, params, x, y),
        "asr": attacks.attack_success_rate(apply, params, x, y, trigger, target),
        "ra": attacks.robust_accuracy(apply, params, x, y, trigger, target),
    }


def _count(tree: PyTree | None) -> int | None:
    return None if tree is None else int(sum(np.sum(np.asarray(v)) for v in jax.tree.leaves(tree)))


def row(attack: str, defense: str, fraction: float, m: Metrics, done: D.Defended | None, seconds: float) -> Row:
    rep = done.report if done is not None else None
    return {
        "attack": attack,
        "defense": defense,
        "benign_fraction": fraction,
        "ca": m["ca"],
        "asr": m["asr"],
        "ra": m["ra"],
        "flagged": _count(done.flagged) if done is not None else None,
        "certified_fraction": rep.certified / rep.columns if rep is not None else None,
        "detected": done.detected if done is not None else None,
        "seconds": seconds,
    }


def _channels(mask: np.ndarray) -> list[int]:
    """The channels (last axis) where ``mask`` holds any True."""
    channels: list[int] = np.flatnonzero(mask.reshape(-1, mask.shape[-1]).any(0)).tolist()
    return channels


def forensic_map(changed: dict[str, Any], flagged: dict[str, Any], certified: dict[str, Any]) -> dict[str, Record]:
    """Per leaf: entries changed by the attack vs flagged by l1, precision and recall (None when
    undefined), recall among entries whose column is certified, and the channels (last axis) hit."""
    out: dict[str, Record] = {}
    for path, leaf in changed.items():
        ch, fl, ce = np.asarray(leaf, bool), np.asarray(flagged[path], bool), np.asarray(certified[path], bool)
        tp, cch = int((ch & fl).sum()), int((ch & ce).sum())
        out[path] = {
            "changed": int(ch.sum()),
            "flagged": int(fl.sum()),
            "true_positive": tp,
            "precision": tp / int(fl.sum()) if fl.any() else None,
            "recall": tp / int(ch.sum()) if ch.any() else None,
            "changed_in_certified": cch,
            "certified_recall": int((ch & fl & ce).sum()) / cch if cch else None,
            "channels_changed": _channels(ch),
            "channels_flagged": _channels(fl),
        }
    return out


def split(ds: data.Dataset, seed: int) -> tuple[Data, Data, int]:
    """Attacker: a random half of the training set; the defender's benign pool: the other half;
    and the size of the training set."""
    n = len(ds.train.x)
    perm = np.random.default_rng(seed).permutation(n)

    def take(idx: np.ndarray) -> Data:
        return ds.train.x[idx], ds.train.y[idx]

    return take(perm[: n // 2]), take(perm[n // 2 :]), n


def run(
    dataset: str,
    out: str,
    arch: str = "one-hidden",
    quick: bool = False,
    data_dir: str | None = None,
    seed: int = 0,
    progress: bool = True,
    figure: bool = True,
    only: tuple[str, ...] | None = None,
    keep: dict[KeepKey, Any] | None = None,
    defenses: tuple[str, ...] | None = None,
    layout: str = "interleave",
    steps: int | None = None,
    limit: tuple[int, int] | None = None,
) -> Record:
    """Train, attack, defend, write ``out``/backdoor.json, backdoor.md (and backdoor.png if ``figure``).
    ``only`` / ``defenses`` restrict the attacks / defenses (names of ``ATTACKS`` / ``DEFENSES``);
    the unattacked model is always evaluated.
    ``keep``, a dict, receives every evaluated tree by (attack, defense, benign_fraction), and
    "apply", "test" (x, y), "trigger" and "codebook", for checks outside.
    ``layout``: the codebook layout (a name of ``LAYOUTS``, default ``interleave``: the one under
    which every weight attack but BadNets and the span attack is undone; the attackers know it,
    as in Kerckhoffs' principle, and the span attack uses it). ``steps``: training steps (default 1500,
    quick 600). ``limit``: (train, test) examples kept, the first of each split (quick: 2000, 1000
    off the digits)."""
    if layout not in LAYOUTS:
        raise ValueError(f"layout: unknown name {layout!r}; choose from {', '.join(LAYOUTS)}")
    for arg, named, known in (("only", only, ATTACKS), ("defenses", defenses, D.DEFENSES)):
        unknown = sorted(set(named or ()) - set(known))
        if unknown:
            raise ValueError(f"{arg}: unknown name {unknown[0]!r}; choose from {', '.join(known)}")
    os.makedirs(out, exist_ok=True)
    ds = data.load(dataset, data_dir, seed=seed)
    if limit is None and quick and dataset != "digits":
        limit = QUICK_EXAMPLES
    if limit is not None:
        ds = first(ds, *limit)
    shown = None if progress else False
    fractions = (0.05, 0.0) if quick else FRACTIONS
    r = recipes.recipe_for(dataset, steps=steps or (600 if quick else None))
    key = jax.random.key(seed)
    model, _ = build(arch, ds)
    apply = jax.jit(lambda p, x: model.apply({"params": p}, x))
    params0 = model.init(jax.random.fold_in(key, 0), ds.train.x[:1])["params"]
    select = LAYOUTS[layout]
    codebook = Codebook.create(params0, secret_for(seed), select=select)  # every floating parameter protected
    deployed, train_seconds = recipes.fit(
        apply, params0, codebook, ds.train.x, ds.train.y, r, jax.random.fold_in(key, 2), shown
    )
    codebook = codebook.seal(deployed)
    signatures = D.checksum_signatures(deployed, jax.random.fold_in(key, 3))

    trigger = attacks.Trigger.for_image(ds.train.x.shape[1])
    attacker, pool, n_train = split(ds, seed)
    layer = LAST_CONV[arch]
    extra: dict[str, dict[str, Any]] = {  # per defense: what it is passed beyond the common arguments
        "checksum": {"signatures": signatures},
        "fp": {"features": last_conv_features(model, layer), "layer": layer},
    }
    hypers: dict[str, Record] = {
        "fp": {"layer": layer, "max_drop": 0.05, "step": 0.05, "max_prune": 0.9},
        "checksum": {"group_size": signatures.group_size},
    }
    clean = metrics(apply, deployed, ds.test, trigger, TARGET)

    rows, attack_info, forensic = [row("none", "none", 0.0, clean, None, 0.0)], {}, {}
    keep = {} if keep is None else keep
    keep.update(
        {
            "apply": apply,
            "test": tuple(ds.test),
            "trigger": trigger,
            "codebook": codebook,
            ("none", "none", 0.0): deployed,
        }
    )
    names = ["none", *(a for a in ATTACKS if only is None or a in only)]
    chosen = {d: D.DEFENSES[d] for d in (defenses or D.DEFENSES)}
    frozen = split_of(model)
    with Progress(len(names), f"backdoor {dataset}/{arch}", disable=not progress or None) as bar:
        for a, name in enumerate(names):
            used = trigger  # the trigger this attack's rows are measured with
            if name == "none":
                attacked = deployed
            else:
                hit = attack(
                    name, jax.random.fold_in(key, 100 + a), apply, deployed, attacker, trigger, select, frozen, shown
                )
                attacked, used = hit.params, hit.trigger or trigger
                changed = {D.path_of(kp): v for kp, v in jax.tree_util.tree_leaves_with_path(hit.changed)}
                attack_info[name] = {
                    "hyper": hit.hyper,
                    "seconds": hit.seconds,
                    "changed": _count(hit.changed),
                    "trigger": used._asdict(),
                    # the unattacked model under this attack's trigger: the rate a defense restores
                    "clean": metrics(apply, deployed, ds.test, used, TARGET),
                }
                rows.append(row(name, "none", 0.0, metrics(apply, attacked, ds.test, used, TARGET), None, 0.0))
                keep[(name, "none", 0.0)] = attacked
                keep[("trigger", name)] = used
                flags, cert = D.outlier_masks(attacked, codebook)
                forensic[name] = forensic_map(changed, flags, cert)
            for dname, defense in chosen.items():
                for f in fractions if dname in D.NEEDS_DATA else (0.0,):
                    if dname in D.NEEDS_DATA and f == 0.0:
                        continue  # no benign data: nothing to fine-tune on
                    m = int(round(f * n_train))
                    benign = (pool[0][:m], pool[1][:m])
                    kw = dict(extra.get(dname, {}), **({"progress": shown} if dname in D.NEEDS_DATA else {}))
                    t1 = time.perf_counter()
                    done = defense(apply, attacked, codebook, benign, jax.random.fold_in(key, 1000 + a), **kw)
                    dt = time.perf_counter() - t1
                    rows.append(row(name, dname, f, metrics(apply, done.params, ds.test, used, TARGET), done, dt))
                    keep[(name, dname, f)] = done.params
            bar.update(1, attack=name)

    res = {
        "dataset": ds.name,
        "arch": arch,
        "quick": quick,
        "seed": seed,
        "steps": r.steps,
        "recipe": r.record(),
        "target": TARGET,
        "layout": layout,
        "limit": list(limit) if limit is not None else None,
        "trigger": trigger._asdict(),
        "train_examples": n_train,
        "test_examples": len(ds.test.x),
        "attacker_examples": len(attacker[0]),
        "benign_pool_examples": len(pool[0]),
        "train_seconds": train_seconds,
        "clean": clean,
        "codebook": {name: {"K": g.K, "n": g.n, "columns": g.columns} for name, g in codebook.groups.items()},
        "attacks": attack_info,
        "defenses": {
            "fine_tuning": {"epochs": D.EPOCHS, "batch_size": D.BATCH, "lr": D.LR, "optimizer": "adam"},
            **hypers,
        },
        "rows": rows,
        "forensic": forensic,
    }
    res["targets"] = targets(res)
    write_json(os.path.join(out, "backdoor.json"), res)
    from jaxpurify.experiments import _backdoor_report

    with open(os.path.join(out, "backdoor.md"), "w") as fh:
        fh.write(_backdoor_report.markdown(res))
    if figure:
        _backdoor_report.plot(res, os.path.join(out, "backdoor.png"))
    return res


def attack(
    name: str,
    key: jax.Array,
    apply: recipes.ApplyFn,
    deployed: PyTree,
    attacker: Data,
    trigger: attacks.Trigger,
    select: Select | None,
    split: attacks.Split,
    progress: bool | None,
) -> attacks.Attack:
    """Run attack ``name`` with the experiment's hyper-parameters (``ATTACK_HYPER``).  Channel
    replacement tries 1, 2, 4, … channels per layer (``CHANNELS``) and keeps the first run that
    reaches its goal on the attacker's data (the last one tried if none does)."""
    kw: dict[str, Any] = dict(target=TARGET, progress=progress, **ATTACK_HYPER.get(name, {}))
    if name == "span":
        kw["select"] = select  # the public layout rule
    if name in ("pbfa", "bit_trojan"):
        kw["split"] = split  # the feature extractor runs once per batch, not once per tried flip
    if name == "bit_trojan":
        trigger = tbt_trigger(attacker[0].shape[1])
    if name != "channels":
        return ATTACKS[name](key, apply, deployed, attacker, trigger=trigger, **kw)
    tried: list[Record] = []
    for c in CHANNELS:
        res = ATTACKS[name](key, apply, deployed, attacker, trigger=trigger, channels=c, **kw)
        tried.append({"channels": c, "asr": res.hyper["outcome"]["asr"], "ca": res.hyper["outcome"]["ca"]})
        if res.hyper["outcome"]["reached"]:
            break
    res.hyper["outcome"]["tried"] = tried
    return res


def _find(rows: Sequence[Row], attack: str, defense: str, fraction: float = 0.0) -> Row | None:
    return next(
        (r for r in rows if (r["attack"], r["defense"], r["benign_fraction"]) == (attack, defense, fraction)), None
    )


def strong(res: Record, attack: str) -> bool | None:
    """Is the attack strong enough to matter, undefended (None: not run)?  A trojan: test ASR ≥ 90%
    at ≤ 2 pt clean-accuracy loss; PBFA: clean accuracy ≤ 11%."""
    r = _find(res["rows"], attack, "none")
    if r is None:
        return None
    if attack == "pbfa":
        return r["ca"] <= PBFA_CA
    return r["asr"] >= STRONG_ASR and res["clean"]["ca"] - r["ca"] <= MAX_CA_LOSS


def targets(res: Record) -> list[Record]:
    """The experiment's targets, each with the numbers that decide it and whether it is met.  An attack
    that is not strong undefended (:func:`strong`) keeps its rows, but its defense targets carry
    ``claimed: False``: restoring a weak attack is no evidence."""
    rows: list[Row] = res["rows"]
    clean: Metrics = res["clean"]
    out: list[Record] = []
    for a in ATTACKS:
        r = _find(rows, a, "none")
        if r is None:  # not run (strong(res, a) is None)
            continue
        ok = strong(res, a)
        what = "CA ≤ 11%" if a == "pbfa" else "ASR ≥ 90% at ≤ 2 pt CA loss"
        out.append(
            {
                "target": f"{a}: strong undefended ({what})",
                "met": ok,
                "ca": r["ca"],
                "asr": r["asr"],
                "ca_loss": clean["ca"] - r["ca"],
            }
        )
    for a in ("sparse", "channels", "pbfa", "bit_trojan"):
        r = _find(rows, a, "purify")
        leaves = res["forensic"].get(a, {}).values()
        rec = [v["certified_recall"] for v in leaves if v["certified_recall"] is not None]
        if r is None:
            continue
        base = res["attacks"].get(a, {}).get("clean", clean)  # the clean model under this attack's trigger
        ok = abs(r["ca"] - base["ca"]) <= 0.005 and abs(r["asr"] - base["asr"]) <= 0.01 and all(v == 1.0 for v in rec)
        out.append(
            {
                "target": f"{a}: purify alone restores CA ±0.5 pt, ASR ±1 pt, finds every certified change",
                "met": ok,
                "claimed": bool(strong(res, a)),
                "ca": r["ca"],
                "asr": r["asr"],
                "clean_ca": base["ca"],
                "clean_asr": base["asr"],
                "min_certified_recall": min(rec) if rec else None,
            }
        )
    for f in (0.05, 0.01):
        p, ft, fp = (_find(rows, "badnets", d, f) for d in ("purify+ft", "ft", "fp"))
        if p is None or ft is None or fp is None:
            continue
        ok = p["asr"] <= 0.05 and clean["ca"] - p["ca"] <= 0.02 and p["asr"] < min(ft["asr"], fp["asr"])
        out.append(
            {
                "target": f"badnets, {f:g} benign: purify+ft ASR ≤ 5%, CA drop ≤ 2 pt, ASR below FT and FP",
                "met": ok,
                "claimed": bool(strong(res, "badnets")),
                "asr": p["asr"],
                "ca_drop": clean["ca"] - p["ca"],
                "ft_asr": ft["asr"],
                "fp_asr": fp["asr"],
            }
        )
    s, s0 = _find(rows, "span", "purify"), _find(rows, "span", "none")
    if s is not None:
        assert s0 is not None  # a defended row has its undefended row
        out.append(
            {
                "target": "span: purify fails (ASR kept within 1 pt) and the keyed seal detects it",
                "met": s["asr"] >= s0["asr"] - 0.01 and s["detected"] is True,
                "claimed": bool(strong(res, "span")),
                "asr_attacked": s0["asr"],
                "asr_purified": s["asr"],
                "detected": s["detected"],
            }
        )
    return out
