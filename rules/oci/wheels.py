"""Install a wheel into image layer entries, in memory, with ``installer`` (bytecode: see ``pyc``).

The destination is the image interpreter's ``dist-packages`` (Debian's ``sys.path`` has
``/usr/local/lib/python3.X/dist-packages`` for software that apt does not manage, which is
where ``pip`` would put it too). Console scripts go to ``/usr/local/bin`` with the image
interpreter in their shebang.
"""

from __future__ import annotations

import base64
import hashlib
import posixpath
from collections.abc import Iterable
from pathlib import Path
from typing import Any, BinaryIO

from installer import install
from installer.destinations import WheelDestination
from installer.records import Hash, RecordEntry
from installer.scripts import Script
from installer.sources import WheelFile
from installer.utils import Scheme, construct_record_file, fix_shebang
from pbuild.engine.api import ActionIO
from pbuild.lib import determinism
from pbuild.rules.oci.layerwriter import LayerEntry
from pbuild.rules.oci.pyc import add_pyc


class LayerDestination(WheelDestination):
    """An ``installer`` destination that keeps files as layer entries instead of writing a disk."""

    def __init__(self, schemes: dict[str, str], interpreter: str, origin: str) -> None:
        self.schemes = {k: v.strip("/") for k, v in schemes.items()}
        self.interpreter = interpreter
        self.origin = origin
        self.entries: list[LayerEntry] = []

    def _path(self, scheme: Scheme, path: str) -> str:
        full = posixpath.normpath(posixpath.join(self.schemes[scheme], path))
        if not (full + "/").startswith(self.schemes[scheme] + "/"):
            raise ValueError(f"wheel file {path} escapes its scheme {scheme}")
        return full

    def _write(self, scheme: Scheme, path: str, data: bytes, executable: bool) -> RecordEntry:
        mode = determinism.EXEC_MODE if executable else determinism.FILE_MODE
        self.entries.append(LayerEntry(self._path(scheme, path), "file", mode, data=data, origin=self.origin))
        digest = hashlib.sha256(data).digest()
        encoded = base64.urlsafe_b64encode(digest).decode("ascii").rstrip("=")
        return RecordEntry(path, Hash("sha256", encoded), len(data))

    def write_script(self, name: str, module: str, attr: str, section: Any) -> RecordEntry:
        script_name, data = Script(name, module, attr, section).generate(self.interpreter, "posix")
        return self._write(Scheme("scripts"), script_name, data, True)

    def write_file(self, scheme: Scheme, path: Any, stream: BinaryIO, is_executable: bool) -> RecordEntry:
        path_ = str(path)
        if scheme == "scripts":
            with fix_shebang(stream, self.interpreter) as fixed:
                return self._write(scheme, path_, fixed.read(), True)
        return self._write(scheme, path_, stream.read(), is_executable)

    def finalize_installation(self, scheme: Scheme, record_file_path: str,
                              records: Iterable[tuple[Scheme, RecordEntry]]) -> None:
        def prefix_for_scheme(file_scheme: str) -> str | None:
            if file_scheme == scheme:
                return None
            return posixpath.relpath("/" + self.schemes[file_scheme], "/" + self.schemes[scheme]) + "/"

        with construct_record_file(list(records), prefix_for_scheme) as stream:
            self._write(scheme, record_file_path, stream.read(), False)


def image_schemes(site_packages: str, prefix: str = "/usr/local", python_version: str = "3.11") -> dict[str, str]:
    """The install scheme inside the image (pip's ``posix_local`` layout on Debian)."""
    return {
        "purelib": site_packages,
        "platlib": site_packages,
        "scripts": f"{prefix}/bin",
        "data": prefix,
        "headers": f"{prefix}/include/python{python_version}",
    }


def wheel_entries(wheel_path: str, *, site_packages: str, interpreter: str, python_version: str,
                  origin: str = "", jobs: int = 1, bytecode: str = "all",
                  io: ActionIO | None = None) -> list[LayerEntry]:
    """The files of ``wheel_path`` installed for the image, with bytecode by ``interpreter`` (see ``pyc``)."""
    destination = LayerDestination(image_schemes(site_packages, python_version=python_version), interpreter,
                                   origin or posixpath.basename(wheel_path))
    with WheelFile.open(Path(wheel_path)) as source:
        # INSTALLER names the tool; REQUESTED is left out: which wheels were asked for is the lock's business.
        install(source, destination, {"INSTALLER": b"pbuild\n"})
    return add_pyc(destination.entries, io=io, python=interpreter, python_version=python_version, jobs=jobs,
                   mode=bytecode)
