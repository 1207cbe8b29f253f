"""DNS zone settings for the registry's DNS responder.

The responder lands in this folder, which installs under the import name ``registry_dns``
(setuptools ``package-dir``). NB: the folder deliberately has no ``__init__.py``, so that it can
never shadow dnspython's top-level ``dns`` package, even when the repository root is on
``sys.path``. Import it as ``registry_dns.zone``; inside this folder use relative imports.

Contract: this package reads only committed, applied state (a ``CatalogueView``) and never
imports ``registry.raft``, ``registry.storage``, ``registry.node``, ``registry.transport``,
``registry.sim`` or ``registry.cli``.
"""

#: The zone the responder answers for when none is configured. Absolute (trailing dot), so a
#: service ``web`` is served as ``web.registry.``.
DEFAULT_DOMAIN = "registry."
