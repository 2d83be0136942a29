"""Command line: ``jaxpurify purify``, ``jaxpurify demo``, ``jaxpurify reproduce …`` (the benchmarks are
``python -m benchmarks.run`` in a checkout: they are not part of the installed package).

``jaxpurify purify CHECKPOINT --codebook FILE --out PURIFIED`` reads a ``.safetensors`` ('/'- or
'.'-joined keys) or ``.msgpack`` file, an Orbax checkpoint, a ``CheckpointManager`` step directory
or a ``CheckpointManager`` directory (its latest step, or ``--step N``); purifies the codebook's
model where it sits (``--select PATH``, else the rule of ``jaxpurify.checkpoint``: the whole tree
if it holds the model, else its one subtree that does, such as ``params``) and writes the purified
checkpoint in the input's format, every other leaf as it was.  A damaged container is salvaged by the
codebook's layout (``io.salvage``): what was bypassed and which entries became erasures is printed
and kept in ``--report``.  Outputs are checked before any work.  Exit status, one class each:

* 0 — the report is ok (every protected column certified, every floating parameter protected,
  the keyed seal verified);
* 1 — purified and written, but the report is not ok (or ``--on-uncertified raise``: not written);
* 2 — bad input: usage, a missing or unusable file, a codebook that does not fit the checkpoint,
  an output that cannot be written;
* 3 — the codebook has no keyed seal: changes inside range(A) could not be detected; nothing is
  done unless ``--unsealed`` says to go on without that check;
* 4 — the wrong codebook, probably: no column certified and the seal failing (or absent); nothing
  written (the ``--report`` is);
* 5 — damaged beyond salvage: leaves that cannot be read and are not protected (or not floating),
  or a container where the codebook's leaves cannot be located; nothing written.

Every failure and warning is one line on stderr naming the file and the problem, no traceback.
Commands that compute enable JAX's persistent compilation cache (``--no-compilation-cache`` or
``JAXPURIFY_NO_COMPILATION_CACHE=1`` turn it off; an existing ``JAX_COMPILATION_CACHE_DIR`` wins).
"""

from __future__ import annotations

import argparse
import dataclasses
import importlib.util
import json
import os
import sys
import warnings
from collections.abc import Callable
from typing import TYPE_CHECKING, cast

from jaxpurify import ON_UNCERTIFIED, __version__

if TYPE_CHECKING:  # the commands import what they use when run
    from jaxpurify import Codebook
    from jaxpurify.checkpoint import Source

EXIT_OK, EXIT_NOT_OK, EXIT_BAD_INPUT, EXIT_UNSEALED, EXIT_WRONG_CODEBOOK, EXIT_UNREADABLE = 0, 1, 2, 3, 4, 5
EXIT_CODES = (
    "exit status: 0 report ok; 1 purified but not ok (columns not certified, parameters unprotected or the "
    "seal failing); 2 bad input (usage, files, a codebook that does not fit, outputs); 3 the codebook has "
    "no keyed seal (pass --unsealed to go on without it); 4 probably the wrong codebook (no column "
    "certified, seal failing or absent; nothing written); 5 damaged beyond salvage (nothing written)"
)
PAPER = 'pip install "jaxpurify[paper]"'


class BadInput(Exception):
    """Input the command cannot use; reported in one line, exit status 2."""


class Stop(Exception):
    """The command stops with its own exit status and a one-line message."""

    def __init__(self, code: int, message: str):
        super().__init__(message)
        self.code = code


def _one_line(e: BaseException | Warning | str) -> str:
    return " ".join(str(e).split()) or type(e).__name__


# -- purify ---------------------------------------------------------------------------------------


def load_codebook(
    path: str, key_path: str | None = None, *, allow_legacy: bool = False, min_seal_counter: int | None = None
) -> Codebook:
    """The codebook of ``jaxpurify purify``; the one place the CLI reads codebooks and keys."""
    from jaxpurify import Codebook

    return Codebook.load(path, key_path=key_path, allow_legacy=allow_legacy, min_seal_counter=min_seal_counter)


