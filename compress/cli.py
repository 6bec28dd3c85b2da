"""The ``compress`` command.

  compress --recipe recipes/int4-vit.yaml [--model M] [--data D] [--out DIR] [--set k=v ...] [--resume]
  compress inspect MODEL          structure, FLOPs and activation statistics
  compress eval MODEL|ARTIFACT    evaluation alone (a split.json: scored through the served path)
  compress export MODEL           export (and verification) alone
  compress list                   models, passes, targets and shipped recipes
  compress profile ARTIFACT       latency, throughput, memory, per-op times here or on --host user@device
  compress build --target T DIR   build the device's engine from a TensorRT build kit (run on the device)
  compress serve-part MANIFEST --part I   serve one part of a split model (docs/splitting.md)
  compress infer MANIFEST --images ...    classify with a split model: scatter to the parts, fuse
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
import traceback
from pathlib import Path

from . import ui
from .errors import UserError, VerificationError

COMMANDS = ("inspect", "eval", "export", "list", "profile", "build", "serve-part", "infer")
MAX_THREADS = 256  # as evaluation.latency.threads


def _common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--quiet", action="store_true", help="no progress bars or messages")
    p.add_argument("--json", action="store_true", help="print the result as JSON on stdout (implies --quiet)")
    p.add_argument("--threads", type=bounded_int(1, MAX_THREADS), default=None, help="intra-op threads (default 1)")


def _recipe_args(p: argparse.ArgumentParser, recipe_required: bool = False) -> None:
    p.add_argument("--recipe", required=recipe_required, help="recipe YAML (see recipes/)")
    p.add_argument("--model", help="model reference (default: the recipe's, else dinov2-s14-focus)")
    p.add_argument("--weights", help="local weights file for --model")
    p.add_argument("--data", help="dataset name or path (default: the recipe's)")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override a recipe key")


def build_parser(command: str | None) -> argparse.ArgumentParser:
    if command is None:
        p = argparse.ArgumentParser(prog="compress", description="Compress a ViT/CLIP model with a recipe.",
                                    epilog=f"other commands: {', '.join(COMMANDS)} (compress COMMAND --help)")
        _recipe_args(p, recipe_required=True)
        p.add_argument("--out", help="run folder (default: runs/<recipe name>)")
        p.add_argument("--resume", action="store_true", help="continue the run in --out (fails if there is none)")
        p.add_argument("--force", action="store_true", help="discard an earlier run in --out and start over")
    elif command == "inspect":
        p = argparse.ArgumentParser(prog="compress inspect", description="Show a model as vitforge sees it.")
        p.add_argument("model", nargs="?", default=None, help="model reference or checkpoint folder")
        p.add_argument("--weights")
        p.add_argument("--data", default="cifar10", help="images for activation statistics")
        p.add_argument("--images", type=bounded_int(0, 100_000), default=8, help="how many images (0: skip statistics)")
    elif command == "eval":
        p = argparse.ArgumentParser(prog="compress eval", description="Evaluate a model, checkpoint or artifact.")
        p.add_argument("target", nargs="?", default=None, help="model, checkpoint folder, or artifact (.onnx/.pte/.xml)")
        _recipe_args(p)
        p.add_argument("--reference", help="fp32 reference model (default: the recipe's model)")
        p.add_argument("--images", type=bounded_int(1, 1_000_000), default=200,
                       help="split manifests (split.json): test images scored through the served path")
        p.add_argument("--runs", type=bounded_int(1, 100_000), default=20, help="split manifests: latency runs")
        p.add_argument("--endpoints", nargs="+", help="split manifests: parts already served (default: start here)")
    elif command == "export":
        p = argparse.ArgumentParser(prog="compress export", description="Export and verify a model or checkpoint.")
        p.add_argument("target", nargs="?", default=None, help="model or checkpoint folder")
        _recipe_args(p)
        p.add_argument("--out", required=True, help="folder for the artifacts")
    elif command == "list":
        p = argparse.ArgumentParser(prog="compress list", description="Models, passes, targets, recipes.")
    elif command in ("profile", "build"):
        from .targets.deploy.commands import add_arguments

        p = add_arguments(command)
    elif command in ("serve-part", "infer"):
        from .split.commands import add_arguments as split_arguments

        p = split_arguments(command)
    else:  # pragma: no cover - dispatch guards this
        raise AssertionError(command)
    _common(p)
    p.error = lambda message: _usage_error(p, message)
    return p


def bounded_int(lo: int, hi: int):
    def parse(text: str) -> int:
        try:
            v = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
        if not lo <= v <= hi:
            raise argparse.ArgumentTypeError(f"{v} is outside {lo}..{hi}")
        return v

    return parse


def _usage_error(p: argparse.ArgumentParser, message: str):
    print(f"error: {' '.join(message.split())}; see {p.prog} --help", file=sys.stderr)
    sys.exit(2)


def _crash_log(run_dir, argv: list[str]) -> Path | None:
    """Write the current exception's traceback to a log: in the run folder when there is one, else the cache."""
    from .utils.io import cache_dir

    text = f"compress {' '.join(argv)}\n\n{traceback.format_exc()}"
    name = f"error-{time.strftime('%Y%m%d-%H%M%S')}-{os.getpid()}.log"
    places = [lambda: Path(run_dir) if run_dir and (Path(run_dir) / "run.json").is_file() else None,
              lambda: cache_dir("logs"), lambda: Path(tempfile.gettempdir())]
    for place in places:
        try:
            d = place()
            if d is not None:
                (d / name).write_text(text)
                return d / name
        except OSError:
            continue
    return None


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    command = argv[0] if argv and argv[0] in COMMANDS else None
    args = build_parser(command).parse_args(argv[1:] if command else argv)
    ui.set_quiet(args.quiet or args.json)
    os.environ.setdefault("OMP_NUM_THREADS", str(args.threads or 1))
    from ._compat import set_threads

    set_threads(args.threads)
    try:
        result = _dispatch(command, args, argv)
    except UserError as e:
        print(f"error: {e}", file=sys.stderr)
        return e.exit_code
    except VerificationError as e:
        print(f"error: {e}", file=sys.stderr)
        return e.exit_code
    except KeyboardInterrupt:
        print("interrupted: finished passes are kept; rerun with --resume", file=sys.stderr)
        return 130
    except Exception as e:  # a bug, not bad input: one line here, the traceback in a log
        log = _crash_log(getattr(args, "run_dir", None), argv)
        what = " ".join(str(e).split())[:200]
        print(f"error: internal error ({type(e).__name__}: {what}); the traceback is in {log or '(no writable place)'}"
              "; please report it with that file", file=sys.stderr)
        return 1
    if args.json:
        print(json.dumps(result, indent=2, default=str))
    return 0


def _dispatch(command: str | None, args, argv) -> dict:
    if command in ("serve-part", "infer"):
        from .split import commands as split_commands

        return split_commands.run(command, args)
    if command == "eval" and args.target and args.target.endswith(".json"):  # a split deployment's split.json
        from .split.evaluate import evaluate_served

        return evaluate_served(args.target, args.data or "cifar10", count=args.images, runs=args.runs,
                               endpoints=args.endpoints, reference=args.reference)
    from . import commands

    if command is None:
        return commands.run(args, ["compress", *argv])
    return getattr(commands, _FUNCTIONS.get(command, command))(args)


_FUNCTIONS = {"eval": "evaluate", "list": "list_all"}  # commands whose function is named otherwise


if __name__ == "__main__":
    sys.exit(main())
