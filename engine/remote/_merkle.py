"""A :class:`~pbuild.engine.remote.RemoteExecRequest` as REAPI messages: the input root's Merkle
tree of ``Directory`` messages, the ``Command`` and the ``Action``, each as bytes with its
sha256 digest, and where on this machine the bytes of every input file are.

The input root follows :mod:`pbuild.engine.remote.actionformat`: the inputs at their exec-root
paths, the working directory and ``empty_dirs`` present, the toolchain's layer files under
``.pbuild/toolchain/NN/``. Directory messages are canonical as REAPI requires (entries sorted by
name, no duplicates), so the same tree always has the same digest, and the serialization is
protobuf's canonical one (fields in number order, defaults left out): a server recomputing a
digest from its own decoding gets ours.

The ``.pbuild`` subtree of a toolchain is the same for every action on it (thousands per build):
it is built once per toolchain and reused. Input files are hashed with sha256 once ever, through
the :class:`~pbuild.engine.remote._index.Sha256Index` (xxh3 -> sha256).
"""

from __future__ import annotations

import posixpath
import threading
from dataclasses import dataclass

from pbuild.engine.errors import PbuildError
from pbuild.engine.remote import ExecInput, RemoteExecRequest, actionformat
from pbuild.engine.remote._execwire import Action, Command, Directory, DirectoryNode, FileNode, digest_of
from pbuild.engine.remote._index import Sha256Index
from pbuild.engine.remote._wire import Digest


@dataclass(frozen=True)
class FileBlob:
    """An input file's bytes on this machine, for upload."""

    sha256: str
    size: int
    path: str


@dataclass(frozen=True)
class ActionMessages:
    """One action as REAPI messages. ``messages``: sha256 -> encoded bytes of every Directory,
    the Command and the Action; ``files``: sha256 -> the input file blobs (toolchain layers
    included)."""

    action_digest: Digest
    command_digest: Digest
    input_root_digest: Digest
    action: bytes
    command: bytes
    messages: dict[str, bytes]
    files: dict[str, FileBlob]

    def digests(self) -> list[Digest]:
        """Every blob the server needs for this action, messages first."""
        out = [Digest(sha, len(data)) for sha, data in self.messages.items()]
        out.extend(Digest(b.sha256, b.size) for b in self.files.values())
        return out


# --- the input tree ----------------------------------------------------------------------------


class _Dir:
    __slots__ = ("dirs", "files")

    def __init__(self) -> None:
        self.files: dict[str, tuple[Digest, bool]] = {}
        self.dirs: dict[str, _Dir | Digest] = {}  # a Digest: a subtree encoded already


def _place(root: _Dir, path: str, label: str) -> tuple[_Dir, str]:
    """The folder that holds ``path``'s last component (made on the way), and that name."""
    if not path or path.startswith("/") or posixpath.normpath(path) != path or path.split("/")[0] == "..":
        raise PbuildError(f"{label}: input path {path!r} cannot travel to a remote executor",
                          hint="this is a bug in a rule: input paths are relative and normalized")
    parts = path.split("/")
    node = root
    for part in parts[:-1]:
        if part in node.files:
            raise PbuildError(f"{label}: {path} is below {part}, which is a file among the inputs",
                              hint="this is a bug in a rule")
        child = node.dirs.get(part)
        if child is None:
            child = node.dirs[part] = _Dir()
        if not isinstance(child, _Dir):
            raise PbuildError(f"{label}: input {path} is inside the reserved folder {parts[0]}",
                              hint=f"{actionformat.TOOLCHAIN_DIR} is where an action's toolchain travels")
        node = child
    return node, parts[-1]


def _add_dir(root: _Dir, path: str, label: str) -> None:
    if not path:
        return
    parent, name = _place(root, path, label)
    if name in parent.files:
        raise PbuildError(f"{label}: {path} is both a file and a folder among the inputs",
                          hint="this is a bug in a rule")
    parent.dirs.setdefault(name, _Dir())


def _add_file(root: _Dir, path: str, digest: Digest, executable: bool, label: str) -> None:
    parent, name = _place(root, path, label)
    if name in parent.dirs:
        raise PbuildError(f"{label}: {path} is both a file and a folder among the inputs",
                          hint="this is a bug in a rule")
    known = parent.files.get(name)
    if known is not None and known != (digest, executable):
        raise PbuildError(f"{label}: input {path} is given twice with different contents",
                          hint="this is a bug in a rule")
    parent.files[name] = (digest, executable)


