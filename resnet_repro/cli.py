"""The `resnet-repro` command."""

import argparse
import sys


def models_command(args: argparse.Namespace) -> None:
    from .analysis.complexity import complexity_table, format_complexity_table

    print(format_complexity_table(complexity_table()))


def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    parser = argparse.ArgumentParser(prog="resnet-repro", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)
    commands.add_parser("models", help="every registered model: layers, parameters, MACs, the paper's values")
    args = parser.parse_args(argv)
    try:
        {"models": models_command}[args.command](args)
    except ValueError as error:
        sys.exit(f"resnet-repro {args.command}: {error}")
