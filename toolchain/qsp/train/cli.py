"""``qsp-train``: the command line front door.

Every key of :class:`~qsp.train.config.TrainConfig` is a flag (``weight_bits`` ->
``--weight-bits``); a YAML file given with ``--config`` sets keys first and flags override
it. Errors of qsp's own are printed without a traceback; exit statuses: qsp.cli.EXIT_STATUS
(2 for bad input: arguments, config, data; 1 when the model cannot be trained or training fails).
"""
from __future__ import annotations

import argparse
import sys
import typing
from dataclasses import fields

from ..cli import add_version, with_exit_status
from ..errors import EXIT_FAILED, ConfigError, QspError, exit_code
from .config import TrainConfig, _resolve_type, load_yaml

EXAMPLES = """\
examples:
  qsp-train                                   digits, MLP, 8 bits, 50 % weight + activation sparsity
  qsp-train --task fashion-mnist --epochs 5   LeNet-style CNN on Fashion-MNIST
  qsp-train --task super-resolution --order quantize-then-prune
  qsp-train --config run.yaml --weight-bits 4 --out runs/w4
  qsp-train --resume --out runs/w4            continue an interrupted run
  qsp-train --task custom --data-dir my.npz --model mypkg.models:net --model-kwargs '{width: 32}'

The run directory (OUT, default runs/<task>-<timestamp>, runs/latest points at it) holds
checkpoints/, train_log.csv, config.yaml, metrics.json and bundle/ (see docs/bundle.md).
"""

#: short flags the issue names explicitly keep their documented choices in --help
CHOICES = {"task": None, "device": ("cpu", "cuda"), "order": ("prune-then-quantize", "quantize-then-prune", "auto")}


def _metavar(f) -> str:
    tp = _resolve_type(f.type)
    args = [a for a in typing.get_args(tp) if a is not type(None)]
    base = typing.get_origin(args[0] if args else tp) or (args[0] if args else tp)
    return {int: "N", float: "X", str: "STR", bool: "BOOL", list: "A,B", dict: "YAML"}.get(base, "VALUE")


def build_parser() -> argparse.ArgumentParser:
    from .data import TASKS
    from .methods import METHODS

    p = argparse.ArgumentParser(
        prog="qsp-train", formatter_class=argparse.RawDescriptionHelpFormatter,
        description="Train a quantized and pruned model (weights and activations) and write the bundle "
                    "that qsp-compile turns into a bit-exact HLS project.",
        epilog=with_exit_status(EXAMPLES))
    add_version(p)
    p.add_argument("--config", metavar="FILE", help="YAML file of config keys (the names below with underscores); "
                                                    "flags override it")
    p.add_argument("--print-config", action="store_true",
                   help="print the resolved configuration as YAML and exit")
    choices = dict(CHOICES, task=tuple(TASKS), method=tuple(sorted(METHODS)))
    for f in fields(TrainConfig):
        flag = "--" + f.name.replace("_", "-")
        default = f.default if not callable(getattr(f, "default_factory", None)) else f.default_factory()
        help_ = f.metadata.get("help", "")
        if f.name in ("resume", "progress"):
            pass
        elif default is not None and not isinstance(default, bool):
            help_ += f" [default: {default}]"
        if f.name == "resume":
            p.add_argument(flag, dest=f.name, action="store_const", const="true", default=None, help=help_)
            continue
        if f.name == "progress":
            p.add_argument("--no-progress", dest=f.name, action="store_const", const="false", default=None,
                           help="no progress bars (nor progress lines when stdout is not a terminal; "
                                "key: progress: false)")
            continue
        mv = "|".join(choices[f.name]) if choices.get(f.name) else _metavar(f)
        if f.name == "model":
            mv = "NAME|pkg.mod:factory"
        p.add_argument(flag, dest=f.name, metavar=mv, default=None, help=help_)
    return p


def config_from_args(argv=None) -> tuple[TrainConfig, set[str], argparse.Namespace]:
    """(config, keys the user set, parsed args). Flags override the YAML file."""
    args = build_parser().parse_args(argv)
    d = load_yaml(args.config) if args.config else {}
    if not isinstance(d, dict):
        raise ConfigError(f"{args.config}: the top level must be a mapping of keys to values")
    # validate the file's keys against the schema first, naming the file
    TrainConfig.from_dict({k: v for k, v in d.items()}, where=args.config or "config") if d else None
    explicit = {str(k).replace("-", "_") for k in d}
    for f in fields(TrainConfig):
        v = getattr(args, f.name)
        if v is not None:
            d[f.name] = v
            explicit.add(f.name)
    cfg = TrainConfig.from_dict(d, where="command line" if not args.config else f"{args.config} + command line")
    return cfg, explicit, args


def main(argv=None) -> int:
    try:
        cfg, explicit, args = config_from_args(argv)
        if args.print_config:
            print(cfg.to_yaml(), end="")
            return 0
        from .distributed import session
        from .pipeline import run

        with session(cfg.device):  # torchrun: the process group around the run (no-op otherwise)
            run(cfg, explicit)
        return 0
    except QspError as e:
        print(f"qsp-train: error: {e}", file=sys.stderr)
        return exit_code(e, other=EXIT_FAILED)
    except KeyboardInterrupt:
        print("qsp-train: interrupted; continue with qsp-train --resume --out <run dir>", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
