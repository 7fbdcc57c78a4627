"""Helpers the test layers share: the CLI runner, real peers, fixture archives and images."""
