"""A Compose file (the subset ``pbuild.tools.stack.parse`` reads) -> ``StackSpec``.

PyYAML reads the file, but not with its own schema: Compose files are read as YAML 1.2 (as
Docker Compose's Go parser does), so ``restart: no`` is the string "no" and ``8080:80`` is no
base-60 number. The file is composed into PyYAML's node tree, which carries each value's line,
and turned into plain values here, so every error says ``file:line``. String values are
interpolated as Compose does (``interpolate.py``: ``${VAR:-default}``, ``$$``) from the caller's
environment over the folder's ``.env``.
"""

from __future__ import annotations

import os
import re
import sys
from collections.abc import Mapping
from typing import Any

import yaml
from pbuild.lib.errors import UserError
from pbuild.lib.oci.reference import Reference
from pbuild.tools.stack.errors import StackError
from pbuild.tools.stack.interpolate import InterpolationError, interpolate
from pbuild.tools.stack.parse import SERVICE_KEYS, FieldError, parse_env_lines, parse_service, supported
from pbuild.tools.stack.spec import (
    DependencyError,
    ServiceSpec,
    StackSpec,
    bad_input,
    check,
    project_name_problem,
)

TOP_KEYS = ("name", "services", "version", "volumes")
MAX_NODES = 100_000
"""Values a file may expand to: aliases share nodes, so a few lines could otherwise expand to
billions (the "billion laughs")."""
MAX_FILE_BYTES = 4 << 20
MAX_ENV_FILE_BYTES = 1 << 20

_LABEL = re.compile(r"(//[A-Za-z0-9_.+@=,~/-]*)?:[A-Za-z0-9_.+@=,~/-]+")
Path = tuple[str, ...]


class _Yaml12Loader(yaml.SafeLoader):  # type: ignore[misc]  # PyYAML ships no type hints
    """SafeLoader with YAML 1.2's core schema: booleans only true/false, no base-60 numbers,
    no ``yes``/``no``/``on``/``off``."""


_Yaml12Loader.yaml_implicit_resolvers = {}
for _tag, _pattern, _first in (
    ("tag:yaml.org,2002:bool", r"^(?:true|True|TRUE|false|False|FALSE)$", "tTfF"),
    ("tag:yaml.org,2002:int", r"^(?:[-+]?[0-9]+|0o[0-7]+|0x[0-9a-fA-F]+)$", "-+0123456789"),
    ("tag:yaml.org,2002:float",
     r"^(?:[-+]?(?:\.[0-9]+|[0-9]+(?:\.[0-9]*)?)(?:[eE][-+]?[0-9]+)?|[-+]?\.(?:inf|Inf|INF)|\.(?:nan|NaN|NAN))$",
     "-+0123456789."),
    ("tag:yaml.org,2002:null", r"^(?:~|null|Null|NULL|)$", ["~", "n", "N", ""]),
    ("tag:yaml.org,2002:merge", r"^(?:<<)$", "<"),
):
    _Yaml12Loader.add_implicit_resolver(_tag, re.compile(_pattern), list(_first))


class _Reader:
    """Node tree -> plain values, with the line of every key path."""

    def __init__(self, loader: _Yaml12Loader, file: str, variables: Mapping[str, str] | None = None) -> None:
        self.loader = loader
        self.file = file
        self.variables = variables if variables is not None else {}
        self.lines: dict[Path, int] = {}
        self.nodes = 0
        self.unset: dict[str, int] = {}  # variables used but not set, and the first line using each

    def error(self, message: str, line: int | None, hint: str | None = None) -> StackError:
        where = f"{self.file}:{line}" if line else self.file
        return bad_input(f"{where}: {message}", hint)

    def line_of(self, path: Path) -> int | None:
        while path not in self.lines and path:
            path = path[:-1]
        return self.lines.get(path)

    def value(self, node: yaml.Node, path: Path) -> Any:
        self.nodes += 1
        if self.nodes > MAX_NODES:
            raise self.error(f"the file expands to more than {MAX_NODES} values", node.start_mark.line + 1,
                             "use fewer aliases (*name)")
        self.lines.setdefault(path, node.start_mark.line + 1)
        if isinstance(node, yaml.MappingNode):
            # Merge keys (<<: *defaults), as Compose allows: the merged pairs come first and the
            # mapping's own keys override them; only an own key written twice is an error.
            own = {id(k) for k, _ in node.value if k.tag != "tag:yaml.org,2002:merge"}
            self.loader.flatten_mapping(node)
            result: dict[str, Any] = {}
            owned: set[str] = set()
            for key_node, value_node in node.value:
                key = self.loader.construct_object(key_node)
                line = key_node.start_mark.line + 1
                if not isinstance(key, str):
                    raise self.error(f"key {key!r} is not a string", line, "quote it")
                if id(key_node) in own:
                    if key in owned:
                        raise self.error(f"key {key!r} appears twice", line, "keep one of them")
                    owned.add(key)
                self.lines[(*path, key)] = line
                result[key] = self.value(value_node, (*path, key))
            return result
        if isinstance(node, yaml.SequenceNode):
            return [self.value(item, path) for item in node.value]
        value = self.loader.construct_object(node)
        if not isinstance(value, str | int | float | bool | type(None)):
            raise self.error(f"{type(value).__name__} values are not supported", node.start_mark.line + 1,
                             "quote the value")
        if isinstance(value, str) and "$" in value:
            line = node.start_mark.line + 1
            try:
                return interpolate(value, self.variables, lambda name: self.unset.setdefault(name, line))
            except InterpolationError as exc:
                raise self.error(str(exc), line, "set the variable, or give a default: ${NAME:-default}") from None
        return value


