"""Argument types of the `fetchml` command line: IDs, numbers, step ranges, and HEAD."""

import argparse
import string
import subprocess
import sys

from fetchml.protocol.rules import CLI_PRIORITY_MAX, CLI_PRIORITY_MIN

from .errors import InvalidRequest
from .models import MAX_STEP, commit_hex

HEAD = "HEAD"
MIN_PREFIX = 6


def commit(text: str) -> str:
    """40 hex characters (lowercased), HEAD, or a lowercase prefix of 6..39 hex characters;
    main() resolves the last two."""
    if text == HEAD:
        return text
    low = text.strip().lower()
    if MIN_PREFIX <= len(low) < 40 and all(c in string.hexdigits for c in low):
        return low
    try:
        return commit_hex(text)
    except InvalidRequest:
        raise argparse.ArgumentTypeError(
            f"commit must be 40 hex characters, a unique prefix of {MIN_PREFIX} or more, "
            f"or HEAD; got {text!r}"
        ) from None


def int_in(text: str, low: int, high: int, message: str) -> int:
    """An integer in low..high, else an argparse error: `message` then the text given."""
    try:
        number = int(text)
    except ValueError:
        number = low - 1
    if not low <= number <= high:
        raise argparse.ArgumentTypeError(f"{message}, got {text!r}")
    return number


def priority(text: str) -> int:
    low, high = CLI_PRIORITY_MIN, CLI_PRIORITY_MAX
    return int_in(text, low, high, f"priority must be an integer {low}..{high}")


def positive(text: str) -> int:
    return int_in(text, 1, sys.maxsize, "expected a positive integer")


def count(text: str) -> int:
    return int_in(text, 0, sys.maxsize, "expected an integer >= 0")


def prune_value(text: str) -> int:
    return int_in(text, 1, 0xFFFFFFFF, "expected an integer 1..4294967295")


def seconds(text: str) -> float:
    seconds = value(text)
    if not 0 <= seconds <= 3600:
        raise argparse.ArgumentTypeError(f"expected seconds 0..3600, got {text!r}")
    return seconds


def step(text: str) -> int:
    return int_in(text, 0, MAX_STEP, f"step must be an integer 0..{MAX_STEP}")


def steps(text: str) -> tuple[int, int]:
    """A:B, A: (to the end), :B (from 0), or A (exactly A)."""
    low, sep, high = text.partition(":")
    start = step(low) if low else 0
    end = (step(high) if high else MAX_STEP) if sep else start
    if start > end:
        raise argparse.ArgumentTypeError(f"empty step range {text!r}")
    return start, end


def value(text: str) -> float:
    try:
        return float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None


def git_head(context: str) -> str:
    """`git rev-parse HEAD` in the current directory; errors start with `context`."""
    try:
        done = subprocess.run(
            ["git", "rev-parse", "HEAD"], capture_output=True, text=True, check=False
        )
    except OSError as exc:
        raise InvalidRequest(f"{context} and git is not available: {exc}") from None
    if done.returncode != 0:
        why = done.stderr.strip().splitlines()[-1] if done.stderr.strip() else "failed"
        raise InvalidRequest(f"{context} and `git rev-parse HEAD` failed: {why}")
    return commit_hex(done.stdout.strip())
