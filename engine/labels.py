"""Labels (``//pkg:name``) and target patterns (``//...``, ``//pkg/...``, ``//pkg:all``)."""

from __future__ import annotations

import re
from dataclasses import dataclass

from pbuild.engine.errors import LoadError

# As in Bazel: package names are folder paths of these characters; target names may also hold a
# few more (they are file names too). Neither may start or end with "/", hold "//", or have a
# segment of dots only ("." and ".." would leave the folder; "..." is the pattern wildcard).
_PKG_CHARS = re.compile(r"[A-Za-z0-9_.\-+@/]")
_NAME_CHARS = re.compile(r"[A-Za-z0-9_.\-+@/=,~]")
LABEL_FORMS = "labels look like //pkg/path:name, //pkg/path (= //pkg/path:path) or :name"


def package_name_problem(package: str) -> str | None:
    """Why ``package`` is not a valid package name ('' is the root package), or None."""
    return _path_problem(package, "package names", _PKG_CHARS, allow_empty=True)


def target_name_problem(name: str) -> str | None:
    """Why ``name`` is not a valid target name, or None."""
    return _path_problem(name, "target names", _NAME_CHARS, allow_empty=False)


def _path_problem(text: str, what: str, chars: re.Pattern[str], *, allow_empty: bool) -> str | None:
    if not text:
        return None if allow_empty else f"{what} may not be empty"
    bad = next((c for c in text if not chars.fullmatch(c)), None)
    if bad is not None:
        return f"{what} may not contain {bad!r}"
    if text.startswith("/"):
        return f"{what} may not start with '/'"
    if text.endswith("/"):
        return f"{what} may not end with '/'"
    if "//" in text:
        return f"{what} may not contain '//'"
    dots = next((part for part in text.split("/") if part.strip(".") == ""), None)
    if dots == "...":
        return f"{what} may not contain '...': //pkg/... is a pattern (all targets below pkg), not a label"
    if dots is not None:
        return f"{what} may not have {dots!r} as a path segment"
    return None


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
                if not body:
                    raise LoadError(f"{original!r} is not a valid label: it names no package and no target",
                                    hint=LABEL_FORMS)
        else:
            raise LoadError(f"{original!r} is not a label", hint=LABEL_FORMS)
        problem = package_name_problem(package) or target_name_problem(name)
        if problem:
            raise LoadError(f"{original!r} is not a valid label: {problem}", hint=LABEL_FORMS)
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
        """A label, ``//pkg:all`` (or ``:all``, ``:*``) or ``//pkg/...`` (also ``//pkg/...:all``)."""
        body, colon, name = text.rpartition(":") if ":" in text else (text, "", "")
        rest = body[2:]
        if text.startswith("//") and (rest == "..." or rest.endswith("/...")) and name in ("", "all", "*"):
            # "//..." is the root; "///..." is not, so the package before "/..." must not be empty
            return cls("" if rest == "..." else _checked_package(text, rest[:-4], nonempty=True), "recursive")
        if colon and name in ("all", "*"):
            if text.startswith("//"):
                return cls(_checked_package(text, body[2:]), "package")
            if body == "":
                return cls(current_package, "package")
        label = Label.parse(text, current_package=current_package)
        return cls(label.package, "label", label.name)

    def matches_package(self, package: str) -> bool:
        if self.kind == "recursive":
            return not self.package or package == self.package or package.startswith(self.package + "/")
        return package == self.package


def _checked_package(pattern: str, package: str, *, nonempty: bool = False) -> str:
    problem = "package names may not start with '/'" if nonempty and not package else package_name_problem(package)
    if problem:
        raise LoadError(f"{pattern!r} is not a valid pattern: {problem}",
                        hint="patterns look like //pkg:name, //pkg:all, //pkg/... or //...")
    return package
