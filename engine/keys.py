"""Action keys: xxh3-128 over everything that can change an action's outputs.

The key material is canonical JSON (sorted keys, no spaces) of: the action kind and version,
argv or function name and params, environment, input paths with their digests, output paths,
and the root the action runs on: for an action with a toolchain the digests of the toolchain's
layers (their content, not their paths or the toolchain's label), else, for actions that run
host tools, the host fingerprint. The same material's sha256 names the action in a remote cache.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping, Sequence

from pbuild.engine.api import Action, InProcessAction, ProcessAction
from pbuild.engine.hashing import digest_bytes, host_fingerprint
from pbuild.lib.determinism import canonical_json
from pbuild.lib.digest import ContentDigest, Sha256Hex

# Bump when the meaning of a key changes (sandbox layout, environment, ...).
ENGINE_KEY_VERSION = "pbuild-action-v1"


def key_material(action: Action, input_digests: Mapping[str, ContentDigest], env: Mapping[str, str],
                 base_env: Mapping[str, str] | None = None,
                 toolchain_digests: Sequence[ContentDigest] = ()) -> bytes:
    """``env`` is the action's own environment, ``base_env`` the fixed one every action gets
    (it carries SOURCE_DATE_EPOCH, which in-process actions read too); ``toolchain_digests``
    are the digests of ``action.toolchain.files`` in order."""
    inputs = [[f.path, input_digests[f.path]] for f in action.inputs]
    outputs = [[f.path, f.is_directory] for f in action.outputs]
    if isinstance(action, ProcessAction):
        body: dict[str, object] = {
            "kind": "process",
            "argv": list(action.argv),
            "env": sorted(env.items()),
            "workdir": action.workdir,
            "salt": action.salt,
            "stdout_to": action.stdout_to,
        }
        if action.host_tools and action.toolchain is None:
            body["host"] = host_fingerprint()
    else:
        assert isinstance(action, InProcessAction)
        body = {
            "kind": "in-process",
            "function": action.function_name,
            "version": action.version,
            "params": action.params,
        }
    if action.toolchain is not None:
        # Host actions keep their material as it was (no new key), so no version bump is needed.
        body["toolchain"] = list(toolchain_digests)
    body["engine"] = ENGINE_KEY_VERSION
    body["base_env"] = sorted((base_env or {}).items())
    body["inputs"] = inputs
    body["outputs"] = outputs
    return canonical_json(body, ascii_only=True)


def action_key(material: bytes) -> ContentDigest:
    """The key that names an action in the local action cache."""
    return digest_bytes(material)


def remote_key(material: bytes) -> Sha256Hex:
    """The sha256 that names this action in a remote cache (Bazel's caches speak sha256)."""
    return Sha256Hex(hashlib.sha256(material).hexdigest())
