"""Command line: argument parsing only. Every BenchError (and an OS error on a user's output path or
disk) becomes one line on stderr and exit 2."""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from bench import __version__
from bench.errors import BenchError

def _cmd_run(args: argparse.Namespace) -> int:
    from bench.config import find_config, load_config

    path = find_config(args.config)
    cfg = load_config(path)
    if args.processes < 1:
        raise BenchError(f"--processes must be at least 1 (got {args.processes})")
    if args.processes > 1 and "WORLD_SIZE" not in os.environ:  # not yet launched: start torchrun
        return _launch(args)
    from bench.runner import run_benchmark

    out = run_benchmark(cfg, path, use_cache=not args.no_cache, progress=not args.no_progress,
                        out_dir=Path(args.out) if args.out else None)
    if out is None:  # not the main process of a multi-process run: it embedded its shares
        return 0
    print(f"results: {out / 'results.json'}")
    print(f"markdown: {out / 'report.md'}")
    print(f"report: {out / 'report.html'}")
    return 0


def _launch(args: argparse.Namespace) -> int:
    """`bench run CONFIG --processes N`: the same run under torchrun, N processes on this machine."""
    import subprocess

    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node",
           str(args.processes), "-m", "bench", "run", args.config]
    cmd += ["--no-cache"] * args.no_cache + ["--no-progress"] * args.no_progress
    cmd += ["--out", args.out] if args.out else []
    return subprocess.run(cmd).returncode


def _cmd_finetune(args: argparse.Namespace) -> int:
    from bench.config import check_paths, find_config, load_config

    path = find_config(args.config)
    cfg = load_config(path)
    if not cfg.finetune:
        from bench.errors import ConfigError

        raise ConfigError(f"{path}: no `finetune:` entries to train (see README, Fine-tuning)")
    check_paths(cfg)
    from bench.finetune.stage import select, train_entries
    from bench.runner import dataset_loader

    select(cfg, args.only)  # an unknown --only fails before any data is read
    for o in train_entries(cfg, dataset_loader(cfg), only=args.only, progress=not args.no_progress):
        rec = o.record
        how = ("reused (training fingerprint matches)" if o.reused else
               f"trained: {rec.get('wall_s', 0):.1f} s, {rec.get('samples_per_s') or 0:.0f} samples/s, "
               f"final loss {rec.get('final_loss')}")
        print(f"{o.entry.name}: {how} -> {o.out_dir}")
    return 0


def _cmd_validate(args: argparse.Namespace) -> int:
    from bench.config import check_paths, find_config, load_config

    status = 0
    for c in args.configs:
        path = find_config(c)
        cfg = load_config(path)
        if not args.no_files:
            check_paths(cfg)
        tuned = f" + {len(cfg.finetune)} fine-tuned" if cfg.finetune else ""
        print(f"ok: {path} ({len(cfg.embedders)} embedder(s){tuned}, {len(cfg.datasets)} dataset(s), "
              f"{len(cfg.tasks)} task(s))")
    return status


def _cmd_list(args: argparse.Namespace) -> int:
    from bench import registry

    for kind in registry.KINDS:
        print(f"{kind}s: {', '.join(registry.names(kind))}")
    configs = sorted(p.name for p in Path("configs").glob("*.yaml") if not p.name.startswith("_"))
    if configs:
        print(f"configs: {', '.join(configs)}")
    return 0


def _cmd_make_data(args: argparse.Namespace) -> int:
    from bench.demo.synthetic import make_synthetic

    make_synthetic(Path(args.out), n_train=args.train, n_val=args.val, n_test=args.test, seed=args.seed)
    print(Path(args.out))
    return 0


def _cmd_make_models(args: argparse.Namespace) -> int:
    from bench.demo.tiny_phi3v import make_tiny_phi3v
    from bench.demo.tiny_clip import make_tiny_clip

    out = Path(args.out)
    make_tiny_clip(out / "clip", seed=args.seed)
    make_tiny_phi3v(out / "phi3v", seed=args.seed)
    print(out)
    return 0


def _cmd_embed(args: argparse.Namespace) -> int:
    from bench.embed import embed_folder, embed_options

    options = {field: getattr(args, field) for field in embed_options()}
    out = embed_folder(args.type, model=args.model, images=Path(args.images), output=Path(args.output),
                       texts=Path(args.texts) if args.texts else None, revision=args.revision,
                       options=options, device=args.device, dtype=args.dtype, batch_size=args.batch_size,
                       num_workers=args.num_workers)
    print(out)
    return 0