def load_compose(path: str) -> StackSpec:
    """The stack a Compose file describes. Its name is ``name:``, else the file's folder name
    (Compose's default); relative bind sources, ``env_file`` and ``oci:`` images are relative to
    the file's folder (``pbuild.tools.stack.spec.resolve`` makes them absolute). Each ``image:`` is
    kept as ``pbuild:LABEL`` (``//pkg:target`` or ``:target``, for the command to build) or
    ``docker://REFERENCE`` (a registry's), or ``oci:PATH``. A ``StackError`` (exit 2) with
    ``file:line`` for anything outside the supported subset."""
    folder = os.path.dirname(os.path.abspath(path))
    try:
        with open(path, "rb") as handle:
            data = handle.read(MAX_FILE_BYTES + 1)
    except OSError as exc:
        raise bad_input(f"cannot read {path}: {exc.strerror}", "check the path of the Compose file") from None
    if len(data) > MAX_FILE_BYTES:
        raise bad_input(f"{path} is larger than {MAX_FILE_BYTES >> 20} MiB", "is this a Compose file?")
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        at = data.count(b"\n", 0, exc.start) + 1
        raise bad_input(f"{path}:{at}: not UTF-8 text", "save the file as UTF-8") from None
    loader = _Yaml12Loader(text)
    reader = _Reader(loader, path, {**_dotenv(folder), **os.environ})
    try:
        root = loader.get_single_node()
        raw = reader.value(root, ()) if root is not None else None
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        line = mark.line + 1 if mark else None
        raise reader.error(f"invalid YAML: {exc.problem or exc.context}", line, "fix the syntax") from None
    except yaml.YAMLError as exc:
        raise reader.error(f"invalid YAML: {exc}", None, "fix the syntax") from None
    finally:
        loader.dispose()
    for name, line in reader.unset.items():  # as Compose: a warning, and an empty string
        sys.stderr.write(f"pbuild: warning: {path}:{line}: the variable {name} is not set; it is an empty string\n")
    return _stack(raw, reader, folder)


def _dotenv(folder: str) -> dict[str, str]:
    """The variables of the project folder's ``.env`` (none when there is no such file)."""
    env_path = os.path.join(folder, ".env")
    try:
        with open(env_path, "rb") as handle:
            data = handle.read(MAX_ENV_FILE_BYTES + 1)
    except FileNotFoundError:
        return {}
    except OSError as exc:
        raise bad_input(f"cannot read {env_path}: {exc.strerror}", "fix its permissions, or remove it") from None
    if len(data) > MAX_ENV_FILE_BYTES:
        raise bad_input(f"{env_path} is larger than {MAX_ENV_FILE_BYTES >> 20} MiB", "is this an env file?")
    try:
        return dict(parse_env_lines(data.decode("utf-8"), where=env_path))
    except UnicodeDecodeError:
        raise bad_input(f"{env_path}: not UTF-8 text", "save the file as UTF-8") from None
    except FieldError as exc:
        raise bad_input(exc.message, exc.hint) from None


