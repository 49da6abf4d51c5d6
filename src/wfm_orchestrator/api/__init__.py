"""The REST API (Falcon): one module per endpoint group; ``create_app`` wires them."""

from .app import build_api, create_app

__all__ = ["build_api", "create_app"]
