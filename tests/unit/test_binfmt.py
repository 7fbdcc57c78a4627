"""binfmt_misc detection (tools/launcher/binfmt.py): handler files in the kernel's format in a
temporary folder, the real /proc/sys/fs/binfmt_misc when this machine has it, and the launcher's
platform names from the one table (lib/architectures.py)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from pbuild.lib.platforms import Platform, host_platform
from pbuild.tools.launcher import binfmt
from pbuild.tools.launcher.errors import EXIT_LAUNCHER, LauncherError

# Debian bookworm's qemu-user-static registration, as the kernel prints it.
DEBIAN_AARCH64 = """enabled
interpreter /usr/libexec/qemu-binfmt/aarch64-binfmt-P
flags: PF
offset 0
magic 7f454c460201010000000000000000000200b700
mask ffffffffffffff00fffffffffffffffffeffffff
"""
# 32-bit ARM: another machine, must not count for aarch64.
DEBIAN_ARM = """enabled
interpreter /usr/libexec/qemu-binfmt/arm-binfmt-P
flags: PF
offset 0
magic 7f454c4601010100000000000000000002002800
mask ffffffffffffff00fffffffffffffffffeffffff
"""
WINE = "enabled\ninterpreter /usr/bin/wine\nflags: \nextension .exe\n"  # the kernel's "flags: " has a space


def binfmt_dir(tmp_path: Path, entries: dict[str, str], status: str = "enabled") -> str:
    """A folder laid out as a binfmt_misc mount: ``status``, ``register`` and one file per handler."""
    folder = tmp_path / "binfmt_misc"
    folder.mkdir(parents=True)
    (folder / "status").write_text(status + "\n")
    (folder / "register").write_text("")
    for name, text in entries.items():
        (folder / name).write_text(text)
    return str(folder)


def test_debians_handler_with_f_runs_aarch64(tmp_path: Path) -> None:
    found = binfmt.check("aarch64", binfmt_dir(tmp_path, {"qemu-aarch64": DEBIAN_AARCH64, "qemu-arm": DEBIAN_ARM,
                                                          "wine": WINE}))
    assert found.problem is None
    (handler,) = found.handlers
    assert handler.name == "qemu-aarch64" and handler.fix_binary and handler.flags == "PF"
    assert handler.interpreter == "/usr/libexec/qemu-binfmt/aarch64-binfmt-P"


@pytest.mark.parametrize(("entries", "status", "problem", "hint"), [
    ({"qemu-aarch64": DEBIAN_AARCH64.replace("flags: PF", "flags: P")}, "enabled",
     "the binfmt_misc handler qemu-aarch64 (/usr/libexec/qemu-binfmt/aarch64-binfmt-P, flags P) lacks the F flag: the "
     "kernel would look for /usr/libexec/qemu-binfmt/aarch64-binfmt-P inside the container, which has none",
     "register it again with the F flag; as root:"),
    ({"aarch64": DEBIAN_AARCH64.replace("flags: PF", "flags: ")}, "enabled",
     "the binfmt_misc handler aarch64 (/usr/libexec/qemu-binfmt/aarch64-binfmt-P, flags none) lacks the F flag",
     "echo -1 > {dir}/aarch64"),
    ({"qemu-aarch64": DEBIAN_AARCH64.replace("enabled", "disabled", 1)}, "enabled",
     "the binfmt_misc handler qemu-aarch64 for aarch64 programs is disabled", "echo 1 > {dir}/qemu-aarch64"),
    ({"qemu-arm": DEBIAN_ARM, "wine": WINE}, "enabled",
     "no binfmt_misc handler for aarch64 programs is registered in {dir}", "apt-get install qemu-user-static"),
    ({"qemu-aarch64": DEBIAN_AARCH64}, "disabled",
     "binfmt_misc is turned off ({dir}/status says disabled)", "echo 1 > {dir}/status"),
])
def test_what_stands_in_the_way(tmp_path: Path, entries: dict[str, str], status: str, problem: str,
                                hint: str) -> None:
    directory = binfmt_dir(tmp_path, entries, status)
    found = binfmt.check("aarch64", directory)
    assert found.problem is not None and found.problem.startswith(problem.format(dir=directory)), found.problem
    assert hint.format(dir=directory) in found.hint, found.hint


def test_not_mounted_says_how_to_mount_and_register(tmp_path: Path) -> None:
    missing = str(tmp_path / "nowhere")
    found = binfmt.check("aarch64", missing)
    assert found.problem == f"binfmt_misc is not mounted at {missing}"
    lines = [line.strip() for line in found.hint.splitlines()]
    assert lines[0] == "install qemu-user-static and register its handler with the F flag; as root:"
    assert lines[1:] == ["apt-get install qemu-user-static", *binfmt.setup_commands("aarch64", missing)]
    assert lines[2] == f"mountpoint -q {missing} || mount -t binfmt_misc binfmt_misc {missing}"
    assert lines[-1].startswith("echo ':qemu-aarch64:M:0:") and lines[-1].endswith(f"' > {missing}/register")


def test_require_names_the_platform_with_the_launchers_exit_code(tmp_path: Path) -> None:
    directory = binfmt_dir(tmp_path, {"qemu-arm": DEBIAN_ARM})
    with pytest.raises(LauncherError) as caught:
        binfmt.require(Platform.parse("linux/arm64"), what="--platform linux/arm64: ", directory=directory)
    assert caught.value.exit_code == EXIT_LAUNCHER
    assert caught.value.message == (f"--platform linux/arm64: this machine ({host_platform()}) can run linux/arm64 "
                                    f"containers only under emulation, and no binfmt_misc handler for aarch64 "
                                    f"programs is registered in {directory}")
    fine = binfmt.require(Platform.parse("linux/arm64"), directory=binfmt_dir(tmp_path / "ok", {"a": DEBIAN_AARCH64}))
    assert fine.problem is None


def test_matching_is_the_kernels(tmp_path: Path) -> None:
    """``(byte ^ magic) & mask == 0`` from the offset; no mask: every bit; extensions never match."""
    exe, pie = binfmt.elf_header("aarch64", 2), binfmt.elf_header("aarch64", 3)
    debian = binfmt.parse_entry("qemu-aarch64", DEBIAN_AARCH64)
    assert debian.matches(exe) and debian.matches(pie)
    assert not debian.matches(binfmt.elf_header("x86_64")) and not binfmt.parse_entry("a", DEBIAN_ARM).matches(exe)
    exact = debian._replace(mask=b"")  # e_type 2 only, OS/ABI 0 only
    assert exact.matches(exe) and not exact.matches(pie)
    shifted = debian._replace(offset=18, magic=b"\xb7\x00", mask=b"")
    assert shifted.matches(exe) and not shifted.matches(exe[:19])
    assert not binfmt.parse_entry("wine", WINE).matches(exe)
    # an exec-only handler still serves the platform (static busybox is ET_EXEC)
    only_exec = DEBIAN_AARCH64.replace("mask ffffffffffffff00fffffffffffffffffeffffff",
                                       "mask ffffffffffffff00ffffffffffffffffffffffff")
    assert binfmt.check("aarch64", binfmt_dir(tmp_path, {"x": only_exec})).problem is None


def test_elf_header_is_this_machines_own_format() -> None:
    """The header built for this machine agrees with a real program of it (the Python running us)."""
    real = Path(os.path.realpath(sys.executable)).read_bytes()[:64]
    ours = binfmt.elf_header(host_platform().machine, real[16])
    assert ours[:7] == real[:7] and ours[16:20] == real[16:20]
    assert len(ours) == 64 and ours[52:54] == real[52:54]  # e_ehsize


def test_register_line_decodes_to_a_handler_for_aarch64() -> None:
    """The line the hint and .ci/install write, decoded as the kernel does, matches aarch64 programs only."""
    line = binfmt.register_line("aarch64")
    _, name, kind, offset, magic, mask, interpreter, flags = line.split(":")
    assert (name, kind, offset) == ("qemu-aarch64", "M", "0") and "F" in flags
    assert interpreter in (binfmt.DEBIAN_P_INTERPRETER.format(machine="aarch64"),
                           binfmt.STATIC_INTERPRETER.format(machine="aarch64"))
    assert ("P" in flags) == interpreter.endswith("-binfmt-P")  # argv[0] handling as the interpreter expects

    def decode(escaped: str) -> bytes:
        return bytes(int(part, 16) for part in escaped.split("\\x")[1:])

    handler = binfmt.Handler(name, True, interpreter, flags, 0, decode(magic), decode(mask))
    assert handler.matches(binfmt.elf_header("aarch64", 2)) and handler.matches(binfmt.elf_header("aarch64", 3))
    assert not handler.matches(binfmt.elf_header("x86_64"))
    assert handler.magic == binfmt.parse_entry("x", DEBIAN_AARCH64).magic
    assert handler.mask == binfmt.parse_entry("x", DEBIAN_AARCH64).mask


def test_this_machines_binfmt_misc_reads() -> None:
    """The real folder, when mounted: every entry parses, and the verdict agrees with its files."""
    found = binfmt.read_handlers()
    if not found.mounted:
        pytest.skip(f"binfmt_misc is not mounted at {binfmt.BINFMT_DIR}")
    names = sorted(set(os.listdir(binfmt.BINFMT_DIR)) - {"status", "register"})
    assert [h.name for h in found.handlers] == names
    for handler in found.handlers:
        text = Path(binfmt.BINFMT_DIR, handler.name).read_text()
        assert handler.enabled == text.startswith("enabled")
        assert handler.extension or (handler.magic and (not handler.mask or len(handler.mask) == len(handler.magic)))
        assert f"flags: {handler.flags}" in text
    verdict = binfmt.check("aarch64")
    usable = [h for h in found.handlers if h.enabled and h.matches(binfmt.elf_header("aarch64"))]
    assert (verdict.problem is None) == (found.enabled and bool(usable) and all(h.fix_binary for h in usable))


def test_the_launchers_host_platform_is_lib_platforms() -> None:
    from pbuild.tools.launcher.hostplatform import host_platform as launcher_host

    assert launcher_host() == str(host_platform())
    assert Platform.parse(launcher_host()).machine == os.uname().machine or host_platform().architecture not in (
        "amd64", "arm64")


def test_the_option_parser_stays_import_light() -> None:
    """``pbuild run``'s options load neither the platforms records (dataclasses) nor binfmt."""
    code = ("import sys, pbuild.tools.launcher.options as o; o.checked_platform(None); "
            "o.checked_platform(o.host_platform()); "
            "print(sorted(m for m in ('dataclasses', 'pbuild.lib.platforms', 'pbuild.tools.launcher.binfmt') "
            "if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


def test_an_unknown_platform_is_refused() -> None:
    from pbuild.tools.launcher.options import checked_platform

    for text in ("linux/s390x", "windows/amd64", "arm64"):
        with pytest.raises(LauncherError) as caught:
            checked_platform(text)
        assert caught.value.message == f"--platform {text}: not a platform pbuild runs"
        assert "or leave --platform out" in (caught.value.hint or "")
    assert checked_platform(str(host_platform())) == str(host_platform())