def check_output_suffix(out: str, fmt: str) -> None:
    """Refuse an ``--out`` whose suffix does not name ``fmt`` (the input's format, which purify
    writes): ``io.save`` would refuse it (``.zip``) or read it as another format (no suffix means
    Orbax), so the purified file would not be what its name says."""
    from jaxpurify import io

    try:
        named = io.save_format(out)
    except ValueError:
        named = None
    if named != fmt:
        suffix = os.path.splitext(out.rstrip(os.sep))[1] or "(none)"
        want = {"orbax": "no suffix", "safetensors": ".safetensors", "msgpack": ".msgpack or .mpk"}
        raise BadInput(
            f"--out {out}: suffix {suffix} does not name {fmt}, the format the purified checkpoint is "
            f"written in (CHECKPOINT's); use {want.get(fmt, fmt)}"
        )


def _write_json(path: str, obj: object) -> None:
    from jaxpurify import io

    io.write_atomic(path, (json.dumps(obj, indent=1) + "\n").encode())


def check_outputs(args: argparse.Namespace, source: Source) -> tuple[str, str | None]:
    """(--out, --report) as absolute paths, checked before any work: each must differ from the
    checkpoint and from each other, its directory must exist and be writable, and it must be what
    will be written there — a file where a file goes (not an existing directory), an Orbax
    directory where one goes (not a file, nor a directory that is not a checkpoint), with a
    suffix of the input's format.  ``BadInput`` naming the flag and the path otherwise."""
    from jaxpurify import checkpoint

    out = os.path.abspath(args.out)
    report = os.path.abspath(args.report) if args.report else None
    src = os.path.abspath(args.checkpoint)
    if out == src:
        raise BadInput("--out must differ from CHECKPOINT (the damaged input is kept)")
    if report is not None and report in (out, src):
        raise BadInput(f"--report {args.report}: must differ from CHECKPOINT and --out")
    for flag, dest in (("--out", out), ("--report", report)):
        if dest is None:
            continue
        parent = os.path.dirname(dest)
        if not os.path.isdir(parent):
            raise BadInput(f"{flag} {dest}: no such directory {parent}")
        if not os.access(parent, os.W_OK):
            raise BadInput(f"{flag} {dest}: directory {parent} is not writable")
    check_output_suffix(args.out, source.format)  # a suffix naming another format, or none it writes
    if source.format == "orbax":
        layout = checkpoint.out_layout(source)  # an Orbax checkpoint, or a CheckpointManager step
        if os.path.exists(out) and checkpoint.orbax_layout(out) != layout:
            what = "an Orbax checkpoint" if layout == "item" else "a CheckpointManager step directory"
            raise BadInput(f"--out {args.out}: exists and is not {what}; not overwriting it")
    elif os.path.isdir(out):
        raise BadInput(f"--out {args.out}: is a directory; the purified {source.format} checkpoint is a file")
    if report is not None and os.path.isdir(report):
        raise BadInput(f"--report {args.report}: is a directory; the report is a JSON file")
    return out, report


def _warn(w: warnings.WarningMessage) -> None:
    print(f"jaxpurify purify: warning: {w.category.__name__}: {_one_line(w.message)}", file=sys.stderr)


def _purify(args: argparse.Namespace) -> int:
    with warnings.catch_warnings(record=True) as caught:  # printed one line each, not Python's two
        warnings.simplefilter("always")
        try:
            return _purify_checked(args)
        finally:
            for w in caught:
                _warn(w)


