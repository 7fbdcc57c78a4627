"""Layer extraction: hostile tars never touch the host; whiteouts and opaque dirs work."""

from __future__ import annotations

import hashlib
import io
import os
import stat
import subprocess
import tarfile
from pathlib import Path

import pytest
from pbuild.tools.launcher.errors import RefusedLayer
from pbuild.tools.launcher.extract import OPAQUE_XATTR, extract_layer
from pbuild.tools.launcher.flatten import flatten

from tests.support.launcher import LAUNCHER
from tests.support.testimages import Entry, directory, file, hardlink, make_busybox_image, symlink, tar_layer


def unpack(raw: bytes, dest: Path, privileged: bool = True) -> list[str]:
    dest.mkdir(parents=True, exist_ok=True)
    diff_id = f"sha256:{hashlib.sha256(raw).hexdigest()}"
    return extract_layer(io.BytesIO(raw), str(dest), diff_id=diff_id, privileged=privileged).skipped


def test_regular_layer(tmp_path: Path) -> None:
    raw = tar_layer(
        [
            directory("d", 0o555),
            file("d/f", "x", 0o640),
            symlink("d/l", "/etc/passwd"),
            hardlink("d/h", "d/f"),
        ]
    )
    unpack(raw, tmp_path / "out")
    d = tmp_path / "out/d"
    assert (d / "f").read_text() == "x" and stat.S_IMODE((d / "f").stat().st_mode) == 0o640
    assert os.readlink(d / "l") == "/etc/passwd"  # kept: it is resolved inside the container
    assert (d / "h").stat().st_ino == (d / "f").stat().st_ino
    assert stat.S_IMODE(d.stat().st_mode) == 0o555  # directory modes applied at the end


@pytest.mark.parametrize(
    ("entries", "message"),
    [
        ([file("../escape", "x")], "'..'"),
        ([file("a/../../escape", "x")], "'..'"),
        ([file("f", "x"), file("f/pwned", "x")], "goes through 'f', which is a file, not a directory"),
        ([symlink("loop", "loop"), file("loop/pwned", "x")], "'loop', which is a loop of symbolic links"),
        ([hardlink("stolen", "../HOST/secret")], "'..'"),
        ([hardlink("stolen", "/HOST/secret")], "lacks"),
        ([symlink("ln", "/HOST/secret"), hardlink("stolen", "ln")], "not a regular file"),
    ],
)
def test_hostile_entries_are_refused(tmp_path: Path, entries: list[Entry], message: str) -> None:
    host = tmp_path / "HOST"
    host.mkdir()
    (host / "secret").write_text("host secret\n")
    dest = tmp_path / "store" / "layer" / "root"
    # Spell the host directory as the test wrote it: absolute, or relative from the layer root.
    fixed = [
        Entry(
            e.name,
            e.kind,
            e.data,
            e.mode,
            e.link.replace("/HOST", str(host)).replace("../HOST", os.path.relpath(host, dest)),
        )
        for e in entries
    ]
    with pytest.raises(RefusedLayer, match=message):
        unpack(tar_layer(fixed), dest)
    assert sorted(p.name for p in host.iterdir()) == ["secret"]
    assert (host / "secret").read_text() == "host secret\n"
    assert not (tmp_path / "escape").exists() and not (tmp_path / "store" / "escape").exists()


@pytest.mark.parametrize("spelling", ["absolute", "relative"])
def test_links_in_a_layer_are_followed_inside_it(tmp_path: Path, spelling: str) -> None:
    """``link/pwned`` with ``link`` -> a host directory lands in the layer's own copy of that
    path, as in a container (and as containerd unpacks), never in the host's."""
    host = tmp_path / "HOST"
    host.mkdir()
    (host / "pwned").write_text("host file\n")
    dest = tmp_path / "store" / "layer"
    link = str(host) if spelling == "absolute" else "../../../../../../../../.." + str(host)
    unpack(tar_layer([symlink("evil", link), file("evil/pwned", "image"), file("evil/new", "n")]), dest)
    assert (host / "pwned").read_text() == "host file\n"
    assert sorted(p.name for p in host.iterdir()) == ["pwned"]
    inside = dest / str(host).lstrip("/")
    assert (inside / "pwned").read_text() == "image" and (inside / "new").read_text() == "n"
    assert os.readlink(dest / "evil") == link  # the link itself is kept for the container


def test_absolute_paths_are_kept_inside(tmp_path: Path) -> None:
    unpack(tar_layer([file("/abs/file", "x"), file("./dot/file", "y")]), tmp_path / "out")
    assert (tmp_path / "out/abs/file").read_text() == "x"
    assert (tmp_path / "out/dot/file").read_text() == "y"


def test_device_nodes_are_skipped_and_setuid_dropped(tmp_path: Path) -> None:
    raw = tar_layer([
        Entry("dev-null", tarfile.CHRTYPE, mode=0o666, devmajor=1, devminor=3),
        Entry("disk", tarfile.BLKTYPE, mode=0o666, devmajor=8, devminor=0),
        file("suid", "x", 0o4755),
        Entry("fifo", tarfile.FIFOTYPE, mode=0o644),
    ])  # fmt: skip
    skipped = unpack(raw, tmp_path / "out", privileged=False)
    assert skipped == ["dev-null (device node)", "disk (device node)"]
    assert not (tmp_path / "out/dev-null").exists() and not (tmp_path / "out/disk").exists()
    assert stat.S_IMODE((tmp_path / "out/suid").stat().st_mode) == 0o755
    assert stat.S_ISFIFO((tmp_path / "out/fifo").lstat().st_mode)
    unpack(tar_layer([file("suid", "x", 0o4755)]), tmp_path / "root", privileged=True)
    assert stat.S_IMODE((tmp_path / "root/suid").stat().st_mode) == 0o4755


