"""The `resnet-repro` command.

    resnet-repro models                                   the registered nets, their params and MACs
    resnet-repro fit --config experiments/cifar10/base.yaml [--model.model resnet56 ...]
    resnet-repro validate|test --config RUN_DIR/config.yaml --ckpt_path RUN_DIR/checkpoints/last.ckpt
    resnet-repro run experiments/cifar10/table6.yaml [--dry-run] [--devices N] [--launcher local|torchrun|slurm]
                     [--parallel N [--gpus 0,1,... --runs-per-gpu K]]   N runs at once (slurm: N array tasks)
    resnet-repro report runs/cifar10-table6 [--out results/cifar10-table6]
    resnet-repro responses runs/demo/*/checkpoints/last.ckpt [--out results/demo-responses]
    resnet-repro bench resnet20 [--device cpu|cuda] [--steps N]
"""

import importlib
import os
import signal
import sys

from .dependencies import unmet_requirement
from .errors import run_as_command

# command -> where its function lives, imported only when that command runs: no command pays for the imports of
# another (`report` loads neither torch nor Lightning)
COMMANDS = {
    "fit": "resnet_repro.train:lightning_command",
    "validate": "resnet_repro.train:lightning_command",
    "test": "resnet_repro.train:lightning_command",
    "models": "resnet_repro.analysis.complexity:models_command",
    "run": "resnet_repro.launch.command:run_experiment",
    "report": "resnet_repro.report.write:report_command",
    "responses": "resnet_repro.analysis.responses:responses_command",
    "bench": "resnet_repro.bench:bench_command",
}
LIGHTNING_COMMANDS = ("fit", "validate", "test")  # LightningCLI reads its subcommand from the arguments


def hang_up_as_sigterm(signum, frame) -> None:
    """A closed terminal or ssh session (SIGHUP, to `run` and its children alike) stops a command as SIGTERM does:
    `run` stops its children and says so, each fit ends between two iterations with its checkpoint and records
    that it was interrupted; by default SIGHUP would kill them all at once, mid-write."""
    os.kill(os.getpid(), signal.SIGTERM)


def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    if signal.getsignal(signal.SIGHUP) is signal.SIG_DFL:  # under nohup it stays ignored
        signal.signal(signal.SIGHUP, hang_up_as_sigterm)
    if not argv or argv[0] in ("-h", "--help"):
        print(__doc__)
        sys.exit(0 if argv else 2)
    command, rest = argv[0], argv[1:]
    if command not in COMMANDS:
        sys.exit(f"resnet-repro: unknown command {command!r}: valid commands are {', '.join(COMMANDS)}")
    if unmet := unmet_requirement():
        sys.exit(unmet)
    module, function = COMMANDS[command].split(":")
    run_as_command(command, getattr(importlib.import_module(module), function),
                [command, *rest] if command in LIGHTNING_COMMANDS else rest)


if __name__ == "__main__":  # `python -m resnet_repro.cli`: how torchrun and the local launcher start a run
    main()
