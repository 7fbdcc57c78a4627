"""``pbuild push``: push an image target's layout, report what was sent, refusals as messages."""

from __future__ import annotations

from collections.abc import Callable

from pbuild.lib.errors import UserError
from pbuild.lib.oci.reference import Reference
from pbuild.lib.oci.registry.push import push_layout


def push_main(layout_dir: str, reference: str, *, plain_http: bool, out: Callable[[str], None],
              state_dir: str | None = None) -> int:
    """Push ``layout_dir`` to ``reference``; print a summary or the error; return the exit code."""
    try:
        report = push_layout(layout_dir, reference, plain_http=plain_http, state_dir=state_dir)
    except UserError as exc:
        out(exc.render())
        return exc.exit_code
    out(f"pushed {report.reference}@{report.digest}" if not Reference.parse(reference).digest
        else f"pushed {report.reference}")
    out(f"  {report.blobs_uploaded} blob(s) uploaded ({report.bytes_uploaded:,} bytes, {_human(report.bytes_uploaded)}), "
        f"{report.blobs_skipped} already present, {report.blobs_mounted} mounted from other repositories")
    out(f"  {report.manifests_pushed} manifest(s) and index(es) pushed")
    for artifact in report.artifacts:
        out(f"  artifact {artifact} (the SBOM of a platform's manifest)")
    for tag in report.referrers_tags:
        out(f"  referrers index tagged {tag} (the registry has no referrers API)")
    return 0


def _human(size: int) -> str:
    value = float(size)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if value < 1024 or unit == "GiB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    return f"{size} B"
