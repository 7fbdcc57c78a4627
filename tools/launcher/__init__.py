"""The image launcher: run OCI images in rootless namespaces over overlayfs, Docker-like.

``main(argv)`` is the whole CLI (``run``, ``ps``, ``logs``, ``exec``, ``stop``, ``rm``); the
engine's ``pbuild run //pkg:image`` calls it in-process after building the image, so this
package keeps its imports light and never imports ``pbuild.engine``.
"""

from __future__ import annotations


def main(argv: list[str]) -> int:
    """Run the launcher CLI with ``argv`` (without the program name); return the exit code."""
    from pbuild.tools.launcher.cli import main as cli_main

    return cli_main(argv)


__all__ = ["main"]
