"""A small OCI distribution API client, split by job: :mod:`.transport` (HTTP, auth,
credentials), :mod:`.push` (a layout to a registry) and :mod:`.pull` (a pinned image into a
layout, its blobs kept in a store the caller passes)."""
