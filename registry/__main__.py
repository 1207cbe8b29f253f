"""`python -m registry` runs the `registry` command (used by `registry up` to start agents)."""

from registry.cli.main import app

app(prog_name="registry")
