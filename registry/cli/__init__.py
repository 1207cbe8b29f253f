"""The ``registry`` command line: a composition root.

Contract: parse arguments, build what the command needs, delegate, print. No logic that a test
would want to call without the CLI lives here.

Prohibitions: nothing outside ``registry.cli`` imports this package. Heavy imports (the
simulator, later the node) happen inside the command that needs them, so ``registry --help``
stays fast.
"""

__all__: list[str] = []
