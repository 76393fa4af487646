"""The options of the commands that parse their own (run, report, responses, bench): a parser whose refusals end
in one line like every other error, and the one type of their counts, bounded where they are parsed."""

import argparse


class OptionParser(argparse.ArgumentParser):
    def error(self, message: str):
        # argparse prints its usage and exits; the command's one line says what is wrong and where to look instead
        raise ValueError(f"{message} ({self.prog} --help lists the options)")


def count(text: str) -> int:
    """A whole number, 1 or more: how many nodes, devices, runs, steps or images (0 or fewer would be written into
    a script, silently replaced by a default, or fail deep in the code)."""
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number, 1 or more")
    return value
