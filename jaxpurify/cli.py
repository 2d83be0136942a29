"""Command line: ``jaxpurify demo``, ``jaxpurify reproduce …`` and ``jaxpurify bench``."""

from __future__ import annotations

import argparse
import sys


def _reproduce(args, parser) -> int:
    from jaxpurify.experiments import noise, realdata, synthetic

    if args.experiment == "synthetic":
        r = synthetic.run(args.out, quick=args.quick, seed=args.seed, lp=not args.no_lp)
        for leaf in ("weights", "biases"):
            print(f"{leaf}: exact-recovery rate (LP rate) by K/n × ρ")
            for row in r[leaf]:
                lp = f" ({row['lp_success_rate']:.2f})" if row["lp_success_rate"] != "" else ""
                print(f"  K/n={row['ratio']:<4g} rho={row['rho']:.2f}  {row['success_rate']:.2f}{lp}  certified {row['certified_rate']:.2f}")
        print(f"wrote {args.out}/phase_weights.csv, phase_biases.csv, function_check.csv, phase.png")
        return 0
    if args.experiment == "noise":
        rows = noise.run(args.out, quick=args.quick, seed=args.seed)
        for r in rows:
            print(f"sigma={r['sigma']:<8g} l1 {r['l1_err']:.2e} (certified {r['l1_certified_rate']:.2f})  "
                  f"l1 strict {r['l1_strict_err']:.2e}  l2 {r['l2_err']:.2e}  Huber {r['huber_err']:.2e}")
        print(f"wrote {args.out}/noise.csv, noise.png")
        return 0
    res = realdata.run(args.experiment, args.out, arch=args.arch, quick=args.quick, data_dir=args.data_dir,
                       seed=args.seed, steps=args.steps, lr=args.lr, redundancy=args.redundancy, source=args.source)
    print(f"{res['dataset']} / {res['arch']}: clean accuracy {res['acc_clean_encoded']:.4f} (encoded), "
          f"{res['acc_unencoded']:.4f} (same architecture, not encoded)")
    for r in res["scenarios"]:
        print(f"  {r['kind']:<8} {r['level']:<6g} acc contaminated {r['acc_contaminated']:.4f}  l2 {r['acc_l2']:.4f}  "
              f"purified {r['acc_purified']:.4f}  certified {r['certified_fraction']:.3f}  "
              f"{'within' if r['within_capacity'] else 'beyond'} capacity")
    print(f"wrote {args.out}/results.json, accuracy.png")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="jaxpurify", description="Purify contaminated networks by certified l1 recovery.")
    sub = parser.add_subparsers(dest="command", required=True)
    d = sub.add_parser("demo", help="encode, contaminate and purify the paper's CNN on the embedded digits")
    d.add_argument("--seed", type=int, default=0)
    d.add_argument("--filters", type=int, default=256, help="hidden filters K (default 256)")
    d.add_argument("--steps", type=int, default=300, help="training steps (default 300)")
    r = sub.add_parser("reproduce", help="reproduce one of the paper's experiments")
    r.add_argument("experiment", choices=["synthetic", "noise", "digits", "mnist", "cifar10"])
    r.add_argument("--out", required=True, help="directory for CSV/JSON results and figures")
    r.add_argument("--quick", action="store_true", help="fewer cells, trials and steps")
    r.add_argument("--arch", choices=["one-hidden", "multi"], default="one-hidden")
    r.add_argument("--data-dir", help="directory with MNIST IDX or CIFAR-10 binary files")
    r.add_argument("--steps", type=int, help="training steps (default 1500, quick 300)")
    r.add_argument("--source", choices=["files", "tfds"], default="files",
                   help="read MNIST/CIFAR-10 from standard files in --data-dir, or from a prepared tensorflow-datasets dir")
    r.add_argument("--lr", type=float, default=1e-2, help="Adam learning rate for both models (default 1e-2)")
    r.add_argument("--redundancy", type=float, default=4.0, help="K/n of the codebook (default 4)")
    r.add_argument("--seed", type=int, default=0)
    r.add_argument("--no-lp", action="store_true", help="synthetic: skip the HiGHS reference")
    sub.add_parser("bench", help="the benchmark suite (pip install -e '.[bench]' for the peers); --help for options",
                   add_help=False)
    argv = sys.argv[1:] if argv is None else list(argv)
    if argv[:1] == ["bench"]:
        from jaxpurify.bench.suite import main as bench

        return bench(argv[1:])
    args = parser.parse_args(argv)
    if args.command == "demo":
        from jaxpurify import demo

        if args.filters < 8 or args.steps < 0:
            parser.error("--filters must be ≥ 8 and --steps ≥ 0")
        return demo.run(seed=args.seed, filters=args.filters, steps=args.steps)
    if args.command == "reproduce":
        try:
            return _reproduce(args, parser)
        except (FileNotFoundError, ValueError) as e:
            print(f"jaxpurify reproduce: {e}", file=sys.stderr)
            return 2
    return 2


if __name__ == "__main__":
    sys.exit(main())