def _device_arg(value: str) -> str:
    from bench.params import check_device_name

    try:
        return check_device_name(value)
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e)) from None


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="bench", description="Compare image embedders (CLIP, Phi-3-vision) on "
                                "retrieval, linear probe, zero-shot, speed and memory.")
    p.add_argument("--version", action="version", version=f"bench {__version__}")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")

    r = sub.add_parser("run", help="run a benchmark config and write results + report")
    r.add_argument("config", help="a file in configs/ (bare name or path)")
    r.add_argument("--no-cache", action="store_true", help="recompute embeddings (the cache is not read or written)")
    r.add_argument("--no-progress", action="store_true", help="no progress bars")
    r.add_argument("--out", help="run folder (default: <output_dir>/<name>-<timestamp>)")
    r.add_argument("--processes", type=int, default=1, metavar="N",
                   help="embed with N processes (torchrun on this machine; one per GPU on CUDA)")
    r.set_defaults(func=_cmd_run)

    f = sub.add_parser("finetune", help="fine-tune the config's `finetune:` models (a checkpoint whose "
                       "training fingerprint matches is reused)")
    f.add_argument("config", help="a file in configs/ (bare name or path)")
    f.add_argument("--only", metavar="NAME", help="train only the finetune entry NAME")
    f.add_argument("--no-progress", action="store_true", help="no per-step log lines")
    f.set_defaults(func=_cmd_finetune)

    v = sub.add_parser("validate", help="check config files without running them")
    v.add_argument("configs", nargs="+")
    v.add_argument("--no-files", action="store_true", help="do not check that data files exist")
    v.set_defaults(func=_cmd_validate)

    ls = sub.add_parser("list", help="list known embedders, datasets, tasks and configs")
    ls.set_defaults(func=_cmd_list)

    md = sub.add_parser("make-data", help="write the deterministic synthetic dataset (COCO formats)")
    md.add_argument("out")
    md.add_argument("--seed", type=int, default=0)
    md.add_argument("--train", type=int, default=200)
    md.add_argument("--val", type=int, default=50)
    md.add_argument("--test", type=int, default=100)
    md.set_defaults(func=_cmd_make_data)

    mm = sub.add_parser("make-models", help="write tiny random-initialized CLIP and Phi-3-vision checkpoints")
    mm.add_argument("out")
    mm.add_argument("--seed", type=int, default=0)
    mm.set_defaults(func=_cmd_make_models)

    e = sub.add_parser("embed", help="embed a folder of images (and text lines) into a safetensors file")
    from bench import registry
    from bench.embed import embed_options
    from bench.params import DEVICE_HELP, DType, typing_args

    e.add_argument("type", choices=registry.names("embedder"))
    e.add_argument("--model", required=True, help="checkpoint folder or hub id (offline HF cache)")
    e.add_argument("--images", required=True, help="folder of images (searched recursively)")
    e.add_argument("--texts", help="text file, one text per line (text-capable embedders)")
    e.add_argument("--output", required=True, help="output .safetensors file")
    e.add_argument("--revision")
    for field, opt in embed_options().items():  # each embedder's own settings, from its parameter model
        e.add_argument(f"--{field.replace('_', '-')}", type=opt["type"], choices=opt["choices"],
                       help=f"({', '.join(opt['types'])})")
    e.add_argument("--device", default="auto", type=_device_arg, help=DEVICE_HELP)
    e.add_argument("--dtype", default="float32", choices=typing_args(DType))
    e.add_argument("--batch-size", type=int, default=8)
    e.add_argument("--num-workers", type=int, default=1)
    e.set_defaults(func=_cmd_embed)

    from bench.cli_report import register

    register(sub)
    return p


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except BenchError as e:
        print(f"bench: error: {e}", file=sys.stderr)
        return e.exit_code
    except Exception as e:
        # Safety net: an OS error on a path or disk the user chose (read-only, full, a file in the way)
        # that no check caught is still one line and exit 2. Anything else keeps its traceback.
        from bench.outputs import os_error_line

        line = os_error_line(e)
        if line is None:
            raise
        print(f"bench: error: {line}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("bench: interrupted (finished embeddings are kept in the cache)", file=sys.stderr)
        return 130


if __name__ == "__main__":
    raise SystemExit(main())
