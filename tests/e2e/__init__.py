"""End-to-end tests: real peers (registry, nginx, BuildGrid, podman, skopeo, umoci), full image
builds and launcher runs."""