def test_wrong_digest_is_refused(tmp_path: Path) -> None:
    raw = tar_layer([file("f", "x")])
    with pytest.raises(RefusedLayer, match="promises"):
        extract_layer(io.BytesIO(raw), str(tmp_path), diff_id="sha256:" + "0" * 64, privileged=False)


def test_not_a_tar_is_refused(tmp_path: Path) -> None:
    data = b"this is not a tar archive" * 100
    with pytest.raises(RefusedLayer, match="not a valid tar"):
        extract_layer(
            io.BytesIO(data),
            str(tmp_path),
            diff_id=f"sha256:{hashlib.sha256(data).hexdigest()}",
            privileged=False,
        )


def test_whiteouts_and_opaque_directories(tmp_path: Path) -> None:
    lower = tar_layer(
        [directory("a"), file("a/gone", "1"), file("a/kept", "2"), directory("o"), file("o/old", "3")]
    )
    upper = tar_layer([file("a/.wh.gone"), directory("o"), file("o/.wh..wh..opq"), file("o/new", "4")])
    unpack(lower, tmp_path / "l0")
    unpack(upper, tmp_path / "l1")
    whiteout = (tmp_path / "l1/a/gone").lstat()
    assert stat.S_ISCHR(whiteout.st_mode) and whiteout.st_rdev == 0
    assert os.getxattr(tmp_path / "l1/o", OPAQUE_XATTR) == b"y"
    flat = tmp_path / "flat"
    flat.mkdir()
    flatten([str(tmp_path / "l0"), str(tmp_path / "l1")], str(flat))
    assert sorted(p.name for p in (flat / "a").iterdir()) == ["kept"]
    assert sorted(p.name for p in (flat / "o").iterdir()) == ["new"]


@pytest.fixture
def env(tmp_path: Path) -> dict[str, str]:
    return {
        **os.environ,
        "PBUILD_LAYER_STORE": str(tmp_path / "layers"),
        "PBUILD_RUNTIME_DIR": str(tmp_path / "run"),
    }


def test_whiteouts_in_a_running_container(tmp_path: Path, env: dict[str, str]) -> None:
    upper = tar_layer([directory("app"), file("app/.wh.hello.txt"), directory("etc"), file("etc/.wh..wh..opq"),
                       file("etc/passwd", "root:x:0:0::/:/bin/sh\n")])  # fmt: skip
    layout = make_busybox_image(tmp_path / "img", [upper])
    out = subprocess.run([*LAUNCHER, "run", "--rm", f"oci:{layout}", "--", "sh", "-c", "ls -A /app | wc -l; ls /etc"],
                         env=env, capture_output=True, text=True, check=True).stdout  # fmt: skip
    app, etc = out.split("\n", 1)
    assert app.strip() == "0"  # hello.txt whited out
    assert sorted(etc.split()) == ["hostname", "hosts", "passwd", "resolv.conf"]  # group gone (opaque)


def test_hostile_image_fails_cleanly_and_touches_nothing(tmp_path: Path, env: dict[str, str]) -> None:
    target = tmp_path / "host-target"
    target.mkdir()
    linky = tar_layer([symlink("etc2", str(target)), file("etc2/pwned", "x")])
    layout = make_busybox_image(tmp_path / "img", [linky])
    result = subprocess.run([*LAUNCHER, "run", "--rm", f"oci:{layout}", "--", "cat", f"{target}/pwned"], env=env,
                            capture_output=True, text=True, check=False)  # fmt: skip
    assert (result.returncode, result.stdout) == (0, "x"), result.stderr  # inside the image's root
    evil = tar_layer([symlink("etc2", str(target)), file("etc2/pwned", "x"), file("etc2/../../escape", "x")])
    layout = make_busybox_image(tmp_path / "img2", [evil])
    result = subprocess.run([*LAUNCHER, "run", "--rm", f"oci:{layout}", "--", "true"], env=env,
                            capture_output=True, text=True, check=False)  # fmt: skip
    assert result.returncode == 125
    assert "contains '..'" in result.stderr and "Traceback" not in result.stderr
    assert list(target.iterdir()) == []
    store = Path(env["PBUILD_LAYER_STORE"])
    assert list((store / "tmp").iterdir()) == []  # the half-unpacked layer was removed


def test_symlinked_mount_targets_stay_in_the_root(tmp_path: Path, env: dict[str, str]) -> None:
    """An image whose /etc/hosts, /dev and /proc are links to host paths must not make the
    launcher mount or write over the host."""
    victim = tmp_path / "victim"
    victim.mkdir()
    (victim / "hosts").write_text("host file\n")
    upper = tar_layer([directory("etc"), symlink("etc/hosts", str(victim / "hosts")), symlink("dev", str(victim)),
                       symlink("proc", "../../../../" + str(victim).lstrip("/"))])  # fmt: skip
    layout = make_busybox_image(tmp_path / "img", [upper])
    out = subprocess.run([*LAUNCHER, "run", "--rm", f"oci:{layout}", "--", "sh", "-c", "cat /etc/hosts; echo $$"],
                         env=env, capture_output=True, text=True, check=False)  # fmt: skip
    assert out.returncode == 0, out.stderr
    assert "localhost" in out.stdout and out.stdout.endswith("1\n")
    assert sorted(p.name for p in victim.iterdir()) == ["hosts"]
    assert (victim / "hosts").read_text() == "host file\n"