def _purify_checked(args: argparse.Namespace) -> int:
    from jaxpurify import Report, UncertifiedError, checkpoint, io, purify

    for flag, p in (("CHECKPOINT", args.checkpoint), ("--codebook", args.codebook), ("--key", args.key)):
        if p is not None and not os.path.exists(p):
            raise BadInput(f"{flag} {p}: no such file or directory")
    source = checkpoint.open_source(args.checkpoint, args.step)
    out, report_path = check_outputs(args, source)
    codebook = load_codebook(  # a legacy file's warning is printed in one line by _purify
        args.codebook, args.key, allow_legacy=args.allow_legacy, min_seal_counter=args.min_seal_counter
    )
    if getattr(codebook, "seal_record", None) is None and not args.unsealed:
        raise Stop(
            EXIT_UNSEALED,
            f"--codebook {args.codebook}: no keyed seal, so changes inside range(A) (a re-encoded or "
            "regularly damaged model) cannot be detected; seal it (codebook = codebook.seal(deployed); "
            "codebook.save(…)) or pass --unsealed to purify without that check",
        )
    try:
        tree, select, salvaged = checkpoint.read(source, codebook, args.select)
    except io.Unreadable as e:
        raise Stop(EXIT_UNREADABLE, f"{_one_line(e)}; {args.out} not written") from None
    params = checkpoint.part(tree, select, codebook)
    check = getattr(codebook, "check", None)
    if check is not None:
        try:
            check(params)
        except ValueError as e:
            where = f" (its subtree {select!r})" if select else ""
            raise BadInput(f"{source.path}{where} does not fit --codebook {args.codebook}: {_one_line(e)}") from None
    others = len(io.flatten(tree, prng_keys=True)) - len(io.flatten(params, prng_keys=True))
    if others and args.select is None:
        where = f" in its subtree {select!r}" if select else ""
        print(
            f"jaxpurify purify: {source.path}: purifying the codebook's model{where}; "
            f"{others} other leaves are written back as they were",
            file=sys.stderr,
        )
    if salvaged is not None:
        print(f"jaxpurify purify: {_one_line(salvaged.summary())}", file=sys.stderr)
        print(salvaged)
        print()
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            purified, any_report = purify(params, codebook, on_uncertified=args.on_uncertified)
        # a checkpoint's leaves are host arrays, which purify reports on in a Report (not a DeviceReport)
        report = cast(Report, any_report)
    except UncertifiedError as e:  # --on-uncertified raise: the report, and nothing written
        report, purified, caught = e.report, None, []
    for w in caught:
        _warn(w)
    print(report)
    wrong = report.columns > 0 and report.certified == 0 and not (report.sealed and report.verified)
    if report_path:
        doc = {
            "checkpoint": args.checkpoint,
            "format": source.format,
            "step": source.step,
            "select": select,
            "out": None if wrong or purified is None else args.out,
            "salvage": None if salvaged is None else salvaged.as_dict(),
            "wrong_codebook": wrong,
        }
        _write_json(report_path, {**doc, **report.as_dict()})
    if wrong:
        raise Stop(
            EXIT_WRONG_CODEBOOK,
            f"--codebook {args.codebook}: no column of {source.path} certified and the keyed seal "
            + ("fails" if report.sealed else "is absent")
            + ": probably not this checkpoint's codebook (same shapes, another key or model), or damage far "
            f"beyond capacity; {args.out} not written",
        )
    if purified is None:
        print(
            f"jaxpurify purify: columns not certified (--on-uncertified raise); {args.out} not written", file=sys.stderr
        )
        return EXIT_NOT_OK
    if salvaged is not None:  # a damaged header: the key separator salvage found
        source = dataclasses.replace(source, sep=salvaged.sep)
    checkpoint.write(source, out, checkpoint.merge(tree, select, purified))
    print(
        f"wrote {args.out} ({source.format})" + (f" and {args.report}" if args.report else ""),
        file=sys.stderr,
    )
    if salvaged is not None and salvaged.leaves and not report.all_certified:
        left = checkpoint.nan_count(purified, [d.path for d in salvaged.leaves], select)
        if left:
            print(
                f"jaxpurify purify: {left} entries unreadable in {source.path} were not recovered: NaN in {args.out}",
                file=sys.stderr,
            )
    return EXIT_OK if report.ok else EXIT_NOT_OK


# -- reproduce ------------------------------------------------------------------------------------


def _needs(args: argparse.Namespace) -> list[tuple[str, str]]:
    """(module, how to install it) that this run imports, checked before any work starts."""
    needs = [] if args.experiment == "backdoor" else [("matplotlib", PAPER)]  # backdoor: figure only if present
    if args.experiment == "synthetic" and not args.no_lp:
        needs.append(("scipy", PAPER))
    if getattr(args, "source", None) == "tfds":
        needs.append(("tensorflow_datasets", "pip install tensorflow-datasets"))
    return needs


def _missing(needs: list[tuple[str, str]]) -> list[tuple[str, str]]:
    return [(m, how) for m, how in needs if importlib.util.find_spec(m) is None]


