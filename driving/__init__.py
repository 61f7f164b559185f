"""liquid-drive workflows: collect → train → evaluate → explain, and the `driving` CLI."""

__version__ = "0.1.0"
