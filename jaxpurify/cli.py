"""Command line: ``jaxpurify purify``, ``jaxpurify demo``, ``jaxpurify reproduce …`` (the benchmarks are
``python -m benchmarks.run`` in a checkout: they are not part of the installed package).

``jaxpurify purify CHECKPOINT --codebook FILE --out PURIFIED`` exits 0 when the report is ok (every
protected column certified, nothing unprotected), 1 when it is not, 2 for bad input (a missing or
unreadable file, a codebook that does not fit the checkpoint) with a one-line message.
Commands that compute enable JAX's persistent compilation cache (``--no-compilation-cache`` or
``JAXPURIFY_NO_COMPILATION_CACHE=1`` turn it off; an existing ``JAX_COMPILATION_CACHE_DIR`` wins).
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import sys
import warnings

from jaxpurify import __version__

EXIT_OK, EXIT_NOT_OK, EXIT_BAD_INPUT = 0, 1, 2
ON_UNCERTIFIED = ("input", "estimate", "raise")
PAPER = 'pip install "jaxpurify[paper]"'


class BadInput(Exception):
    """Input the command cannot use; reported in one line, exit status 2."""


def _one_line(e: BaseException) -> str:
    return " ".join(str(e).split()) or type(e).__name__


# -- purify ---------------------------------------------------------------------------------------


def load_codebook(
    path: str, key_path: str | None = None, *, allow_legacy: bool = False, min_seal_counter: int | None = None
):
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


def _write_json(path: str, obj) -> None:
    from jaxpurify import io

    io.write_atomic(path, (json.dumps(obj, indent=1) + "\n").encode())


def _purify(args) -> int:
    from jaxpurify import UncertifiedError, io, purify

    for flag, p in (("CHECKPOINT", args.checkpoint), ("--codebook", args.codebook), ("--key", args.key)):
        if p is not None and not os.path.exists(p):
            raise BadInput(f"{flag} {p}: no such file or directory")
    fmt = io.detect_format(args.checkpoint)
    out = os.path.abspath(args.out)
    if out == os.path.abspath(args.checkpoint):
        raise BadInput("--out must differ from CHECKPOINT (the damaged input is kept)")
    check_output_suffix(args.out, fmt)  # before any work
    for dest in filter(None, (out, args.report and os.path.abspath(args.report))):
        if not os.path.isdir(os.path.dirname(dest)):
            raise BadInput(f"{os.path.dirname(dest)}: no such directory")
    with warnings.catch_warnings(record=True) as loading:  # a legacy file's warning, in one line
        warnings.simplefilter("always")
        codebook = load_codebook(
            args.codebook, args.key, allow_legacy=args.allow_legacy, min_seal_counter=args.min_seal_counter
        )
    for w in loading:
        print(f"jaxpurify purify: {w.category.__name__}: {_one_line(w.message)}", file=sys.stderr)
    params = io.load(args.checkpoint, format=fmt)
    check = getattr(codebook, "check", None)
    if check is not None:
        check(params)
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            purified, report = purify(params, codebook, on_uncertified=args.on_uncertified)
    except UncertifiedError as e:  # --on-uncertified raise: the report, and nothing written
        report, purified, caught = e.report, None, []
    for w in caught:  # one line each, not Python's file:line display
        print(f"jaxpurify purify: {w.category.__name__}: {_one_line(w.message)}", file=sys.stderr)
    print(report)
    if args.report:
        _write_json(args.report, {"checkpoint": args.checkpoint, "format": fmt, "out": args.out, **report.as_dict()})
    if purified is None:
        print(
            f"jaxpurify purify: columns not certified (--on-uncertified raise); {args.out} not written", file=sys.stderr
        )
        return EXIT_NOT_OK
    io.save(out, purified, format=fmt)
    print(f"wrote {args.out} ({fmt})" + (f" and {args.report}" if args.report else ""), file=sys.stderr)
    return EXIT_OK if report.ok else EXIT_NOT_OK


# -- reproduce ------------------------------------------------------------------------------------


def _needs(args) -> list[tuple[str, str]]:
    """(module, how to install it) that this run imports, checked before any work starts."""
    needs = [] if args.experiment == "backdoor" else [("matplotlib", PAPER)]  # backdoor: figure only if present
    if args.experiment == "synthetic" and not args.no_lp:
        needs.append(("scipy", PAPER))
    if getattr(args, "source", None) == "tfds":
        needs.append(("tensorflow_datasets", "pip install tensorflow-datasets"))
    return needs


def _missing(needs: list[tuple[str, str]]) -> list[tuple[str, str]]:
    return [(m, how) for m, how in needs if importlib.util.find_spec(m) is None]


def _reproduce(args) -> int:
    missing = _missing(_needs(args))
    if missing:
        names = ", ".join(m for m, _ in missing)
        hows = "; ".join(dict.fromkeys(how for _, how in missing))
        raise BadInput(f"reproduce {args.experiment} needs {names}, not installed: {hows}")
    from jaxpurify.experiments import noise, realdata, synthetic

    if args.experiment == "backdoor":
        return _backdoor(args)
    if args.experiment == "synthetic":
        r = synthetic.run(args.out, quick=args.quick, seed=args.seed, lp=not args.no_lp)
        for leaf in ("weights", "biases"):
            print(f"{leaf}: exact-recovery rate (LP rate) by K/n × ρ")
            for row in r[leaf]:
                lp = f" ({row['lp_success_rate']:.2f})" if row["lp_success_rate"] != "" else ""
                print(
                    f"  K/n={row['ratio']:<4g} rho={row['rho']:.2f}  {row['success_rate']:.2f}{lp}  certified {row['certified_rate']:.2f}"
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
    )
    print(
        f"{res['dataset']} / {res['arch']}: clean accuracy {res['acc_clean_encoded']:.4f} (encoded), "
        f"{res['acc_unencoded']:.4f} (same architecture, not encoded)"
    )
    for r in res["scenarios"]:
        print(
            f"  {r['kind']:<8} {r['level']:<6g} acc contaminated {r['acc_contaminated']:.4f}  l2 {r['acc_l2']:.4f}  "
            f"purified {r['acc_purified']:.4f}  certified {r['certified_fraction']:.3f}  "
            f"{'within' if r['within_capacity'] else 'beyond'} capacity"
        )
    print(f"wrote {args.out}/results.json, accuracy.png")
    return EXIT_OK


def _backdoor(args) -> int:
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
    real.add_argument("--steps", type=int, help="training steps (default 1500, quick 300)")
    real.add_argument("--lr", type=float, default=1e-2, help="Adam learning rate for both models (default 1e-2)")
    real.add_argument("--redundancy", type=float, default=4.0, help="K/n of the codebook (default 4)")
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
    b = exps.add_parser("backdoor", parents=[shared], help="weight attacks × defenses × benign data (issue 11)")
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
        "purified checkpoint in the input's format. Exit status: 0 report ok, "
        "1 columns not certified or leaves not protected, 2 bad input.",
    )
    p.add_argument(
        "checkpoint", metavar="CHECKPOINT", help="an Orbax checkpoint directory, a .safetensors or a .msgpack file"
    )
    p.add_argument("--codebook", required=True, metavar="FILE", help="the codebook the model was encoded with")
    p.add_argument("--key", metavar="FILE", help="the codebook's key file (default: the codebook's path + .key)")
    p.add_argument("--out", required=True, metavar="PURIFIED", help="where to write the purified checkpoint")
    p.add_argument("--report", metavar="FILE.json", help="also write the report as JSON")
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


def _compilation_cache(args) -> None:
    from jaxpurify import _cache

    if args.no_compilation_cache or _cache.disabled_by_env() or os.environ.get("JAX_COMPILATION_CACHE_DIR"):
        return  # turned off, or the user chose a cache directory for JAX already
    try:
        _cache.enable_compilation_cache()
    except OSError as e:  # an unwritable cache directory costs time, not correctness
        print(f"jaxpurify: compilation cache disabled ({_one_line(e)})", file=sys.stderr)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    parser = _parser()
    args = parser.parse_args(argv)
    if args.command == "demo" and (args.filters < 8 or args.steps < 0):
        parser.error("--filters must be ≥ 8 and --steps ≥ 0")
    run = {"purify": _purify, "reproduce": _reproduce}.get(args.command)
    try:
        _compilation_cache(args)
        if args.command == "demo":
            from jaxpurify import demo

            return demo.run(seed=args.seed, filters=args.filters, steps=args.steps)
        return run(args)
    except (BadInput, OSError, ValueError) as e:
        print(f"jaxpurify {args.command}: {_one_line(e)}", file=sys.stderr)
        return EXIT_BAD_INPUT


if __name__ == "__main__":
    sys.exit(main())
