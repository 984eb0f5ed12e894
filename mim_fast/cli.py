"""Command-line entry point ``mim-fast``."""

import argparse
import sys


def _build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="mim-fast",
        description="Fused tokenization ops for LatentMIM pretraining on satellite imagery.",
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    sub.add_parser("info", help="versions, extension build and which backends are available (and why not)")

    bench = sub.add_parser(
        "bench",
        help="time each op against the reference path and print speedups",
        description="Time each op (band dropout, patch embed at patch sizes 1..8, masked gather/scatter) "
        "at the study's shapes (B=32, 12 bands, D=768) against the pure-PyTorch reference; "
        "median of --repeats runs after warm-up.",
    )
    bench.add_argument("--quick", action="store_true", help="a subset of patch sizes (2, 4, 8); about a minute on 2 cores")
    bench.add_argument("--device", default="cpu", choices=["cpu", "cuda"], help="device to benchmark (default: cpu)")
    bench.add_argument("--repeats", type=int, default=11, help="timed runs per provider (median reported; default 11)")
    bench.add_argument("--json", metavar="PATH", help="also write the results as JSON to PATH")
    bench.add_argument(
        "--stage",
        action="store_true",
        help="instead of single ops, time the tokenization stage of one experiment-14 microbatch "
        "(online forward+backward and DECODER targets; fused vs eager reference vs torch.compile) "
        "at the study's five (patch, crop, T) shapes; CPU only, several minutes",
    )
    bench.add_argument(
        "--model",
        action="store_true",
        help="instead of single ops, time the masked-negatives loss against its per-sample loop and a "
        "nano/tiny training step against the dense path (and the reference package when installed)",
    )
    bench.add_argument("--batch", type=int, nargs="+", default=[8, 32], help="--stage batch sizes (default: 8 32)")
    bench.add_argument(
        "--sizes", nargs="*", default=["nano", "tiny"], choices=["nano", "tiny"],
        help="--model: model sizes of the training-step rows (default: nano tiny; none given: only the loss)",
    )  # fmt: skip
    bench.add_argument("--no-compile", action="store_true", help="--stage: skip the torch.compile baseline")
    bench.add_argument("--no-memory", action="store_true", help="--stage: skip the peak-memory measurement")
    sub.add_parser("list", help="the 13 experiment keys of the study")
    dry = sub.add_parser("dry_run", help="print the fully resolved configuration of an experiment")
    dry.add_argument("key", nargs="?", help="experiment key (default: $EXPERIMENT, else the study's first)")
    dry.add_argument("overrides", nargs="*", help="dotted overrides section.key=value (e.g. trainer.max_steps=100)")
    dry.add_argument("--json", action="store_true", help="print JSON (keys mirror the reference's names)")
    dry.add_argument("--smoke", action="store_true", help="show the smoke-run settings")
    train = sub.add_parser(
        "train",
        help="train an experiment in a work directory (re-run the same command to resume)",
        description="Train an experiment. --smoke: nano model on synthetic H5 data generated into the work "
        "dir, CPU, ~40 steps. metrics.jsonl, timing.jsonl, checkpoints/ and config.json go into --work-dir.",
    )
    train.add_argument("key", nargs="?", help="experiment key (default: $EXPERIMENT, else the study's first)")
    train.add_argument("overrides", nargs="*", help="dotted overrides section.key=value")
    train.add_argument("--work-dir", required=True, help="output folder (checkpoints, metrics); resumes if it has checkpoints")
    train.add_argument("--smoke", action="store_true", help="one-CPU smoke run: nano model, synthetic data, ~40 steps")
    launch = sub.add_parser(
        "launch",
        help="train with torchrun over several processes (GPUs, or CPU processes with gloo)",
        description="Run `mim-fast train` under torchrun. Options not listed here (e.g. --nnodes, "
        "--node_rank, --master_addr, --master_port, --rdzv_endpoint) are passed to torchrun.",
    )
    launch.add_argument("key", nargs="?", help="experiment key (default: $EXPERIMENT, else the study's first)")
    launch.add_argument("overrides", nargs="*", help="dotted overrides section.key=value")
    launch.add_argument("--nproc", type=int, default=None, help="processes on this node (default: launch.num_gpus, or 1)")
    launch.add_argument("--work-dir", required=True, help="output folder shared by all processes")
    launch.add_argument("--smoke", action="store_true", help="the smoke run (CPU, gloo)")
    return parser


def main(argv: list[str] | None = None) -> int:
    try:
        return _main(argv)
    except BrokenPipeError:  # output piped into e.g. `head`: stop quietly
        sys.stderr.close()
        return 0


def _main(argv: list[str] | None = None) -> int:
    parser = _build_parser()
    raw = list(sys.argv[1:] if argv is None else argv)
    if raw and raw[0] == "launch" and not {"-h", "--help"} & set(raw):
        # torchrun options take values (`--nnodes 2`): split the words ourselves, keeping order.
        from .training.launch import launch_main

        return launch_main(raw[1:])
    # Overrides may come after options (``dry_run KEY --json a.b=1``): collect them from the rest.
    args, rest = parser.parse_known_args(argv)
    if rest:
        if args.command in ("dry_run", "train") and all("=" in r and not r.startswith("-") for r in rest):
            args.overrides = list(args.overrides) + rest
        else:
            parser.error(f"unrecognized arguments: {' '.join(rest)}")
    if args.command in ("dry_run", "train") and args.key and "=" in args.key:
        args.overrides = [args.key, *args.overrides]  # no key given: the first word is an override
        args.key = None
    if args.command in ("list", "dry_run", "train"):
        from .training import run

        try:
            if args.command == "list":
                return run.list_main()
            if args.command == "dry_run":
                return run.dry_run_main(args.key, args.overrides, args.json, args.smoke)
            return run.train_main(args.key, args.overrides, args.work_dir, args.smoke)
        except ValueError as err:
            print(f"mim-fast {args.command}: {err}", file=sys.stderr)
            return 2
    if args.command == "info":
        from .info import main as info_main

        return info_main()
    if args.command == "bench":
        if args.repeats < 1:
            print("mim-fast bench: --repeats must be >= 1", file=sys.stderr)
            return 2
        if args.model:
            from .bench.model_run import main as model_main

            return model_main(args.repeats, args.json, tuple(args.sizes))
        if args.stage:
            if args.device != "cpu":
                print("mim-fast bench --stage: only --device cpu is supported (the GPU check script covers GPUs)", file=sys.stderr)
                return 2
            from .bench.stage_run import main as stage_main

            return stage_main(args.batch, args.repeats, not args.no_compile, not args.no_memory, args.json)
        from .bench.run import main as bench_main

        return bench_main(device=args.device, quick=args.quick, repeats=args.repeats, json_path=args.json)
    return 2


if __name__ == "__main__":
    sys.exit(main())
