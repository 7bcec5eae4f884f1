"""``qsp``: one command for every stage. ``qsp <stage> ARGS`` runs the stage's own entry
point with ARGS (``qsp compile --help`` is ``qsp-compile --help``):

    qsp train     = qsp-train        train, quantize and prune; write the bundle
    qsp compile   = qsp-compile      bundle -> hls4ml project, verified bit-exact
    qsp estimate  = qsp-estimate     resources, latency, energy per board; report.html
    qsp deploy    = python -m qsp.deploy   the board-side package
    qsp flow      = qsp-flow         train -> compile -> verify -> deploy -> estimate

Also :func:`version` (``--version`` on every command) and :data:`EXIT_STATUS`, the exit
statuses every command shares (their ``--help`` epilog).
"""
from __future__ import annotations

import argparse
import importlib
import sys

#: stage -> (module, function called with the remaining argv, returning the exit status)
COMMANDS = {
    "train": ("qsp.train.cli", "main"),
    "compile": ("qsp.compile.cli", "main"),
    "estimate": ("qsp.estimate.cli", "main"),
    "deploy": ("qsp.deploy", "main"),
    "flow": ("qsp.flow", "main"),
}

EXIT_STATUS = """\
exit status:
  0  ok
  1  verification failed (bit-exact check) or the task failed
  2  bad input: arguments, config key/value, bundle, board or data files
  3  a tool failed: g++ not found, the C++ build or the C simulation failed"""


def version() -> str:
    """``qsp <version> (torch X, hls4ml Y, python Z)``; the dependency versions come from the
    installed packages' metadata, so nothing heavy is imported."""
    from importlib.metadata import PackageNotFoundError
    from importlib.metadata import version as dist_version

    from . import __version__

    deps = []
    for name in ("torch", "hls4ml"):
        try:
            deps.append(f"{name} {dist_version(name)}")
        except PackageNotFoundError:
            deps.append(f"{name} not installed")
    deps.append(f"python {sys.version.split()[0]}")
    return f"qsp {__version__} ({', '.join(deps)})"


class _VersionAction(argparse.Action):
    """argparse's ``version`` action, with the string computed only when asked for."""

    def __init__(self, option_strings, dest=argparse.SUPPRESS, default=argparse.SUPPRESS, help=None):
        super().__init__(option_strings, dest=dest, default=default, nargs=0,
                         help=help or "print qsp's version (and torch's, hls4ml's) and exit")

    def __call__(self, parser, namespace, values, option_string=None):
        print(version())
        parser.exit()


def add_version(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """Add ``--version`` to ``parser``."""
    parser.add_argument("--version", action=_VersionAction)
    return parser


def with_exit_status(epilog: str | None) -> str:
    """``epilog`` followed by :data:`EXIT_STATUS`."""
    return f"{epilog.rstrip()}\n\n{EXIT_STATUS}" if epilog else EXIT_STATUS


def build_parser() -> argparse.ArgumentParser:
    doc = __doc__.split("\n\n")
    p = argparse.ArgumentParser(prog="qsp", formatter_class=argparse.RawDescriptionHelpFormatter,
                                description=doc[0].replace("``", "") + "\n\n" + doc[1],
                                epilog=with_exit_status("'qsp STAGE --help' lists the stage's options."))
    add_version(p)
    p.add_argument("stage", choices=list(COMMANDS), metavar="STAGE", help=", ".join(COMMANDS))
    p.add_argument("args", nargs=argparse.REMAINDER, help="the stage's arguments")
    return p


def run(stage: str, argv: list[str]) -> int:
    """Run ``stage``'s entry point with ``argv``; its exit status (argparse's exits included)."""
    module, fn = COMMANDS[stage]
    try:
        rc = getattr(importlib.import_module(module), fn)(argv)
    except SystemExit as e:  # argparse: --help, --version, bad arguments
        if isinstance(e.code, str):
            print(e.code, file=sys.stderr)
        rc = e.code if isinstance(e.code, int) or e.code is None else 1
    return 0 if rc is None else int(rc)


def main(argv=None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] in COMMANDS:  # the stage parses the rest, --help included
        return run(argv[0], argv[1:])
    if not argv:
        build_parser().print_help(sys.stderr)
        return 2
    a = build_parser().parse_args(argv)  # --help, --version, or an unknown stage (exit 2)
    return run(a.stage, a.args)


def cli() -> None:
    sys.exit(main())


if __name__ == "__main__":
    cli()
