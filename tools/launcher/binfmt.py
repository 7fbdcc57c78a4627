"""Can this machine run another architecture's programs in a container? binfmt_misc says.

The kernel runs a program of a foreign architecture through the binfmt_misc handler whose magic
matches the program's first bytes (for an ELF file: its class, byte order and ``e_machine``): it
starts the handler's interpreter, here qemu-user-static, with the program's path. Inside a
container the interpreter's path means nothing (the image has no qemu), so the handler must carry
the F ("fix binary") flag: the kernel opened the interpreter when the handler was registered and
uses that open file in every mount namespace.

Each handler is a file of ``/proc/sys/fs/binfmt_misc`` in the kernel's format::

    enabled
    interpreter /usr/libexec/qemu-binfmt/aarch64-binfmt-P
    flags: PF
    offset 0
    magic 7f454c460201010000000000000000000200b700
    mask ffffffffffffff00fffffffffffffffffeffffff

The directory is a parameter throughout, so tests read entries written in this format. The kernel
matches ``(byte ^ magic) & mask == 0`` for each byte from ``offset``; :meth:`Handler.matches` does
the same against the header of an ELF executable (and of a position-independent one) of the
architecture, as the kernel would see it.
"""

from __future__ import annotations

import os
import struct
from typing import TYPE_CHECKING, NamedTuple

from pbuild.tools.launcher.errors import LauncherError

if TYPE_CHECKING:
    from pbuild.lib.platforms import Platform

BINFMT_DIR = "/proc/sys/fs/binfmt_misc"
#: ELF ``e_machine`` by ``uname -m`` name (the ELF specification's numbers).
ELF_MACHINES = {"x86_64": 0x3E, "aarch64": 0xB7}
_ET_EXEC, _ET_DYN = 2, 3
#: Debian's qemu-user-static: the -P name makes qemu take the kernel's extra argv0 (flag P).
DEBIAN_P_INTERPRETER = "/usr/libexec/qemu-binfmt/{machine}-binfmt-P"
STATIC_INTERPRETER = "/usr/bin/qemu-{machine}-static"


class Handler(NamedTuple):
    """One registered binfmt_misc handler (a file of the binfmt_misc directory)."""

    name: str
    enabled: bool
    interpreter: str
    flags: str
    offset: int = 0
    magic: bytes = b""
    mask: bytes = b""
    """Empty: every bit of the magic counts."""
    extension: str = ""
    """An extension handler (``E``) matches file names, not contents: never an ELF program."""

    @property
    def fix_binary(self) -> bool:
        """F: the interpreter was opened at registration, so it works in any mount namespace."""
        return "F" in self.flags

    def matches(self, header: bytes) -> bool:
        """Would the kernel hand a file starting with ``header`` to this handler (if enabled)?"""
        if self.extension or not self.magic or self.offset + len(self.magic) > len(header):
            return False
        mask = self.mask or b"\xff" * len(self.magic)
        window = header[self.offset:self.offset + len(self.magic)]
        return all((b ^ m) & k == 0 for b, m, k in zip(window, self.magic, mask, strict=True))


def parse_entry(name: str, text: str) -> Handler:
    """A handler from the text of its binfmt_misc file."""
    lines = text.splitlines()
    fields: dict[str, str] = {}
    for line in lines[1:]:
        key, _, value = line.partition(" ")
        fields[key.rstrip(":")] = value.strip()
    return Handler(
        name=name,
        enabled=bool(lines) and lines[0].strip() == "enabled",
        interpreter=fields.get("interpreter", ""),
        flags=fields.get("flags", ""),
        offset=int(fields.get("offset", "0") or 0),
        magic=bytes.fromhex(fields.get("magic", "")),
        mask=bytes.fromhex(fields.get("mask", "")),
        extension=fields.get("extension", ""),
    )


class Handlers(NamedTuple):
    """What a binfmt_misc directory holds: mounted or not, on or off, and its handlers."""

    directory: str
    mounted: bool
    enabled: bool
    handlers: tuple[Handler, ...]


def read_handlers(directory: str = BINFMT_DIR) -> Handlers:
    """Every handler of ``directory`` (a binfmt_misc mount: it has ``status`` and ``register``)."""
    try:
        with open(os.path.join(directory, "status")) as f:
            status = f.read().strip()
        names = sorted(os.listdir(directory))
    except OSError:
        return Handlers(directory, False, False, ())
    handlers = []
    for name in names:
        if name in ("status", "register"):
            continue
        try:
            with open(os.path.join(directory, name)) as f:
                text = f.read()
        except OSError:  # removed meanwhile, or not readable: not a handler this user can see
            continue
        try:
            handlers.append(parse_entry(name, text))
        except ValueError:  # not the kernel's format: not a handler
            continue
    return Handlers(directory, True, status == "enabled", tuple(handlers))


