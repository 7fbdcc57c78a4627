"""One sandbox plan, two backends: the bwrap arguments are translated from the same ``nsops``
operations the fork backend applies, so both show an action the same tree and mount table."""

from __future__ import annotations

import dataclasses
import subprocess
from pathlib import Path

import pytest
from pbuild.tools.sandbox import SandboxRequest, linux, nsops, run_sandboxed
from pbuild.tools.sandbox.bwrap import NotExpressible, command_line, find_bwrap, translate
from pbuild.tools.sandbox.plan import plan

from tests.support.hosttree import build_tree
from tests.support.paths import REPO

ENV = {"PATH": "/usr/bin:/bin", "LANG": "C.UTF-8", "HOME": "/tmp"}
needs_bwrap = pytest.mark.skipif(find_bwrap() is None, reason="bubblewrap is not installed")
# A host folder outside /tmp (an action gets a /tmp of its own, so a hidden path below it is never
# mounted: the repository may be cloned there) that no probe command needs.
HIDDEN = "/usr/share/doc"

# What the action can see of its sandbox: every mount (its point, its own options, its type)
# and each path with its type and mode. /proc and /sys are the kernel's; /dev is compared apart.
PROBE = r"""
while read -r _ _ _ _ point options rest; do
  case "$point" in /dev/*|/dev) continue ;; esac
  depth=$(printf %s "$point" | tr -cd / | wc -c)
  case "$point" in /execroot*|$KEEP) ;; *) [ "$depth" -le 1 ] || continue ;; esac
  echo "mount $point $options ${rest#*- }" | cut -d' ' -f1-4
done < /proc/self/mountinfo | sort
find / $FIND_DEPTH \( -path /proc -o -path /sys -o -path /dev \) -prune -o -printf 'path %p %y %m\n' \
  2>/dev/null | sort
find /execroot /tmp /run -printf 'path %p %y %m\n' | sort
ls -A /dev | sed 's/^/dev /'
"""


def _probe(tmp: Path, backend: str, *, root: str | None, keep: str, depth: str) -> list[str]:
    exec_root = tmp / "execroot"
    (exec_root / "pkg" / "out").mkdir(parents=True, exist_ok=True)
    (exec_root / "pkg" / "in.txt").write_text("declared input\n")
    request = SandboxRequest(
        argv=("/bin/sh", "-c", PROBE),
        env={**ENV, "KEEP": keep, "FIND_DEPTH": depth},
        exec_root=str(exec_root),
        writable_dirs=("pkg/out",),
        workdir="pkg",
        hide_paths=(HIDDEN, str(REPO / "tests"), str(REPO / "pyproject.toml")),
        stdout_path=str(tmp / f"{backend}.out"),
        stderr_path=str(tmp / f"{backend}.err"),
        root=root,
        backend=backend,
    )
    result = run_sandboxed(request)
    assert (result.exit_code, result.error) == (0, None), (tmp / f"{backend}.err").read_text()
    return (tmp / f"{backend}.out").read_text().splitlines()


def _compare(fork: list[str], bwrap: list[str]) -> None:
    fork_dev = {line for line in fork if line.startswith("dev ")}
    bwrap_dev = {line for line in bwrap if line.startswith("dev ")}
    assert [line for line in fork if not line.startswith("dev ")] == [
        line for line in bwrap if not line.startswith("dev ")
    ]
    # bwrap's own /dev (--dev) has what the plan's DevTree makes, plus its pty and core links.
    assert fork_dev <= bwrap_dev
    assert bwrap_dev - fork_dev <= {"dev ptmx", "dev core", "dev console"}
    assert any(line.startswith("mount /execroot ro,nosuid,nodev") for line in fork), fork


@needs_bwrap
def test_both_backends_show_the_same_toolchain_root(tmp_path: Path) -> None:
    """On a toolchain root: the same paths, types and modes and the same mounts under both."""
    tree = str(build_tree(tmp_path / "tree", ("bash", "cat", "ls", "find", "sort", "tr", "wc", "cut", "sed")))
    fork = _probe(tmp_path, "fork", root=tree, keep="/execroot", depth="")
    bwrap = _probe(tmp_path, "bwrap", root=tree, keep="/execroot", depth="")
    assert "path /tmp d 1777" in fork and "path /usr/bin/sh l 777" in fork
    assert any(line.startswith("mount /execroot/pkg/out rw,") for line in fork), fork
    _compare(fork, bwrap)


