"""OCI images in one place: media types, descriptors, image references, image layouts on disk
and a registry client (transport and auth, push, pull).

The engine's rules, its ``push``/``images`` commands and the launcher all read and write OCI
data through this package, so a layout is validated one way wherever it comes from. Like all
of ``pbuild.lib`` it imports nothing of the engine, the rules or the tools; its errors are
:class:`~pbuild.lib.errors.UserError` subclasses that each front end reports in its own way.
"""
