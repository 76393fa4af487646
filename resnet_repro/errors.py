"""How every command ends on a known failure: one line saying what is wrong and how to fix it, and a non-zero exit."""

import errno
import re
import sys
from typing import Callable


class AlreadyFinished(Exception):
    """`fit` on a run that has nothing left to train: said in one line, exit 0, nothing touched."""


def loaded_class(module: str, name: str) -> type | None:
    """A third-party exception class, if its library is loaded: one that is not loaded raised nothing, and a
    command that does not use it should not pay to import it."""
    return getattr(sys.modules.get(module), name, None)


def innermost(message: str) -> str:
    """jsonargparse nests the error of a data module's argument in the Union of data modules; say only the key
    and the reason: `data.init_args.batch_size: Not of type PositiveInt: ...`."""
    nested = re.search(r'Parser key "(\w+)": Does not validate against any of the Union subtypes .*? class_path '
                       r"'[\w.]+': (?:Parser key \"(\w+)\": )?(.*?) - Expected", message)
    if not nested:
        return message
    return f"{nested[1]}.init_args.{nested[2]}: {nested[3]}" if nested[2] else f"{nested[1]}: {nested[3]}"


def run_as_command(command: str, function: Callable[[list[str]], None], argv: list[str]) -> None:
    """`function(argv)` as the command `resnet-repro COMMAND`: a known failure exits with its one line."""
    try:
        function(argv)
    except AlreadyFinished as done:
        print(f"resnet-repro {command}: {done}")
    except (ValueError, FileNotFoundError, NotADirectoryError, FloatingPointError) as error:
        sys.exit(f"resnet-repro {command}: {one_line(error)}")
    except OSError as error:  # a full disk, a folder that cannot be written: what the system said, on which file
        where = f" ({error.filename})" if error.filename else ""
        advice = (": free some space, then the same command goes on from the last checkpoint"
                  if error.errno == errno.ENOSPC else "")
        sys.exit(f"resnet-repro {command}: {error.strerror or error}{where}{advice}")
    except BaseException as error:
        argument_error = loaded_class("jsonargparse", "ArgumentError")
        if argument_error and isinstance(error, argument_error):
            sys.exit(f"resnet-repro {command}: {innermost(one_line(error))} (resnet-repro {command} --help lists the "
                     f"valid keys)")
        sigterm = loaded_class("lightning.pytorch.utilities.exceptions", "SIGTERMException")
        if isinstance(error, KeyboardInterrupt) or sigterm and isinstance(error, sigterm):
            sys.exit(f"resnet-repro {command}: stopped by "
                     f"{'Ctrl-C' if isinstance(error, KeyboardInterrupt) else 'SIGTERM'}; a run keeps its last "
                     f"checkpoint, and the same command resumes it")
        raise


def one_line(error: BaseException) -> str:
    text = str(error)
    if "\nOriginal Traceback" in text:  # raised in a DataLoader worker: the error is the traceback's last line
        text = text.strip().splitlines()[-1].split(": ", 1)[-1]
    return " ".join(text.split())  # one line, whatever the source of the message
