"""Shared libraries: what the engine, the rule families and the tools all need.

Nothing here imports ``pbuild.engine``, ``pbuild.rules`` or ``pbuild.tools``: the launcher runs
apart from the engine and still uses these (OCI layouts, determinism, atomic writes, errors).
"""