@needs_bwrap
def test_both_backends_show_the_same_host_root(tmp_path: Path) -> None:
    """On the host's root with hidden paths: the same top of the tree and the same mounts
    (those of the plan; the host's own submounts below its top-level folders are left out)."""
    fork = _probe(tmp_path, "fork", root=None, keep=HIDDEN, depth="-maxdepth 1")
    bwrap = _probe(tmp_path, "bwrap", root=None, keep=HIDDEN, depth="-maxdepth 1")
    assert any(line.startswith(f"mount {HIDDEN} ro,") for line in fork), fork
    _compare(fork, bwrap)


def _request(tmp: Path, **overrides: object) -> SandboxRequest:
    (tmp / "execroot" / "out").mkdir(parents=True, exist_ok=True)
    fields: dict[str, object] = dict(
        argv=("/bin/true",), env=ENV, exec_root=str(tmp / "execroot"), writable_dirs=("out",),
        workdir="", hide_paths=(str(REPO),), stdout_path=str(tmp / "out"), stderr_path=str(tmp / "err"),
    )  # fmt: skip
    fields.update(overrides)
    return SandboxRequest(**fields)  # type: ignore[arg-type]


def test_every_operation_of_the_plan_is_in_the_bwrap_arguments(tmp_path: Path) -> None:
    """Each path the plan makes or mounts appears in bwrap's arguments, in the plan's order."""
    p = plan(_request(tmp_path))
    args = translate(p)
    made = [
        op.target if isinstance(op, nsops.Mount) else op.path
        for op in p.ops
        if isinstance(op, nsops.Mount | nsops.MakeDir | nsops.Symlink | nsops.DevTree)
        and getattr(op, "target", getattr(op, "path", "")) != p.new_root
    ]
    at = 0
    for path in made:
        inside = path[len(p.new_root) :]
        assert inside in args[at:], f"{inside} of the plan is not in {args[at:]}"
        at = args.index(inside, at)
    assert args[args.index("--ro-bind", args.index("--dev")) + 2] == "/execroot"
    assert ["--bind", f"{tmp_path}/execroot/out", "/execroot/out"] == args[-5:-2]


@needs_bwrap
def test_an_operation_added_to_the_plan_reaches_bwrap(tmp_path: Path) -> None:
    """bwrap runs what the plan says: a link added to the plan is there inside bwrap."""
    request = _request(tmp_path, argv=("/bin/sh", "-c", "readlink /made-by-the-plan"))
    p = plan(request)
    extra = nsops.Symlink("/execroot/out", f"{p.new_root}/made-by-the-plan")
    at = next(i for i, op in enumerate(p.ops) if isinstance(op, nsops.SetAttr))
    p = dataclasses.replace(p, ops=(*p.ops[:at], extra, *p.ops[at:]))
    binary = find_bwrap()
    assert binary is not None
    done = subprocess.run(command_line(p, binary, "/bin/sh"), capture_output=True, text=True, env=ENV)
    assert (done.returncode, done.stdout) == (0, "/execroot/out\n"), done.stderr


@pytest.mark.parametrize(
    "op",
    [
        nsops.Mask("/tmp", "/proc/kcore"),
        nsops.MakeFile("/tmp/etc/hosts", b"127.0.0.1 localhost\n"),
        nsops.Mount("overlay", "/tmp/usr", "overlay", 0, "lowerdir=/a:/b"),
        nsops.Mount("tmpfs", "/tmp/scratch", "tmpfs", linux.MS_NOSUID | linux.MS_NOEXEC),
        nsops.Mount("/usr", "/tmp/usr", None, linux.MS_BIND),  # a directory, not recursive
        nsops.SetAttr("/tmp/usr", linux.MOUNT_ATTR_NOEXEC),
        nsops.Mount("/usr", "/elsewhere", None, linux.MS_BIND | linux.MS_REC),
        nsops.Chdir("/tmp"),
    ],
    ids=lambda op: type(op).__name__,
)
def test_an_operation_bwrap_cannot_express_is_named(tmp_path: Path, op: nsops.Op) -> None:
    p = plan(_request(tmp_path))
    p = dataclasses.replace(p, ops=(*p.ops[:-1], op, p.ops[-1]))
    with pytest.raises(NotExpressible, match="bwrap cannot express") as caught:
        translate(p)
    assert repr(op) in str(caught.value)


@needs_bwrap
def test_a_plan_bwrap_cannot_express_is_a_refused_request(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The run reports it as a setup error (exit 125), not a traceback."""
    from pbuild.tools.sandbox import bwrap

    monkeypatch.setattr(bwrap, "plan", lambda r: dataclasses.replace(plan(r), ops=(nsops.Chdir("/"),)))
    result = run_sandboxed(_request(tmp_path, backend="bwrap"))
    assert result.exit_code == 125
    assert result.error is not None and "bwrap cannot express" in result.error
