"""CLI tests: the real ``pbuild`` command on small fixture workspaces."""
