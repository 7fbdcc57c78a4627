"""Docker's order on a command line: ``[OPTIONS] OPERAND [COMMAND] [ARG...]``.

``pbuild run`` and ``pbuild exec`` take their own options, then one operand (a target, an image
or a container), then a command that is passed on verbatim however much it looks like options.
argparse cannot say where its options stop (``REMAINDER`` and ``parse_intermixed_args`` both
read options after the operand), so :func:`split_at_operand` scans for it, by the same rules
argparse then applies to the words before it: long options with ``=VALUE`` or a separate value,
short options with the value attached (``-eX``, ``-e=X``) or separate, and clusters of short
flags (``-it``, ``-dit``, ``-ite X``). Which options take a value is read from the parser
itself, so the scan and the parser cannot disagree.
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence


class CommandLine:
    """A command line cut at its operand.

    A plain class rather than a NamedTuple: this module is on ``pbuild run``'s no-op path, and
    making a NamedTuple class costs more at import than this whole module otherwise.
    """

    __slots__ = ("options", "operand", "rest", "given")

    def __init__(self, options: tuple[str, ...], operand: str | None, rest: tuple[str, ...],
                 given: tuple[str, ...] = ()) -> None:
        self.options = options  # the words before the operand (without a ``--`` that ended them)
        self.operand = operand  # None: there was none
        self.rest = rest  # every word after the operand, verbatim
        self.given = given  # the known options among ``options``, by their longest name, once each

    def _key(self) -> tuple[object, ...]:
        return (self.options, self.operand, self.rest, self.given)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, CommandLine) and self._key() == other._key()

    def __hash__(self) -> int:
        return hash(self._key())

    def __repr__(self) -> str:
        return "CommandLine({!r}, {!r}, {!r}, {!r})".format(*self._key())


class OptionTable:
    """The option strings of a parser: whether each takes a value, and each one's longest name
    (``-e`` -> ``--env``), which names it in messages."""

    __slots__ = ("takes_value", "names")

    def __init__(self, takes_value: dict[str, bool], names: dict[str, str]) -> None:
        self.takes_value = takes_value
        self.names = names

    @classmethod
    def of(cls, parser: argparse.ArgumentParser) -> OptionTable:
        """The table of ``parser``, which must not allow abbreviations (``--ent`` for
        ``--entrypoint``: the scan would not know it) nor optional values (``nargs="?"``: a word
        after it could be its value or the operand)."""
        if parser.allow_abbrev:
            raise ValueError(f"{parser.prog}: the parser must be made with allow_abbrev=False")
        table: dict[str, bool] = {}
        names: dict[str, str] = {}
        for action in actions_of(parser):
            if action.nargs in ("?", "*", "+", argparse.REMAINDER) and action.option_strings:
                raise ValueError(f"{parser.prog}: option {action.option_strings[0]} takes {action.nargs!r} values")
            for option in action.option_strings:
                table[option] = action.nargs != 0
                names[option] = max(action.option_strings, key=len)
        return cls(table, names)

    def option_of(self, word: str) -> str | None:
        """The option ``word`` starts with (``--env=X`` -> ``--env``, ``-it`` -> ``-i``), if
        it is one of the table's; None for an operand or an unknown option."""
        if not word.startswith("-") or word in ("-", "--"):
            return None
        if word.startswith("--"):
            name = word.partition("=")[0]
            return name if name in self.takes_value else None
        if word in self.takes_value:
            return word
        first = word[:2]
        return first if first in self.takes_value else None


def actions_of(parser: argparse.ArgumentParser) -> list[argparse.Action]:
    """Every action of ``parser`` (argparse has no public list; ``_actions`` has held them since 2.7)."""
    return list(parser._actions)


def split_at_operand(table: OptionTable, argv: Sequence[str]) -> CommandLine:
    """Cut ``argv`` at its first operand: the first word that is neither an option nor an
    option's value (or the word after ``--``). Unknown options are kept among the options, for
    the parser to report."""
    given: dict[str, None] = {}  # ordered, once each
    i = 0
    while i < len(argv):
        word = argv[i]
        if word == "--":
            operand = argv[i + 1] if i + 1 < len(argv) else None
            return CommandLine(tuple(argv[:i]), operand, tuple(argv[i + 2:]), tuple(given))
        if not word.startswith("-") or word == "-":
            return CommandLine(tuple(argv[:i]), word, tuple(argv[i + 1:]), tuple(given))
        options, takes_next = _read_option_word(table, word)
        given.update((table.names[o], None) for o in options)
        i += 1 + takes_next
    return CommandLine(tuple(argv), None, (), tuple(given))


def _read_option_word(table: OptionTable, word: str) -> tuple[list[str], bool]:
    """The known options in the option word ``word``, and whether the next word is the value
    of the last of them."""
    takes = table.takes_value
    if word.startswith("--") or word in takes:
        name, eq, _ = word.partition("=")
        return ([name], bool(takes[name]) and not eq) if name in takes else ([], False)
    head = word.partition("=")[0]
    if head in takes:  # -e=X: the value is attached
        return [head], False
    # A cluster of short options, as argparse reads it: flags until one that takes a value,
    # whose value is the rest of the word, or the next word when nothing is left.
    found: list[str] = []
    for k in range(1, len(word)):
        flag = "-" + word[k]
        if flag not in takes:
            return found, False  # unknown: the parser reports it
        found.append(flag)
        if takes[flag]:
            return found, k == len(word) - 1
    return found, False


def strip_command(table: OptionTable, rest: Sequence[str]) -> tuple[tuple[str, ...], str | None]:
    """The command after an image or container: one leading ``--`` dropped (Bazel's habit).
    Also the option of the table its first word is, if any, when no ``--`` came first: in
    Docker's order that word is the command's, but it is far likelier an option given after
    the image (the old order), which the caller refuses."""
    if list(rest[:1]) == ["--"]:
        return tuple(rest[1:]), None
    first = table.option_of(rest[0]) if rest else None
    return tuple(rest), first


def misplaced_option_message(option: str, word: str, kind: str, usage: str) -> tuple[str, str]:
    """The message and hint that refuse ``word`` (which starts with the option ``option``)
    given after the operand, a ``kind`` ("image", "container")."""
    return (
        f"{word} after the {kind}: options go before the {kind} ({usage})",
        f"move {option} before the {kind}; if the command really starts with {word}, put -- before it",
    )