def _encode_tree(node: _Dir, messages: dict[str, bytes]) -> Digest:
    """Encode ``node`` bottom-up into ``messages``; its digest. Names sort as UTF-8 bytes,
    which is Python's code-point order."""
    dirs = []
    for name in sorted(node.dirs):
        child = node.dirs[name]
        dirs.append(DirectoryNode(name, child if isinstance(child, Digest) else _encode_tree(child, messages)))
    files = tuple(FileNode(name, *node.files[name]) for name in sorted(node.files))
    data = Directory(files, tuple(dirs)).encode()
    digest = digest_of(data)
    messages[digest.hash] = data
    return digest


class MerkleBuilder:
    """Turns requests into :class:`ActionMessages`; caches each toolchain's subtree. Thread-safe."""

    def __init__(self, sha_index: Sha256Index) -> None:
        self._sha = sha_index
        self._lock = threading.Lock()
        # layer xxh3 digests -> (the .pbuild DirectoryNode's digest, its messages, its files)
        self._toolchains: dict[tuple[str, ...], tuple[Digest, dict[str, bytes], dict[str, FileBlob]]] = {}

    def _blob(self, item: ExecInput) -> FileBlob:
        return FileBlob(self._sha.sha256_for(item.digest, item.local_path), item.size, item.local_path)

    def _toolchain(self, request: RemoteExecRequest) -> tuple[Digest, dict[str, bytes], dict[str, FileBlob]]:
        key = tuple(f.digest for layer in request.toolchain_layers for f in layer)
        with self._lock:
            known = self._toolchains.get(key)
        if known is not None:
            return known
        top = _Dir()
        files: dict[str, FileBlob] = {}
        for index, (blob, meta) in enumerate(request.toolchain_layers):
            for item, path in zip((blob, meta), actionformat.layer_paths(index), strict=True):
                fb = self._blob(item)
                files[fb.sha256] = fb
                # Below the root's .pbuild folder: the paths start with it.
                _add_file(top, path.split("/", 1)[1], Digest(fb.sha256, fb.size), False, request.label)
        messages: dict[str, bytes] = {}
        digest = _encode_tree(top, messages)
        entry = (digest, messages, files)
        with self._lock:
            self._toolchains[key] = entry
        return entry

    def build(self, request: RemoteExecRequest) -> ActionMessages:
        """The messages of ``request`` (hashing with sha256 only inputs never hashed before)."""
        root = _Dir()
        messages: dict[str, bytes] = {}
        files: dict[str, FileBlob] = {}
        if request.toolchain_layers:
            digest, tool_messages, tool_files = self._toolchain(request)
            messages.update(tool_messages)
            files.update(tool_files)
            root.dirs[actionformat.TOOLCHAIN_DIR.split("/", 1)[0]] = digest
        for item in request.inputs:
            fb = self._blob(item)
            files.setdefault(fb.sha256, fb)
            _add_file(root, item.path, Digest(fb.sha256, fb.size), item.executable, request.label)
        for path in (request.workdir, *request.empty_dirs):
            _add_dir(root, path, request.label)
        input_root = _encode_tree(root, messages)
        platform = actionformat.platform_properties(request.host_fingerprint)
        out_files = sorted(actionformat.command_path(p, request.workdir) for p in request.output_files)
        out_dirs = sorted(actionformat.command_path(p, request.workdir) for p in request.output_dirs)
        # The deprecated output_files/output_directories go beside output_paths: servers older
        # than REAPI 2.1 read only those, newer ones only output_paths.
        command = Command(arguments=request.argv, environment=tuple(sorted(request.env)),
                          output_files=tuple(out_files), output_directories=tuple(out_dirs), platform=platform,
                          working_directory=request.workdir,
                          output_paths=tuple(sorted(out_files + out_dirs))).encode()
        command_digest = digest_of(command)
        # do_not_cache stays false: the server's action cache then answers a repeated Execute.
        action = Action(command_digest, input_root, timeout_s=request.timeout_s, platform=platform).encode()
        action_digest = digest_of(action)
        messages[command_digest.hash] = command
        messages[action_digest.hash] = action
        return ActionMessages(action_digest, command_digest, input_root, action, command, messages, files)
