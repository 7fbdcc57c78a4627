"""The public rule API: everything a rule (built-in or a workspace plugin) may use.

A rule module defines rules with :func:`rule` and lists them in a module-level ``RULES`` list;
the engine collects ``RULES`` from the built-in families and from the plugins named in
``WORKSPACE.toml``. There is no global registry. A family adds commands to ``pbuild`` the same
way: :class:`Command` records in a module-level ``COMMANDS`` list (see the end of this module).

A rule implementation receives a :class:`RuleContext`, declares actions through
``ctx.actions`` and returns a list of providers (frozen dataclasses deriving :class:`Provider`).
Rules never run anything themselves and never read files: actions do, at execution time.

Paths: every :class:`File` has a workspace-relative ``path``. Source files are where the user put
them (``app/program.py``); generated files live under ``pbuild-out/<package>/`` (for the root
package, directly under ``pbuild-out/``). Inside the sandbox a process action sees the same
relative paths below its exec root.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, NoReturn, Protocol, TypeVar

from pbuild.engine.errors import AnalysisError, Location, PbuildError
from pbuild.engine.labels import Label
from pbuild.engine.workspace import BUILTIN_PACKAGE_PREFIX, package_dir

if TYPE_CHECKING:
    from pbuild.lib.oci.blobstore import BlobStore

if TYPE_CHECKING:
    import argparse

OUT_DIR = "pbuild-out"

__all__ = [
    "BUILTIN_PACKAGE_PREFIX",
    "OUT_DIR",
    "Action",
    "ActionIO",
    "Attr",
    "DefaultInfo",
    "File",
    "InProcessAction",
    "Label",
    "PbuildError",
    "ProcessAction",
    "Provider",
    "RuleContext",
    "RuleDef",
    "RunInfo",
    "Target",
    "TestInfo",
    "Toolchain",
    "ToolchainInfo",
    "ToolchainLayer",
    "HOST_TOOLCHAIN",
    "GeneratedTarget",
    "GeneratorContext",
    "GeneratorDef",
    "attr",
    "package_dir",
    "rule",
    "target_generator",
]


# ---------------------------------------------------------------------------------------------
# Files and providers


@dataclass(frozen=True, order=True)
class File:
    """A file an action reads or writes. ``path`` is workspace-relative."""

    path: str
    is_source: bool = True
    is_directory: bool = False

    @property
    def basename(self) -> str:
        return self.path.rsplit("/", 1)[-1]

    @property
    def extension(self) -> str:
        base = self.basename
        return base.rsplit(".", 1)[-1] if "." in base else ""

    def __str__(self) -> str:
        return self.path


class Provider:
    """Base class of typed records a rule returns. Subclasses are frozen dataclasses."""


@dataclass(frozen=True)
class DefaultInfo(Provider):
    """What building a target produces (``files``) and what running it needs (``runfiles``)."""

    files: tuple[File, ...] = ()
    runfiles: tuple[File, ...] = ()


# ---------------------------------------------------------------------------------------------
# Toolchains: root filesystems made from pinned layers, which actions see as ``/``

HOST_TOOLCHAIN = "host"
"""The ``toolchain`` value that runs an action on the host's root (not hermetic: its key holds
the host fingerprint instead of a toolchain digest)."""


@dataclass(frozen=True, order=True)
class ToolchainLayer:
    """One layer of a toolchain: the blob (tar, gzip or zstd) and its sidecar JSON with the diff_id."""

    blob: File
    meta: File


@dataclass(frozen=True)
class Toolchain:
    """A root filesystem from pinned inputs (a ``deb_packages`` target or an ``image``'s layers).

    A process action with a toolchain sees the tree unpacked from ``layers`` (bottom first) as
    its read-only ``/``; its key holds the layers' digests instead of the host fingerprint.
    ``python`` is the interpreter inside (``/usr/bin/python3.11``), "" when it has none.
    """

    label: Label
    layers: tuple[ToolchainLayer, ...]
    python: str = ""
    python_version: str = ""

    @property
    def files(self) -> tuple[File, ...]:
        """Every file the tree is made from (what must be built before an action can use it)."""
        return tuple(f for layer in self.layers for f in (layer.blob, layer.meta))


@dataclass(frozen=True)
class ToolchainInfo(Provider):
    """What a target offers as a toolchain (``deb_packages``, ``image``)."""

    toolchain: Toolchain


@dataclass(frozen=True)
class RunInfo(Provider):
    """How ``pbuild run`` starts a target once it is built.

    ``argv`` items that are :class:`File` become absolute paths of the materialized outputs.
    The words the user gives after the label are appended verbatim (a leading ``--`` is
    dropped unless ``keep_dashdash`` is set).
    """

    argv: tuple[str | File, ...]
    env: Mapping[str, str] = field(default_factory=dict)
    keep_dashdash: bool = False
    # The root the program runs on (None: the host's).
    toolchain: Toolchain | None = None


@dataclass(frozen=True)
class TestInfo(Provider):
    """How ``pbuild test`` runs a test target: one sandboxed process action per target."""

    argv: tuple[str, ...]
    inputs: tuple[File, ...]
    env: Mapping[str, str] = field(default_factory=dict)
    workdir: str = ""
    timeout_s: float = 300.0
    # The root the test runs on (None: the host's, with the host fingerprint in its key).
    toolchain: Toolchain | None = None


P = TypeVar("P", bound=Provider)


@dataclass(frozen=True)
class Target:
    """An analyzed dependency as a rule sees it: its label and the providers it returned."""

    label: Label
    providers: tuple[Provider, ...]

    def get(self, kind: type[P]) -> P | None:
        for provider in self.providers:
            if isinstance(provider, kind):
                return provider
        return None

    def __getitem__(self, kind: type[P]) -> P:
        found = self.get(kind)
        if found is None:
            raise KeyError(kind.__name__)
        return found

    def __contains__(self, kind: type[Provider]) -> bool:
        return self.get(kind) is not None

    @property
    def files(self) -> tuple[File, ...]:
        info = self.get(DefaultInfo)
        return info.files if info else ()


# ---------------------------------------------------------------------------------------------
# Actions


@dataclass(frozen=True)
class ProcessAction:
    """Run ``argv`` in the sandbox with the exec root as described in the module docstring.

    ``workdir`` is relative to the exec root. ``host_tools`` marks actions that run programs of
    the host (``bash``, ``python3``): their key includes the host fingerprint. With a
    ``toolchain`` the action runs on the toolchain's tree instead of the host's root, and
    ``host_tools`` is ignored: the key holds the toolchain's layer digests.
    """

    owner: Label
    mnemonic: str
    argv: tuple[str, ...]
    inputs: tuple[File, ...]
    outputs: tuple[File, ...]
    env: tuple[tuple[str, str], ...] = ()
    workdir: str = ""
    host_tools: bool = True
    progress: str = ""
    # Extra strings that should invalidate the key (for example a rule's own version).
    salt: str = ""
    # If set, the action's stdout and stderr go to this declared output (test logs).
    stdout_to: str = ""
    timeout_s: float | None = None
    toolchain: Toolchain | None = None


@dataclass(frozen=True)
class InProcessAction:
    """Call ``function(io, params)`` in the engine's process.

    ``function`` must be a module-level function; its qualified name and ``version`` are part of
    the action key, so bump ``version`` whenever the function's output for the same inputs and
    ``params`` changes. ``params`` must be JSON-serializable. With ``network=True`` the
    function may fetch from the network (only fetches that verify a pinned hash should).
    """

    owner: Label
    mnemonic: str
    function: Callable[[ActionIO, Mapping[str, Any]], None]
    version: str
    params: Mapping[str, Any]
    inputs: tuple[File, ...]
    outputs: tuple[File, ...]
    network: bool = False
    progress: str = ""
    # A toolchain the function runs programs on (``io.run_sandboxed``); its digests join the key.
    toolchain: Toolchain | None = None

    @property
    def function_name(self) -> str:
        return f"{self.function.__module__}:{self.function.__qualname__}"


Action = ProcessAction | InProcessAction


class ActionIO:
    """What an in-process action's function may touch: its inputs, its outputs and a temp dir.

    The engine creates it; functions use :meth:`input_path` and :meth:`output_path` to turn
    declared :class:`File` objects into real paths.
    """

    def __init__(
        self,
        inputs: Mapping[str, str],
        outputs: Mapping[str, str],
        tmpdir: str,
        label: Label,
        jobs: int = 1,
        toolchain_root: str | None = None,
        oci_blobs: BlobStore | None = None,
    ) -> None:
        self._inputs = dict(inputs)
        self._outputs = dict(outputs)
        self.tmpdir = tmpdir
        self.label = label
        self.jobs = jobs
        # The unpacked tree of the action's toolchain (None: the action declared none).
        self.toolchain_root = toolchain_root
        # Where a fetch keeps pulled OCI blobs: the engine's CAS (None: no store, fetch afresh).
        self.oci_blobs = oci_blobs

    def input_path(self, file: File | str) -> str:
        key = file.path if isinstance(file, File) else file
        try:
            return self._inputs[key]
        except KeyError:
            raise PbuildError(f"action of {self.label} reads undeclared input {key}") from None

    def output_path(self, file: File | str) -> str:
        key = file.path if isinstance(file, File) else file
        try:
            return self._outputs[key]
        except KeyError:
            raise PbuildError(f"action of {self.label} writes undeclared output {key}") from None

    @property
    def input_paths(self) -> Mapping[str, str]:
        return self._inputs

    def run_sandboxed(
        self,
        argv: Sequence[str],
        *,
        exec_root: str,
        stdout_path: str,
        stderr_path: str,
        writable_dirs: Sequence[str] = (),
        env: Mapping[str, str] | None = None,
        root: str | None = None,
    ) -> int:
        """Run ``argv`` in the engine's sandbox and return its exit code.

        The program sees ``root`` (default: this action's toolchain tree) as its read-only ``/``
        and ``exec_root`` (a folder below :attr:`tmpdir`) at ``/execroot``, writable only in
        ``writable_dirs`` (relative to it); no network. For functions that must run the
        toolchain's own programs, such as its Python compiling bytecode.
        """
        from pbuild.engine.execroot import base_env
        from pbuild.lib.determinism import source_date_epoch
        from pbuild.tools.sandbox import SandboxRequest
        from pbuild.tools.sandbox import run_sandboxed as run

        tree = root or self.toolchain_root
        if tree is None:
            raise PbuildError(f"an action of {self.label} runs a program but declared no toolchain")
        # The environment every process action starts from, as the scheduler builds it (the same
        # validated epoch the session read: the environment of this process is the build's).
        base = base_env(str(source_date_epoch()))
        result = run(SandboxRequest(argv=tuple(argv), env={**base, **(env or {})}, exec_root=exec_root,
                                    writable_dirs=tuple(writable_dirs), workdir="", hide_paths=(),
                                    stdout_path=stdout_path, stderr_path=stderr_path, root=tree))
        if result.error:
            raise PbuildError(f"an action of {self.label}: {result.error}")
        return result.exit_code


# ---------------------------------------------------------------------------------------------
# Attribute schemas


@dataclass(frozen=True)
class Attr:
    """One attribute of a rule's schema. Build these with the ``attr.*`` helpers."""

    kind: str  # string, string_list, string_dict, int, bool, label, label_list, output, output_list, dict
    doc: str
    default: Any = None
    required: bool = False
    allow_files: bool | tuple[str, ...] = False  # True, or allowed extensions without the dot
    values: tuple[Any, ...] = ()
    providers: tuple[type[Provider], ...] = ()
    # For a ``dict`` that is a table of tables (``[t.services.NAME]``): the keys each entry may
    # have, for the docs; ``label`` fields are analyzed as dependencies (see :meth:`attr.dict`).
    fields: tuple[tuple[str, Attr], ...] = ()

    @property
    def is_label(self) -> bool:
        return self.kind in ("label", "label_list")


class attr:
    """Constructors for attribute schemas; every attribute has a doc string."""

    @staticmethod
    def string(doc: str, *, default: str | None = None, required: bool = False,
               values: Sequence[str] = ()) -> Attr:
        return Attr("string", doc, default, required, values=tuple(values))

    @staticmethod
    def string_list(doc: str, *, default: Sequence[str] = (), required: bool = False) -> Attr:
        return Attr("string_list", doc, tuple(default), required)

    @staticmethod
    def string_dict(doc: str, *, default: Mapping[str, str] | None = None, required: bool = False) -> Attr:
        return Attr("string_dict", doc, dict(default or {}), required)

    @staticmethod
    def integer(doc: str, *, default: int | None = None, required: bool = False) -> Attr:
        return Attr("int", doc, default, required)

    @staticmethod
    def boolean(doc: str, *, default: bool = False) -> Attr:
        return Attr("bool", doc, default, False)

    @staticmethod
    def dict(doc: str, *, default: Mapping[str, Any] | None = None, required: bool = False,
             fields: Mapping[str, Attr] | None = None) -> Attr:
        """A free-form TOML table (for structured settings); validate it in the rule.

        With ``fields`` it is a table of tables (``NAME = { ... }``, or ``[target.ATTR.NAME]``
        sub-tables), each entry with those keys, documented like attributes. An entry's
        ``attr.label`` fields are dependencies: analyzed first, checked against their
        ``providers``, and given to the rule as :class:`Target` objects in place of the text
        (their files in ``ctx.files.ATTR``). The rule checks every other field itself; a key
        inside is located with ``ctx.fail(..., attr="ATTR.NAME.KEY")``.
        """
        return Attr("dict", doc, dict(default or {}), required, fields=tuple((fields or {}).items()))

    @staticmethod
    def label(doc: str, *, required: bool = False, allow_files: bool | Sequence[str] = False,
              providers: Sequence[type[Provider]] = (), default: str | None = None) -> Attr:
        """A label (or, with ``allow_files``, a file of the package); ``default`` is a label."""
        files = allow_files if isinstance(allow_files, bool) else tuple(allow_files)
        return Attr("label", doc, default, required, files, providers=tuple(providers))

    @staticmethod
    def label_list(doc: str, *, required: bool = False, allow_files: bool | Sequence[str] = False,
                   providers: Sequence[type[Provider]] = (), default: Sequence[str] = ()) -> Attr:
        """Labels (or files); ``default`` is a list of labels used when the attribute is not set."""
        files = allow_files if isinstance(allow_files, bool) else tuple(allow_files)
        return Attr("label_list", doc, tuple(default), required, files, providers=tuple(providers))

    @staticmethod
    def output(doc: str, *, required: bool = False) -> Attr:
        return Attr("output", doc, None, required)

    @staticmethod
    def output_list(doc: str, *, required: bool = False) -> Attr:
        return Attr("output_list", doc, (), required)


# ---------------------------------------------------------------------------------------------
# Rules


@dataclass(frozen=True)
class RuleDef:
    """A rule: its name, schema, documentation and implementation."""

    name: str
    implementation: Callable[[RuleContext], Sequence[Provider]]
    attrs: Mapping[str, Attr]
    doc: str
    executable: bool = False
    test: bool = False
    # The toolchain kind the rule's actions run on ("python", "shell"; "" for none). Such a rule
    # gets a ``toolchain`` attribute; its default is ``[toolchains] <kind>`` of WORKSPACE.toml.
    toolchain: str = ""


# Attributes every target has, whatever its rule.
COMMON_ATTRS: Mapping[str, Attr] = {
    "visibility": Attr("string_list", "Accepted for compatibility; pbuild does not enforce it.", ()),
    "tags": Attr("string_list", "Free-form tags (for `pbuild query`).", ()),
}


def rule(
    name: str,
    *,
    attrs: Mapping[str, Attr],
    doc: str,
    executable: bool = False,
    test: bool = False,
    toolchain: str = "",
) -> Callable[[Callable[[RuleContext], Sequence[Provider]]], RuleDef]:
    """Turn an implementation function into a :class:`RuleDef`; list it in the module's ``RULES``."""

    def wrap(impl: Callable[[RuleContext], Sequence[Provider]]) -> RuleDef:
        for key in attrs:
            if key in COMMON_ATTRS or key == "rule":
                raise ValueError(f"rule {name}: attribute {key!r} is reserved")
        if "toolchain" in attrs:
            raise ValueError(f"rule {name}: attribute 'toolchain' is reserved (pass toolchain=KIND to rule())")
        return RuleDef(name, impl, dict(attrs), doc, executable, test, toolchain)

    return wrap


class _Namespace:
    """Attribute access over a mapping (``ctx.attr.srcs``) with a useful error for typos."""

    def __init__(self, what: str, values: Mapping[str, Any]) -> None:
        self._what = what
        self._values = dict(values)

    def __getattr__(self, name: str) -> Any:
        try:
            return self._values[name]
        except KeyError:
            raise AttributeError(f"{self._what} has no attribute {name!r}") from None

    def get(self, name: str, default: Any = None) -> Any:
        return self._values.get(name, default)

    def items(self) -> Any:
        return self._values.items()


_RULE_TOOLCHAIN = object()  # "the toolchain of the rule's target", the default of Actions.run


class Actions:
    """``ctx.actions``: the ways a rule declares work."""

    def __init__(self, ctx: RuleContext) -> None:
        self._ctx = ctx
        self.declared: list[Action] = []

    def run(
        self,
        *,
        argv: Sequence[str],
        inputs: Sequence[File],
        outputs: Sequence[File],
        mnemonic: str,
        env: Mapping[str, str] | None = None,
        workdir: str = "",
        host_tools: bool = True,
        progress: str = "",
        salt: str = "",
        toolchain: Toolchain | None | object = _RULE_TOOLCHAIN,
    ) -> ProcessAction:
        """Declare a sandboxed process action; it runs on the rule's toolchain unless
        ``toolchain`` names another (``None``: the host's root)."""
        chosen = self._ctx.toolchain if toolchain is _RULE_TOOLCHAIN else toolchain
        assert chosen is None or isinstance(chosen, Toolchain)
        action = ProcessAction(
            owner=self._ctx.label,
            mnemonic=mnemonic,
            argv=tuple(argv),
            inputs=tuple(sorted(set(inputs))),
            outputs=tuple(outputs),
            env=tuple(sorted((env or {}).items())),
            workdir=workdir,
            host_tools=host_tools,
            progress=progress or f"{mnemonic} {self._ctx.label}",
            salt=salt,
            toolchain=chosen,
        )
        self._check_outputs(action.outputs)
        self.declared.append(action)
        return action

    def call(
        self,
        function: Callable[[ActionIO, Mapping[str, Any]], None],
        *,
        version: str,
        params: Mapping[str, Any],
        inputs: Sequence[File],
        outputs: Sequence[File],
        mnemonic: str,
        network: bool = False,
        progress: str = "",
        toolchain: Toolchain | None = None,
    ) -> InProcessAction:
        """Declare an in-process action (see :class:`InProcessAction`); with ``toolchain`` its
        function may run that toolchain's programs through ``io.run_sandboxed``."""
        try:
            json.dumps(params, sort_keys=True)
        except TypeError as exc:
            raise AnalysisError(f"action params must be JSON-serializable: {exc}", label=self._ctx.label) from None
        action = InProcessAction(
            owner=self._ctx.label,
            mnemonic=mnemonic,
            function=function,
            version=version,
            params=params,
            inputs=tuple(sorted(set(inputs))),
            outputs=tuple(outputs),
            network=network,
            progress=progress or f"{mnemonic} {self._ctx.label}",
            toolchain=toolchain,
        )
        self._check_outputs(action.outputs)
        self.declared.append(action)
        return action

    def write(self, output: File, content: str | bytes, *, mnemonic: str = "FileWrite") -> InProcessAction:
        """Declare an action that writes fixed ``content`` to ``output``."""
        data = content.encode() if isinstance(content, str) else content
        return self.call(
            _write_content,
            version="1",
            params={"content": data.decode("latin-1"), "output": output.path},
            inputs=(),
            outputs=(output,),
            mnemonic=mnemonic,
        )

    def _check_outputs(self, outputs: Sequence[File]) -> None:
        prefix = self._ctx.out_prefix
        for output in outputs:
            if output.is_source or not output.path.startswith(prefix):
                raise AnalysisError(
                    f"action output {output.path} is not a file declared by this target",
                    label=self._ctx.label,
                    hint="create outputs with ctx.declare_file()",
                )


def _write_content(io: ActionIO, params: Mapping[str, Any]) -> None:
    with open(io.output_path(params["output"]), "wb") as handle:
        handle.write(params["content"].encode("latin-1"))


def nearest_location(locations: Mapping[str, Location], dotted: str, default: Location) -> Location:
    """Where the attribute ``dotted`` (``services.backend.image``) is written: its own line, else
    the nearest enclosing key's, else ``default`` (the target's header)."""
    while dotted:
        if dotted in locations:
            return locations[dotted]
        dotted = dotted.rpartition(".")[0]
    return default


class RuleContext:
    """What a rule implementation sees of its target.

    * ``ctx.label`` and ``ctx.package``: the target's address.
    * ``ctx.attr.NAME``: attribute values; label attributes are :class:`Target` objects (a list
      for ``label_list``); output attributes are :class:`File` objects.
    * ``ctx.files.NAME``: for label attributes, the files of the named targets, flattened.
    * ``ctx.file.NAME``: for a ``label`` attribute with ``allow_files``, its single file.
    * ``ctx.declare_file(name)`` / ``ctx.declare_directory(name)``: a new output below
      ``pbuild-out/<package>/``.
    * ``ctx.actions``: see :class:`Actions`.
    * ``ctx.config(section)``: a table of ``WORKSPACE.toml`` (read-only).
    * ``ctx.read_workspace_file(path)`` / ``ctx.read_package_file(name)``: files read at analysis.
    * ``ctx.toolchain``: the :class:`Toolchain` the target's process actions run on (None: the
      host), for rules declared with ``rule(..., toolchain=KIND)``.
    * ``ctx.fail(message, attr=..., hint=...)``: stop analysis with a message that names the
      target and the attribute's line.
    """

    def __init__(
        self,
        *,
        label: Label,
        rule: RuleDef,
        attr_values: Mapping[str, Any],
        files: Mapping[str, tuple[File, ...]],
        workspace_config: Mapping[str, Any],
        attr_locations: Mapping[str, Location],
        target_location: Location,
        workspace_root: str,
        on_read: Callable[[str], None] | None = None,
        toolchain: Toolchain | None = None,
    ) -> None:
        self._on_read = on_read
        # The target's toolchain (its ``toolchain`` attribute, else the workspace default for the
        # rule's kind); None runs on the host's root.
        self.toolchain = toolchain
        self.label = label
        self.package = label.package
        self.rule = rule
        self.attr = _Namespace(f"rule {rule.name}", attr_values)
        self.files = _Namespace(f"rule {rule.name}", files)
        single = {name: (values[0] if len(values) == 1 else None) for name, values in files.items()}
        self.file = _Namespace(f"rule {rule.name}", single)
        self.out_prefix = f"{OUT_DIR}/{label.package}/" if label.package else f"{OUT_DIR}/"
        self.actions = Actions(self)
        self._config = workspace_config
        self._attr_locations = attr_locations
        self._target_location = target_location
        # Read-only knowledge for rules that must find things at analysis time (plugins, locks).
        self.workspace_root = workspace_root
        self.outputs = _Namespace(
            f"rule {rule.name}",
            {k: v for k, v in attr_values.items() if rule.attrs.get(k, Attr("", "")).kind.startswith("output")},
        )

    def declare_file(self, name: str) -> File:
        """A new generated file ``pbuild-out/<package>/<name>``."""
        self._check_name(name)
        return File(self.out_prefix + name, is_source=False)

    def declare_directory(self, name: str) -> File:
        """A new generated directory ``pbuild-out/<package>/<name>`` (stored as a tree)."""
        self._check_name(name)
        return File(self.out_prefix + name, is_source=False, is_directory=True)

    def _check_name(self, name: str) -> None:
        parts = name.split("/")
        if not name or name.startswith("/") or any(p in ("", ".", "..") for p in parts):
            self.fail(f"output name {name!r} must be a relative path without '..'")

    def read_workspace_file(self, relative_path: str) -> str | None:
        """Text of a workspace file read at analysis time (a lock file, say), or None if absent.

        Always read files through this method during analysis: pbuild records the file so a later
        build notices when it changes. Never open workspace files directly in a rule.
        """
        return _read_recorded(os.path.join(self.workspace_root, relative_path), self._on_read)

    def read_package_file(self, name: str) -> str | None:
        """Text of a file in the target's own package folder, or None if absent (recorded too).

        Unlike :meth:`read_workspace_file` this also reads the files of pbuild's built-in
        ``@pbuild/...`` packages, which live in pbuild's installation (their tool locks).
        """
        return _read_recorded(os.path.join(package_dir(self.workspace_root, self.package), name), self._on_read)

    def config(self, section: str) -> Mapping[str, Any]:
        value = self._config.get(section, {})
        return value if isinstance(value, Mapping) else {}

    def location(self, attr_name: str | None = None) -> Location:
        """Where ``attr_name`` is written (else the target's header). A dotted name reaches into
        a table attribute (``services.backend.image``); a key the loader has no line for (in an
        inline table) gets the line of the nearest enclosing key."""
        return nearest_location(self._attr_locations, attr_name or "", self._target_location)

    def fail(self, message: str, *, attr: str | None = None, hint: str | None = None) -> NoReturn:
        """Stop analysis of this target with an error at ``attr``'s line (else the target's)."""
        text = f"attribute {attr!r}: {message}" if attr else message
        raise AnalysisError(text, location=self.location(attr), label=self.label, hint=hint)


# ---------------------------------------------------------------------------------------------
# Target generators (like Pants' target generators): one declaration that expands, at load time,
# into several targets, e.g. one target per project of a lock file.


@dataclass(frozen=True)
class GeneratedTarget:
    """A target a generator produces: ``[name]`` with ``rule`` and ``attrs`` as if written by hand."""

    name: str
    rule: str
    attrs: Mapping[str, Any]


@dataclass(frozen=True)
class GeneratorDef:
    """A target generator: validated ``attrs`` in, a list of :class:`GeneratedTarget` out."""

    name: str
    implementation: Callable[[GeneratorContext], Sequence[GeneratedTarget]]
    attrs: Mapping[str, Attr]
    doc: str


class GeneratorContext:
    """What a generator sees: its package, its (string-typed) attributes and the package's files."""

    def __init__(self, *, label: Label, attr_values: Mapping[str, Any], package_dir: str,
                 location: Location, attr_locations: Mapping[str, Location],
                 on_read: Callable[[str], None] | None = None) -> None:
        self._on_read = on_read
        self.label = label
        self.package = label.package
        self.attr = _Namespace(f"generator {label}", attr_values)
        self.package_dir = package_dir
        self._location = location
        self._attr_locations = attr_locations

    def read_file(self, relative_path: str) -> str | None:
        """Text of a file in this package, or None if it does not exist."""
        return _read_recorded(os.path.join(self.package_dir, relative_path), self._on_read)

    def fail(self, message: str, *, attr: str | None = None, hint: str | None = None) -> NoReturn:
        """Stop loading this generator with an error at ``attr``'s line (else the target's)."""
        location = self._attr_locations.get(attr, self._location) if attr else self._location
        raise AnalysisError(message, location=location, label=self.label, hint=hint)


def _read_recorded(path: str, on_read: Callable[[str], None] | None) -> str | None:
    """Text of ``path`` (None if absent), telling ``on_read`` so up-to-date checks notice changes."""
    if on_read is not None:
        on_read(path)
    try:
        with open(path, encoding="utf-8") as handle:
            return handle.read()
    except (FileNotFoundError, NotADirectoryError):
        return None


def target_generator(
    name: str, *, attrs: Mapping[str, Attr], doc: str
) -> Callable[[Callable[[GeneratorContext], Sequence[GeneratedTarget]]], GeneratorDef]:
    """Turn a function into a :class:`GeneratorDef`; list it in the module's ``RULES`` too."""

    def wrap(impl: Callable[[GeneratorContext], Sequence[GeneratedTarget]]) -> GeneratorDef:
        return GeneratorDef(name, impl, dict(attrs), doc)

    return wrap


# ---------------------------------------------------------------------------------------------
# Commands: what a rule family adds to the ``pbuild`` command line (``COMMANDS``, beside ``RULES``)


@dataclass(frozen=True)
class BuiltTarget:
    """One target a command had built (:meth:`CommandContext.build_one`)."""

    label: Label
    rule_name: str
    providers: Target
    workspace_root: str

    def path(self, file: File) -> str:
        """The absolute path of one of the target's materialized files."""
        return os.path.join(self.workspace_root, file.path)


class CommandContext(Protocol):
    """What the engine gives a family's command when it runs."""

    @property
    def args(self) -> argparse.Namespace:
        """The command's parsed flags (those :attr:`Command.configure` added, and the engine's)."""
        ...

    @property
    def cwd(self) -> str:
        """The folder ``pbuild`` was started in."""
        ...

    def workspace_root(self) -> str:
        """The workspace (``--workspace``, else found upward from :attr:`cwd`); found once."""
        ...

    def cache_dir(self) -> str:
        """The local cache (``--cache-dir``, else the default); no workspace needed."""
        ...

    def oci_blobs(self) -> BlobStore:
        """The local cache as a store of OCI blobs (sha256-named, verified when served): where
        pulled and loaded images keep their bytes."""
        ...

    def build_one(self, target: str) -> BuiltTarget:
        """Build exactly one target with the command's build flags (a user error for a pattern
        naming several); raises the build's error when it fails."""
        ...

    def out(self, text: str) -> None:
        """Print one line of the command's output (stdout)."""
        ...


def _no_arguments(parser: argparse.ArgumentParser) -> None:
    """The configurer of a command that takes no arguments of its own."""


@dataclass(frozen=True)
class Command:
    """One ``pbuild NAME`` command of a rule family; list it in the family's ``COMMANDS``.

    ``configure`` adds the command's own arguments to its argparse parser; the engine then adds
    ``--workspace`` and ``--cache-dir``, and with ``build_flags`` the flags of ``pbuild build``
    (``-j``, ``-k``, ``--build-event-json``, ``-q``, the remote cache). ``run`` returns the exit
    code; a :class:`PbuildError` it raises becomes a message and an exit code, as for any command.
    Keep the module that defines ``COMMANDS`` light: ``run`` should import what it needs itself.
    """

    name: str
    help: str  # one line, in the list of ``pbuild help``
    description: str  # the head of ``pbuild NAME --help``
    run: Callable[[CommandContext], int]
    configure: Callable[[argparse.ArgumentParser], None] = _no_arguments
    build_flags: bool = False