def elf_header(machine: str, e_type: int = _ET_EXEC) -> bytes:
    """The 64-byte header of a little-endian 64-bit ELF program for ``machine`` (``aarch64``)."""
    ident = b"\x7fELF" + bytes([2, 1, 1, 0]) + bytes(8)  # ELFCLASS64, ELFDATA2LSB, EV_CURRENT, SYSV
    return struct.pack("<16sHHIQQQIHHHHHH", ident, e_type, ELF_MACHINES[machine], 1, 0, 64, 0, 0, 64, 56, 1, 64, 0, 0)


class Emulation(NamedTuple):
    """The answer for one architecture: the handler(s) that would run its programs, or why none."""

    machine: str
    handlers: tuple[Handler, ...]
    """The enabled handlers matching the architecture's ELF programs (fixed or not)."""
    problem: str | None
    """None: a container can run the architecture's programs; else what stands in the way."""
    hint: str


def check(machine: str, directory: str = BINFMT_DIR) -> Emulation:
    """Can programs for ``machine`` (``aarch64``) run in a container here, and if not, why?"""
    found = read_handlers(directory)
    if not found.mounted:
        return Emulation(machine, (), f"binfmt_misc is not mounted at {directory}",
                         _commands("install qemu-user-static and register its handler with the F flag",
                                   ["apt-get install qemu-user-static", *setup_commands(machine, directory)]))
    if not found.enabled:
        return Emulation(machine, (), f"binfmt_misc is turned off ({directory}/status says disabled)",
                         _commands("turn it on", [f"echo 1 > {directory}/status"]))
    headers = [elf_header(machine, _ET_EXEC), elf_header(machine, _ET_DYN)]
    matching = [h for h in found.handlers if any(h.matches(header) for header in headers)]
    enabled = tuple(h for h in matching if h.enabled)
    if not enabled:
        if matching:
            return Emulation(machine, (), f"the binfmt_misc handler {matching[0].name} for {machine} programs "
                             "is disabled", _commands("enable it", [f"echo 1 > {directory}/{matching[0].name}"]))
        return Emulation(machine, (), f"no binfmt_misc handler for {machine} programs is registered in {directory}",
                         _commands("install qemu-user-static and register its handler with the F flag",
                                   ["apt-get install qemu-user-static", *setup_commands(machine, directory)]))
    unfixed = [h for h in enabled if not h.fix_binary]
    if unfixed:
        h = unfixed[0]
        removal = [] if h.name == f"qemu-{machine}" else [f"echo -1 > {directory}/{h.name}"]
        return Emulation(machine, enabled,
                         f"the binfmt_misc handler {h.name} ({h.interpreter}, flags {h.flags or 'none'}) lacks the "
                         f"F flag: the kernel would look for {h.interpreter} inside the container, which has none",
                         _commands("register it again with the F flag", [*removal, *setup_commands(machine, directory)]))
    return Emulation(machine, enabled, None, "")


def _commands(what: str, lines: list[str]) -> str:
    return f"{what}; as root:\n" + "\n".join(f"      {line}" for line in lines)


def register_line(machine: str) -> str:
    """The ``register`` line of an F handler for ``machine``, in the kernel's ``:name:M:offset:magic:mask:interpreter:flags``
    form (the kernel decodes the ``\\x`` escapes itself): Debian's -P interpreter with PF when
    it is installed, else the plain static qemu with F. The mask lets ``e_type`` be EXEC or DYN
    and ignores the OS/ABI byte, as Debian's does."""
    magic = elf_header(machine)[:20]
    mask = b"\xff" * 7 + b"\x00" + b"\xff" * 8 + b"\xfe\xff\xff\xff"
    escaped = "".join(f"\\x{b:02x}" for b in magic), "".join(f"\\x{b:02x}" for b in mask)
    debian = DEBIAN_P_INTERPRETER.format(machine=machine)
    interpreter, flags = (debian, "PF") if os.path.exists(debian) else (STATIC_INTERPRETER.format(machine=machine), "F")
    return f":qemu-{machine}:M:0:{escaped[0]}:{escaped[1]}:{interpreter}:{flags}"


def setup_commands(machine: str, directory: str = BINFMT_DIR) -> list[str]:
    """The shell commands (for root) that mount binfmt_misc if needed and (re-)register
    ``qemu-<machine>`` with the F flag; they can be run again."""
    entry = f"{directory}/qemu-{machine}"
    return [f"mountpoint -q {directory} || mount -t binfmt_misc binfmt_misc {directory}",
            f"if [ -e {entry} ]; then echo -1 > {entry}; fi",
            f"echo '{register_line(machine)}' > {directory}/register"]


def require(platform: Platform, *, what: str = "", directory: str = BINFMT_DIR) -> Emulation:
    """:func:`check` for ``platform``'s programs, raising a :class:`LauncherError` (that starts
    with ``what``, e.g. the option or the image) when they cannot run in a container here."""
    from pbuild.lib.platforms import host_platform

    emulation = check(platform.machine, directory)
    if emulation.problem is not None:
        raise LauncherError(f"{what}this machine ({host_platform()}) can run {platform} containers only under "
                            f"emulation, and {emulation.problem}", hint=emulation.hint)
    return emulation
