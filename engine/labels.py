"""Labels (``//pkg:name``) and target patterns (``//...``, ``//pkg/...``, ``//pkg:all``)."""

from __future__ import annotations

import re
from dataclasses import dataclass

from pbuild.engine.errors import LoadError

_PKG_RE = re.compile(r"^[A-Za-z0-9_.\-+@/]*$")
_NAME_RE = re.compile(r"^[A-Za-z0-9_.\-+@/=,~]+$")


@dataclass(frozen=True, order=True)
class Label:
    """A target's address: ``package`` is workspace-relative ('' for the root), ``name`` is the table."""

    package: str
    name: str

    def __str__(self) -> str:
        return f"//{self.package}:{self.name}"

    @classmethod
    def parse(cls, text: str, *, current_package: str | None = None) -> Label:
        """Parse ``//pkg:name``, ``//pkg`` (= ``//pkg:pkg``) or ``:name`` (needs ``current_package``)."""
        original = text
        if text.startswith(":"):
            if current_package is None:
                raise LoadError(f"relative label {original!r} needs a package", hint="write //pkg:name")
            package, name = current_package, text[1:]
        elif text.startswith("//"):
            body = text[2:]
            if ":" in body:
                package, name = body.split(":", 1)
            else:
                package = body
                name = body.rsplit("/", 1)[-1] if body else ""
        else:
            raise LoadError(
                f"{original!r} is not a label",
                hint="labels look like //pkg/path:name, //pkg/path or :name",
            )
        package = package.rstrip("/")
        if not name or not _PKG_RE.match(package) or not _NAME_RE.match(name) or ".." in package.split("/"):
            raise LoadError(
                f"{original!r} is not a valid label",
                hint="labels look like //pkg/path:name, //pkg/path or :name",
            )
        return cls(package, name)


@dataclass(frozen=True)
class Pattern:
    """A set of targets: one label, all targets of a package, or all packages below a folder."""

    package: str
    kind: str  # "label" | "package" (//pkg:all) | "recursive" (//pkg/...)
    name: str = ""

    def __str__(self) -> str:
        if self.kind == "recursive":
            return f"//{self.package + '/' if self.package else ''}..."
        if self.kind == "package":
            return f"//{self.package}:all"
        return str(Label(self.package, self.name))

    @classmethod
    def parse(cls, text: str, *, current_package: str = "") -> Pattern:
        if text.startswith("//") and (text == "//..." or text.endswith("/...")):
            package = text[2:-3].rstrip("/")
            return cls(package, "recursive")
        if text.endswith(":all") or text.endswith(":*"):
            package = text[2:].rsplit(":", 1)[0] if text.startswith("//") else current_package
            return cls(package.rstrip("/"), "package")
        label = Label.parse(text, current_package=current_package)
        return cls(label.package, "label", label.name)

    def matches_package(self, package: str) -> bool:
        if self.kind == "recursive":
            return not self.package or package == self.package or package.startswith(self.package + "/")
        return package == self.package