def _reproduce(args: argparse.Namespace) -> int:
    missing = _missing(_needs(args))
    if missing:
        names = ", ".join(m for m, _ in missing)
        hows = "; ".join(dict.fromkeys(how for _, how in missing))
        raise BadInput(f"reproduce {args.experiment} needs {names}, not installed: {hows}")
    from jaxpurify.experiments import noise, realdata, synthetic

    if args.experiment == "backdoor":
        return _backdoor(args)
    if args.experiment == "redundancy":
        from jaxpurify.experiments import redundancy

        res = redundancy.run(
            args.dataset,
            args.out,
            arch=args.arch,
            quick=args.quick,
            data_dir=args.data_dir,
            seed=args.seed,
            steps=args.steps,
            source=args.source,
        )
        print(f"{res['dataset']} / {res['arch']}:")
        print(redundancy.table(res))
        print(f"wrote {args.out}/redundancy.json, redundancy.csv, redundancy.png")
        return EXIT_OK
    if args.experiment == "synthetic":
        r = synthetic.run(args.out, quick=args.quick, seed=args.seed, lp=not args.no_lp)
        for leaf in ("weights", "biases"):
            print(f"{leaf}: exact-recovery rate (LP rate) by K/n × ρ")
            for row in r[leaf]:
                lp = f" ({row['lp_success_rate']:.2f})" if row["lp_success_rate"] != "" else ""
                print(
                    f"  K/n={row['ratio']:<4g} rho={row['rho']:.2f}  {row['success_rate']:.2f}{lp}  "
                    f"certified {row['certified_rate']:.2f}"
                )
        print(f"wrote {args.out}/phase_weights.csv, phase_biases.csv, function_check.csv, phase.png")
        return EXIT_OK
    if args.experiment == "noise":
        rows = noise.run(args.out, quick=args.quick, seed=args.seed)
        for r in rows:
            print(
                f"sigma={r['sigma']:<8g} l1 {r['l1_err']:.2e} (certified {r['l1_certified_rate']:.2f})  "
                f"l1 strict {r['l1_strict_err']:.2e}  l2 {r['l2_err']:.2e}  Huber {r['huber_err']:.2e}"
            )
        print(f"wrote {args.out}/noise.csv, noise.png")
        return EXIT_OK
    res = realdata.run(
        args.experiment,
        args.out,
        arch=args.arch,
        quick=args.quick,
        data_dir=getattr(args, "data_dir", None),
        seed=args.seed,
        steps=args.steps,
        lr=args.lr,
        redundancy=args.redundancy,
        source=getattr(args, "source", "files"),
        seeds=args.seeds,
    )
    print(
        f"{res['dataset']} / {res['arch']}: clean accuracy {res['acc_clean_encoded']:.4f} (encoded), "
        f"{res['acc_unencoded']:.4f} (same architecture, not encoded)"
    )
    if len(res["seeds"]) > 1:
        e, p, g = res["acc_encoded_over_seeds"], res["acc_plain_over_seeds"], res["gap_over_seeds"]
        print(
            f"  {g['n']} seeds: encoded {e['mean']:.4f} [{e['min']:.4f}, {e['max']:.4f}], plain {p['mean']:.4f} "
            f"[{p['min']:.4f}, {p['max']:.4f}], gap {100 * g['mean']:+.2f} pt "
            f"[{100 * g['min']:+.2f}, {100 * g['max']:+.2f}]"
        )
    for r in res["scenarios"]:
        print(
            f"  {r['kind']:<8} {r['level']:<6g} acc contaminated {r['acc_contaminated']:.4f}  l2 {r['acc_l2']:.4f}  "
            f"purified {r['acc_purified']:.4f}  certified {r['certified_fraction']:.3f}  "
            f"{'within' if r['within_capacity'] else 'beyond'} capacity"
        )
    print(f"wrote {args.out}/results.json, accuracy.png")
    return EXIT_OK


def _backdoor(args: argparse.Namespace) -> int:
    from jaxpurify.experiments import backdoor

    figure = not _missing([("matplotlib", PAPER)])
    if not figure:
        print(f"reproduce backdoor: matplotlib not installed, no figure ({PAPER})", file=sys.stderr)
    res = backdoor.run(
        args.dataset,
        args.out,
        arch=args.arch,
        quick=args.quick,
        data_dir=args.data,
        seed=args.seed,
        figure=figure,
        layout=args.layout,
        steps=args.steps,
        limit=tuple(args.limit) if args.limit else None,
    )
    c = res["clean"]
    print(f"{res['dataset']} / {res['arch']}: clean CA {c['ca']:.4f}, trigger rate {c['asr']:.4f}")
    for r in res["rows"]:
        print(
            f"  {r['attack']:<10} {r['defense']:<9} {r['benign_fraction']:<5g} CA {r['ca']:.4f}  ASR {r['asr']:.4f}  "
            f"RA {r['ra']:.4f}  detected {r['detected']}"
        )
    for t in res["targets"]:
        print(f"  {'met' if t['met'] else 'NOT met'}: {t['target']}")
    print(f"wrote {args.out}/backdoor.json, backdoor.md" + (", backdoor.png" if figure else ""))
    return EXIT_OK


