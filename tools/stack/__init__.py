"""Stacks: several containers that work together, Compose's model without a daemon.

- ``spec``: the typed record of a stack (``StackSpec``, one ``ServiceSpec`` per service), as the
  ``stack`` rule and a Compose file both produce it; its JSON form; validation.
- ``parse``: Compose's service keys (the supported subset) -> ``ServiceSpec``, shared by the
  ``stack`` rule and ``compose``, so a service means the same written in either.
- ``compose``: a Compose file (the supported subset) -> ``StackSpec``; ``interpolate``: its
  ``${VAR:-default}`` variables.
- ``network``: the per-stack network: a holder process that owns the stack's user namespace and
  a bridge. The launcher does the joining (``launcher/join.py``: one network namespace, veth and
  address per service, ``/etc/hosts``; ``launcher/netlink.py``; published ports through
  ``launcher/forward.py``), so this package builds on the launcher and never the reverse.
- ``state``: a stack's records under the launcher's runtime directory; named volumes.
- ``supervisor``: one process per stack (as conmon is per container): starts services in order,
  health checks, restart policies, log collection; ``up``/``down``/``ps``/``logs`` talk to it.
  Its parts: ``service`` (a service -> the launcher's ``RunOptions``; restart policies),
  ``health`` (checks run in the container; Docker's healthy/unhealthy rule), ``logs`` (the
  timestamped log files and their interleaving), ``control`` (the control socket's protocol),
  ``teardown`` (stopping and removing, also after the supervisor crashed).
- ``client``: ``up``, ``down``, ``ps`` and ``logs`` as the command line calls them.

Like the launcher, this package imports nothing of ``pbuild.engine`` or ``pbuild.rules``: the
``stack`` family (``pbuild.rules.stack``) builds the images and hands over a resolved spec.
"""
