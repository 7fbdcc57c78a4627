"""Materialization: stored blobs made into files where readers expect them.

Two readers: the workspace, whose ``pbuild-out`` holds each result's outputs (hard links to the
read-only CAS blobs, else copies), and actions, which read generated inputs straight from the
CAS. Neither gets a blob this build cannot vouch for: a blob is served when this build wrote or
verified it, or when the stat index vouches for its path; else it is re-hashed first, and a
damaged one is restored from a verified copy in ``pbuild-out`` or reported.
"""

from __future__ import annotations

import os
import shutil

from pbuild.engine.errors import BuildFailed
from pbuild.engine.hashing import StatIndex
from pbuild.engine.store import ActionResult, LocalStore, OutputRecord, blob_mode
from pbuild.lib.atomicio import publish_file, replace_dir, temp_beside, temp_name
from pbuild.lib.digest import ContentDigest
from pbuild.tools.fstree import remove_tree


def materialize(store: LocalStore, record: OutputRecord, dest: str) -> None:
    """Make ``dest`` hold the blob of ``record``: a hard link to the read-only blob, else a copy."""
    blob = store.blob_path(record.digest, record.executable)
    os.makedirs(os.path.dirname(dest), exist_ok=True)
    with temp_beside(dest) as tmp:
        try:
            os.link(blob, tmp)
        except OSError:  # the cache is on another filesystem
            shutil.copyfile(blob, tmp)
            os.chmod(tmp, blob_mode(record.executable))
        try:
            publish_file(tmp, dest)
        except IsADirectoryError:  # an older result had a directory there
            remove_tree(dest)
            publish_file(tmp, dest)


class Materializer:
    """Materializes results into the workspace at ``root`` and hands actions checked blobs.

    ``intact`` holds the (digest, executable) blobs this build wrote or verified: they are served
    without another check. The scheduler adds the blobs it stores (:meth:`trust`).
    """

    def __init__(self, root: str, store: LocalStore, index: StatIndex) -> None:
        self.root = root
        self.store = store
        self.index = index
        self._intact: set[tuple[ContentDigest, bool]] = set()

    def trust(self, record: OutputRecord) -> None:
        """``record``'s blob was just written from bytes hashed by this build."""
        self._intact.add((record.digest, record.executable))

    def materialize_result(self, res: ActionResult) -> bool:
        """Make pbuild-out hold ``res``'s outputs; False if a blob is missing or damaged.

        A directory output that is not exactly as recorded is rebuilt beside and swapped in whole,
        so files of an older result never linger in it.
        """
        in_dirs: set[str] = set()
        for directory in res.directories:
            prefix = directory + "/"
            records = [r for r in res.outputs if r.path.startswith(prefix)]
            in_dirs.update(r.path for r in records)
            full_dir = os.path.join(self.root, directory)
            if os.path.isdir(full_dir) and not os.path.islink(full_dir) and \
                    _tree_files(full_dir) == {r.path[len(prefix):] for r in records} and \
                    all(self._linked_already(r) for r in records):
                continue
            if not self._materialize_tree(full_dir, directory, records):
                return False
        for record in res.outputs:
            if record.path in in_dirs:
                continue
            if not self._materialize_file(record):
                return False
        return True

    def checked_blob(self, record: OutputRecord) -> str:
        """The CAS blob of a generated input, known intact before an action reads it.

        Materializing an output does not vouch for its blob: with the cache on another
        filesystem, pbuild-out holds copies, and a blob damaged after the copy was made would
        reach the action unseen. So the blob itself is trusted only when this build wrote or
        verified it, or when the stat index vouches for its path; else it is re-hashed (and its
        mode restored). A damaged blob is restored from the verified copy in pbuild-out.
        """
        blob = self.store.blob_path(record.digest, record.executable)
        if (record.digest, record.executable) in self._intact or self.index.lookup(blob) == record.digest:
            return blob
        if not self._verify(record) and not self._restore_blob(record):
            raise BuildFailed(
                f"the cached blob of {record.path} is damaged and pbuild-out holds no intact copy of it",
                hint="build again: the damaged blob was removed, so the action that writes it runs again",
            )
        self.index.record(blob, os.stat(blob), record.digest, output=True)
        return blob

    def refresh_linked(self, record: OutputRecord) -> None:
        """An exec root linked ``record``'s blob: only its ctime changed (see StatIndex)."""
        self.index.refresh_ctime(os.path.join(self.root, record.path))
        self.index.refresh_ctime(self.store.blob_path(record.digest, record.executable))

    def _restore_blob(self, record: OutputRecord) -> bool:
        """Put a damaged blob back from pbuild-out, when the stat index vouches for the output there."""
        dest = os.path.join(self.root, record.path)
        if self.index.lookup(dest) != record.digest:
            return False
        digest, _ = self.store.put_file(dest, executable=record.executable, move=False)
        if digest != record.digest:
            return False
        self.trust(record)
        return True

    def _linked_already(self, record: OutputRecord) -> bool:
        """Whether pbuild-out holds ``record`` (by the stat index, else by sharing the blob's inode)."""
        dest = os.path.join(self.root, record.path)
        if self.index.lookup(dest) == record.digest:
            return True
        try:
            dest_st = os.stat(dest)
            blob_st = os.stat(self.store.blob_path(record.digest, record.executable))
        except OSError:
            return False
        if (dest_st.st_ino, dest_st.st_dev) != (blob_st.st_ino, blob_st.st_dev):
            return False
        # Linked, but not as indexed: the blob may have been damaged or chmod-ed in place (through
        # this link or another). Check it once; that also restores its mode, so stat it again.
        if not self._verify(record):
            return False
        self.index.record(dest, os.stat(dest), record.digest, output=True)
        return True

    def _verify(self, record: OutputRecord) -> bool:
        """Re-hash ``record``'s blob (restoring its mode); remember it as intact for this build."""
        if not self.store.verify_blob(record.digest, record.executable):
            return False
        self.trust(record)
        return True

    def _materialize_file(self, record: OutputRecord) -> bool:
        if self._linked_already(record):
            return True
        if not self._verify(record):
            return False
        dest = os.path.join(self.root, record.path)
        materialize(self.store, record, dest)
        self.index.record(dest, os.stat(dest), record.digest, output=True)
        return True

    def _materialize_tree(self, full_dir: str, directory: str, records: list[OutputRecord]) -> bool:
        """Build the directory beside its place from the records, then swap it in."""
        for record in records:
            if not self._verify(record):
                return False
        os.makedirs(os.path.dirname(full_dir), exist_ok=True)
        staging = temp_name(full_dir)
        old = None
        try:
            os.makedirs(staging)
            for record in records:
                materialize(self.store, record, os.path.join(staging, record.path[len(directory) + 1:]))
            old = replace_dir(staging, full_dir)
        finally:
            remove_tree(staging, ignore_errors=True)  # left only when the swap failed
            if old is not None:
                remove_tree(old, ignore_errors=True)
        for record in records:
            dest = os.path.join(self.root, record.path)
            self.index.record(dest, os.stat(dest), record.digest, output=True)
        return True


def _tree_files(top: str) -> set[str]:
    """Paths (relative to ``top``) of the files and links below ``top``."""
    found: set[str] = set()
    stack = [("", top)]
    while stack:
        rel, path = stack.pop()
        with os.scandir(path) as entries:
            for entry in entries:
                name = f"{rel}{entry.name}"
                if entry.is_dir(follow_symlinks=False):
                    stack.append((name + "/", entry.path))
                else:
                    found.add(name)
    return found