# -- parser ---------------------------------------------------------------------------------------


def _experiment_parsers(reproduce: argparse.ArgumentParser, common: argparse.ArgumentParser) -> None:
    exps = reproduce.add_subparsers(dest="experiment", required=True, metavar="EXPERIMENT")
    shared = argparse.ArgumentParser(add_help=False, parents=[common])
    shared.add_argument("--out", required=True, help="directory for CSV/JSON results and figures")
    shared.add_argument("--quick", action="store_true", help="fewer cells, trials and steps")
    shared.add_argument("--seed", type=int, default=0)
    s = exps.add_parser("synthetic", parents=[shared], help="phase diagram of exact recovery (K/n × ρ)")
    s.add_argument("--no-lp", action="store_true", help="skip the HiGHS reference (then scipy is not needed)")
    exps.add_parser("noise", parents=[shared], help="recovery error against dense noise σ")
    real = argparse.ArgumentParser(add_help=False, parents=[shared])
    real.add_argument("--arch", choices=["one-hidden", "multi"], default="one-hidden")
    real.add_argument("--steps", type=int, help="training steps (default: digits 1500, mnist 3000, quick 300)")
    real.add_argument("--lr", type=float, help="peak AdamW learning rate for both models (default 3e-2)")
    real.add_argument("--redundancy", type=float, default=4.0, help="K/n of the codebook (default 4)")
    real.add_argument("--seeds", type=int, default=1, help="train plain and encoded for this many seeds (default 1)")
    exps.add_parser("digits", parents=[real], help="the embedded 8×8 digits (no download)")
    files = argparse.ArgumentParser(add_help=False)
    files.add_argument("--data-dir", help="directory with MNIST IDX or CIFAR-10 binary files (nothing is downloaded)")
    files.add_argument(
        "--source",
        choices=["files", "tfds"],
        default="files",
        help="standard files in --data-dir, or a prepared tensorflow-datasets dir",
    )
    exps.add_parser("mnist", parents=[real, files], help="MNIST from --data-dir")
    exps.add_parser("cifar10", parents=[real, files], help="CIFAR-10 from --data-dir")
    red = exps.add_parser(
        "redundancy", parents=[shared, files], help="accuracy and certified capacity over K/n ∈ {1.5, 2, 3, 4, 6}"
    )
    red.add_argument("--dataset", choices=["digits", "mnist", "cifar10"], default="digits")
    red.add_argument("--arch", choices=["one-hidden", "multi"], default="multi")
    red.add_argument("--steps", type=int, help="training steps (default: the data set's recipe)")
    b = exps.add_parser("backdoor", parents=[shared], help="weight attacks × defenses × benign data")
    b.add_argument("--dataset", choices=["digits", "mnist", "cifar10"], default="digits")
    b.add_argument("--arch", choices=["one-hidden", "multi"], default="one-hidden")
    b.add_argument(
        "--data",
        "--data-dir",
        dest="data",
        metavar="PATH",
        help="directory with MNIST IDX or CIFAR-10 binary files (nothing is downloaded)",
    )
    b.add_argument(
        "--layout",
        choices=["interleave", "output", "default"],
        default="interleave",
        help="codebook layout: wide kernels along their output axis and the read-out interleaved "
        "over coprime columns (default), output axis only, or the library's default",
    )
    b.add_argument("--steps", type=int, help="training steps (default 1500, quick 600)")
    b.add_argument(
        "--limit",
        type=int,
        nargs=2,
        metavar=("TRAIN", "TEST"),
        help="keep only the first TRAIN training and TEST test examples (quick on mnist/cifar10: 2000 1000)",
    )


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="jaxpurify", description="Purify contaminated networks by certified l1 recovery."
    )
    parser.add_argument("--version", action="version", version=f"jaxpurify {__version__}")
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument(
        "--no-compilation-cache",
        action="store_true",
        help="do not use JAX's persistent compilation cache (also: JAXPURIFY_NO_COMPILATION_CACHE=1)",
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    p = sub.add_parser(
        "purify",
        parents=[common],
        help="purify a checkpoint (Orbax, .safetensors or Flax msgpack)",
        description="Recover every protected leaf of CHECKPOINT, print the report and write the "
        "purified checkpoint in the input's format (a damaged container is salvaged by the codebook's "
        "layout; unreadable entries of protected leaves become erasures). Outputs are checked before any work.",
        epilog=EXIT_CODES,
    )
    p.add_argument(
        "checkpoint",
        metavar="CHECKPOINT",
        help="a .safetensors or .msgpack file, an Orbax checkpoint, or a CheckpointManager step or directory",
    )
    p.add_argument("--codebook", required=True, metavar="FILE", help="the codebook the model was encoded with")
    p.add_argument("--key", metavar="FILE", help="the codebook's key file (default: the codebook's path + .key)")
    p.add_argument("--out", required=True, metavar="PURIFIED", help="where to write the purified checkpoint")
    p.add_argument("--report", metavar="FILE.json", help="also write the report as JSON")
    p.add_argument(
        "--select",
        metavar="PATH",
        help="the '/'-joined path of the subtree the codebook was made for (e.g. params); the rest is "
        "written back as it was (default: the whole checkpoint, or its one subtree that is the codebook's model)",
    )
    p.add_argument(
        "--step", type=int, metavar="N", help="the step of a CheckpointManager directory (default: the latest)"
    )
    p.add_argument(
        "--unsealed",
        action="store_true",
        help="go on with a codebook that has no keyed seal (changes inside range(A) then go undetected)",
    )
    p.add_argument(
        "--allow-legacy",
        action="store_true",
        help="accept a version-1 codebook file (key inside, no MAC: NOT authenticated); the report says so",
    )
    p.add_argument(
        "--min-seal-counter",
        type=int,
        metavar="N",
        help="refuse a codebook whose seal counter is below N (an older sealed file replayed with older weights)",
    )
    p.add_argument(
        "--on-uncertified",
        choices=ON_UNCERTIFIED,
        default="input",
        help="columns not certified: keep the input values (default), write the l1 estimate, or raise (write nothing)",
    )
    d = sub.add_parser(
        "demo", parents=[common], help="encode, contaminate and purify the paper's CNN on the embedded digits"
    )
    d.add_argument(
        "--seed", type=int, default=0, help="seeds data, model and damage (the codebook's key is always fresh)"
    )
    d.add_argument("--filters", type=int, default=256, help="hidden filters K (default 256)")
    d.add_argument("--steps", type=int, default=300, help="training steps (default 300)")
    r = sub.add_parser("reproduce", help="reproduce one of the paper's experiments (EXPERIMENT --help for its options)")
    _experiment_parsers(r, common)
    return parser


def _compilation_cache(args: argparse.Namespace) -> None:
    from jaxpurify import compilation_cache_disabled_by_env, enable_compilation_cache

    if args.no_compilation_cache or compilation_cache_disabled_by_env() or os.environ.get("JAX_COMPILATION_CACHE_DIR"):
        return  # turned off, or the user chose a cache directory for JAX already
    try:
        enable_compilation_cache()
    except OSError as e:  # an unwritable cache directory costs time, not correctness
        print(f"jaxpurify: compilation cache disabled ({_one_line(e)})", file=sys.stderr)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    parser = _parser()
    args = parser.parse_args(argv)
    if args.command == "demo" and (args.filters < 8 or args.steps < 0):
        parser.error("--filters must be ≥ 8 and --steps ≥ 0")
    try:
        _compilation_cache(args)
        if args.command == "demo":
            from jaxpurify import demo

            return demo.run(seed=args.seed, filters=args.filters, steps=args.steps)
        run: Callable[[argparse.Namespace], int] = {"purify": _purify, "reproduce": _reproduce}[args.command]
        return run(args)
    except Stop as e:
        print(f"jaxpurify {args.command}: {_one_line(e)}", file=sys.stderr)
        return e.code
    except (BadInput, OSError, ValueError, TypeError) as e:
        print(f"jaxpurify {args.command}: {_one_line(e)}", file=sys.stderr)
        return EXIT_BAD_INPUT


if __name__ == "__main__":
    sys.exit(main())
