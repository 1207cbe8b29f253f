"""A registry node: the composition root that wires core, storage, transport and catalogue.

`loop.Node` is the only code in the project that reads a clock, polls sockets and writes the
disk. It does each Ready's work in the core's order: persist, send, apply, advance.
"""

from .config import ConfigError, NodeConfig
from .loop import Node

__all__ = ["ConfigError", "Node", "NodeConfig"]