def _stack(raw: Any, reader: _Reader, folder: str) -> StackSpec:
    if not isinstance(raw, dict):
        raise reader.error("a Compose file is a mapping with services:", reader.line_of(()),
                           "start with services: and one entry per service")
    for key in raw:
        if key not in TOP_KEYS and not key.startswith("x-"):
            raise reader.error(f"unknown key {key!r}", reader.line_of((key,)),
                               f"supported at the top: {supported(TOP_KEYS)} (and x-* extensions)")
    name = raw.get("name")
    if name is None:
        name = re.sub(r"[^-_a-z0-9]", "", os.path.basename(folder).lower()).lstrip("-_")
        if not name:
            raise reader.error(f"the folder name {os.path.basename(folder)!r} cannot name the stack",
                               reader.line_of(()), "add name: to the file")
    problem = project_name_problem(name) if isinstance(name, str) else "it must be a string"
    if problem:
        raise reader.error(f"name {name!r} is not valid: {problem}", reader.line_of(("name",)))
    volumes = raw.get("volumes") or {}
    if not isinstance(volumes, dict):
        raise reader.error("volumes: must map volume names to nothing (or {})", reader.line_of(("volumes",)))
    for volume, options in volumes.items():
        if options not in (None, {}):
            raise reader.error(f"volume {volume!r}: options are not supported", reader.line_of(("volumes", volume)),
                               "pbuild keeps named volumes in the stack's state; write `NAME: {}`")
    services_raw = raw.get("services")
    if not isinstance(services_raw, dict) or not services_raw:
        raise reader.error("services: must map at least one service name to its settings",
                           reader.line_of(("services",)) or reader.line_of(()))
    services: list[ServiceSpec] = []
    for service_name, entry in services_raw.items():
        services.append(_service(service_name, entry, reader, folder, set(volumes)))
    spec = StackSpec(name=name, origin=os.path.join(folder, os.path.basename(reader.file)), services=tuple(services))
    try:
        check(spec)
    except DependencyError as exc:
        raise reader.error(exc.message, reader.line_of(("services", exc.service, "depends_on")), exc.hint) from None
    except StackError as exc:
        raise reader.error(exc.message, reader.line_of(("services",)), exc.hint) from None
    return spec


def _service(name: str, entry: Any, reader: _Reader, folder: str, declared_volumes: set[str]) -> ServiceSpec:
    at: Path = ("services", name)
    if not isinstance(entry, dict):
        raise reader.error(f"service {name!r} must be a mapping of its settings", reader.line_of(at),
                           f"a service has: {supported(SERVICE_KEYS)}")
    if "build" in entry:
        raise reader.error(f"service {name!r}: build: is not supported", reader.line_of((*at, "build")),
                           'pbuild builds images from BUILD.toml: write image: "//pkg:image_target"')
    entry = {k: v for k, v in entry.items() if not k.startswith("x-")}
    if "image" not in entry:
        raise reader.error(f"service {name!r} names no image", reader.line_of(at),
                           'add image: "//pkg:image_target" (built by pbuild) or a registry reference')
    try:
        image = _image(entry.get("image"))
        spec = parse_service(name, entry, image=image, base="", allow_absolute_binds=True,
                             read_env_file=lambda rel: _read_env_file(folder, rel))
    except FieldError as exc:
        raise reader.error(f"service {name!r}: {exc.message}", reader.line_of((*at, *exc.path)), exc.hint) from None
    for volume in spec.volumes:
        if volume.kind == "volume" and volume.source not in declared_volumes:
            raise reader.error(f"service {name!r} uses volume {volume.source!r}, which volumes: does not declare",
                               reader.line_of((*at, "volumes")),
                               f"add it at the top: volumes: {{ {volume.source}: {{}} }}")
    return spec


def _image(text: Any) -> str:
    if not isinstance(text, str) or not text:
        raise FieldError(f"image must be a string, got {text!r}", path=("image",))
    if text.startswith(("//", ":")):
        if not _LABEL.fullmatch(text):
            raise FieldError(f"{text!r} is not a pbuild label", path=("image",), hint='write "//pkg:target" or ":target"')
        return "pbuild:" + text
    if text.startswith(("oci:", "docker-archive:")):
        return text
    try:
        Reference.parse(text)
    except UserError as exc:
        raise FieldError(exc.message, path=("image",),
                         hint="a pbuild label (//pkg:target) or a registry reference (REGISTRY/REPO[:TAG][@DIGEST])") from None
    return "docker://" + text


def _read_env_file(folder: str, rel: str) -> str:
    real_folder = os.path.realpath(folder)
    path = os.path.realpath(os.path.join(real_folder, rel))
    if not path.startswith(real_folder + os.sep):
        raise FieldError(f"{rel!r} leads outside the Compose file's folder", path=("env_file",),
                         hint="keep env files beside the Compose file")
    try:
        with open(path, "rb") as handle:
            data = handle.read(MAX_ENV_FILE_BYTES + 1)
    except OSError as exc:
        raise FieldError(f"cannot read env file {rel}: {exc.strerror}", path=("env_file",),
                         hint="create it, or fix the name (relative to the Compose file)") from None
    if len(data) > MAX_ENV_FILE_BYTES:
        raise FieldError(f"env file {rel} is larger than 1 MiB", path=("env_file",))
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        raise FieldError(f"env file {rel} is not UTF-8 text", path=("env_file",)) from None


__all__ = ["SERVICE_KEYS", "TOP_KEYS", "load_compose"]
