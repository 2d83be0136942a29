"""The table, forensic map and figure of ``jaxpurify reproduce backdoor`` (from its result dict)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, Literal

import numpy as np

if TYPE_CHECKING:  # backdoor imports this module when it writes its report
    from jaxpurify.experiments._common import Record
    from jaxpurify.experiments.backdoor import Row

DEFENSE_ORDER = ("none", "purify", "purify+ft", "ft", "fp", "l2", "checksum")
PLOTTED: dict[Literal["ca", "asr"], str] = {"ca": "clean accuracy", "asr": "attack success rate"}  # the figure's rows


def _pct(x: float | None) -> str:
    return "–" if x is None else f"{100 * x:.1f}"


def _yes(x: bool | None) -> str:
    return "–" if x is None else ("yes" if x else "no")


def table(rows: Sequence[Row]) -> str:
    head = "| attack | defense | benign | CA % | ASR % | RA % | flagged | certified % | detected | s |\n|" + "---|" * 10
    lines = [head]
    for r in rows:
        lines.append(
            f"| {r['attack']} | {r['defense']} | {r['benign_fraction']:g} | {_pct(r['ca'])} | {_pct(r['asr'])} | "
            f"{_pct(r['ra'])} | {'–' if r['flagged'] is None else r['flagged']} | {_pct(r['certified_fraction'])} | "
            f"{_yes(r['detected'])} | {r['seconds']:.1f} |"
        )
    return "\n".join(lines)


def summary(res: Record) -> str:
    """One line per attack: CA / ASR (%) after each defense, the data defenses at the largest
    benign budget, and the keyed seal's verdict."""
    rows: list[Row] = res["rows"]
    budget = max(r["benign_fraction"] for r in res["rows"])

    def find(a: str, d: str, f: float) -> Row | None:
        return next((r for r in rows if (r["attack"], r["defense"], r["benign_fraction"]) == (a, d, f)), None)

    heads = [d if d in ("none", "purify", "l2", "checksum") else f"{d} ({budget:g})" for d in DEFENSE_ORDER]
    lines = ["| attack | " + " | ".join(heads) + " | seal detects |", "|" + "---|" * (len(heads) + 2)]
    for a in dict.fromkeys(r["attack"] for r in rows):
        cells = []
        for d in DEFENSE_ORDER:
            r = find(a, d, 0.0) or find(a, d, budget)
            cells.append("–" if r is None else f"{_pct(r['ca'])} / {_pct(r['asr'])}")
        purified = find(a, "purify", 0.0)
        cells.append(_yes(None if purified is None else purified["detected"]))
        lines.append(f"| {a} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def forensic_table(forensic: dict[str, dict[str, Record]]) -> str:
    lines = [
        "| attack | leaf | changed | flagged | precision | recall | recall (certified columns) "
        "| channels changed / flagged |",
        "|" + "---|" * 8,
    ]
    for attack, leaves in forensic.items():
        for path, v in leaves.items():
            if not (v["changed"] or v["flagged"]):
                continue
            ch, fl = v["channels_changed"], v["channels_flagged"]
            lines.append(
                f"| {attack} | {path} | {v['changed']} | {v['flagged']} | {_pct(v['precision'])} | "
                f"{_pct(v['recall'])} | {_pct(v['certified_recall'])} | {len(ch)} / {len(fl)} |"
            )
    return "\n".join(lines)


def _setup(res: Record) -> str:
    """The run's settings that change its numbers: data, training steps, codebook layout."""
    note = {
        "mnist-t10k-split": "MNIST from the user's t10k files only (no train files given): split at random "
        "(seeded) into training and test examples by the experiment itself"
    }.get(res["dataset"], "")
    limit = res.get("limit")
    parts = [
        note,
        f"first {limit[0]} training / {limit[1]} test examples kept (a reduced run)" if limit else "",
        f"{res['steps']} training steps",
        f"codebook layout `{res.get('layout', 'default')}`: "
        + ", ".join(f"{name} K={g['K']}, n={g['n']}, {g['columns']} columns" for name, g in res["codebook"].items()),
    ]
    return "Setup: " + "; ".join(p for p in parts if p) + "."


def _short(hyper: dict[str, Any]) -> dict[str, Any]:
    """The hyper-parameters without the bulky outcome lists (every flip, a crafted pattern): those
    stay in backdoor.json."""
    out = dict(hyper)
    if isinstance(out.get("outcome"), dict):
        o = dict(out["outcome"])
        for k in ("flips", "crafted_trigger", "rows"):
            if k in o:
                o[k] = f"<{len(o[k]) if isinstance(o[k], list) else 1} in backdoor.json>"
        out["outcome"] = o
    if isinstance(out.get("trigger"), dict) and out["trigger"].get("pattern") is not None:
        out["trigger"] = dict(out["trigger"], pattern="<in backdoor.json>")
    return out


def markdown(res: Record) -> str:
    c = res["clean"]
    text = [
        f"# Backdoor and weight-attack defense: {res['dataset']}, {res['arch']} CNN",
        "",
        f"Clean encoded model: CA {_pct(c['ca'])} %, trigger rate (ASR of the unattacked model) {_pct(c['asr'])} %, "
        f"RA {_pct(c['ra'])} %; target class {res['target']}, trigger {res['trigger']['size']} px "
        f"{res['trigger']['corner']}; {res['train_examples']} training examples (attacker: {res['attacker_examples']}, "
        f"defender's benign pool: {res['benign_pool_examples']}), {res['test_examples']} test examples"
        + (" (quick mode)" if res["quick"] else "")
        + ".",
        "",
        _setup(res),
        "",
        "`benign`: the defender's benign data as a fraction of the training set (data-free defenses: 0). "
        "`flagged`: entries the defense judged corrupted (– : it flags nothing by design). "
        "`detected`: the keyed seal (purify rows) or the checksums (checksum rows); – : no detector. "
        "`s`: the defense's wall time (the first purify of a process includes compiling the solver).",
        "",
        "CA % / ASR % per defense:",
        "",
        summary(res),
        "",
        "All rows:",
        "",
        table(res["rows"]),
        "",
        "## Targets",
        "",
        "An attack is *strong* when, undefended, it reaches ≥ 90% test ASR at ≤ 2 pt CA loss (PBFA: CA ≤ 11%). "
        "A defense target of an attack that is not strong is listed but not claimed: restoring a weak "
        "attack is no evidence.",
        "",
    ]
    for t in res["targets"]:
        nums = ", ".join(
            f"{k} {v:.4f}" if isinstance(v, float) else f"{k} {v}"
            for k, v in t.items()
            if k not in ("target", "met", "claimed")
        )
        claim = " — *not claimed: the attack is not strong*" if t.get("claimed") is False else ""
        text.append(f"- **{'met' if t['met'] else 'NOT met'}**: {t['target']} ({nums}){claim}")
    text += [
        "",
        "## Forensic map (l1 outlier flags vs entries the attack changed)",
        "",
        forensic_table(res["forensic"]),
        "",
        "## Attack hyper-parameters (fixed before any defense was evaluated)",
        "",
    ]
    for name, a in res["attacks"].items():
        trig = a.get("trigger", res["trigger"])
        crafted = " crafted" if trig.get("pattern") is not None else ""
        base = a.get("clean", res["clean"])
        text.append(
            f"- {name} ({a['changed']} entries changed, {a['seconds']:.1f} s; trigger {trig['size']} px{crafted}, "
            f"on which the clean model gives CA {_pct(base['ca'])} %, ASR {_pct(base['asr'])} %): "
            f"`{_short(a['hyper'])}`"
        )
    return "\n".join(text) + "\n"


def plot(res: Record, path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    attacks = list(dict.fromkeys(r["attack"] for r in res["rows"]))
    budget = max(r["benign_fraction"] for r in res["rows"])

    def pick(a: str, d: str) -> Row | None:
        f = budget if any(r["defense"] == d and r["benign_fraction"] == budget for r in res["rows"]) else 0.0
        return next((r for r in res["rows"] if (r["attack"], r["defense"], r["benign_fraction"]) == (a, d, f)), None)

    fig, axes = plt.subplots(2, 1, figsize=(max(7, 1.4 * len(attacks) + 2), 6.5), constrained_layout=True, sharex=True)
    x, width = np.arange(len(attacks)), 0.8 / len(DEFENSE_ORDER)
    for (metric, label), ax in zip(PLOTTED.items(), axes):
        for i, d in enumerate(DEFENSE_ORDER):
            vals = [np.nan if (r := pick(a, d)) is None else r[metric] for a in attacks]
            ax.bar(x + (i - len(DEFENSE_ORDER) / 2 + 0.5) * width, vals, width, label=d)
        ax.axhline(res["clean"][metric], color="k", ls="--", lw=1)
        ax.set_ylabel(label)
        ax.set_ylim(0, 1.05)
    axes[1].set_xticks(x, attacks)
    axes[0].legend(fontsize=8, ncol=4, loc="lower left")
    axes[0].set_title(
        f"{res['dataset']}, {res['arch']} CNN; benign data {budget:g} of the training set (dashed: clean model)"
    )
    fig.savefig(path, dpi=120)
    plt.close(fig)
