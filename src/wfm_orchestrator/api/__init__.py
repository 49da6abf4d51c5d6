"""The REST API (Falcon): one module per endpoint group; ``create_app`` wires them."""

from .app import create_app

__all__ = ["create_app"]
