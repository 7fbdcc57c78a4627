"""Unit tests: one module or a few, in process; no pbuild subprocess, no peers."""
