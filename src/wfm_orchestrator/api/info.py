"""Configuration read by the Session Manager: location/list and ephemeralservice/flavors."""

from __future__ import annotations

import falcon

from ..config import Config


class Locations:
    nonblocking = True  # may be served on the server's event loop (api/serving.py)
    auth_actions = {"GET": "config.read"}

    def __init__(self, config: Config):
        self.body = [{"name": name} for name in config.locations]

    def on_get(self, req: falcon.Request, resp: falcon.Response) -> None:
        resp.media = self.body


class Flavors:
    nonblocking = True  # may be served on the server's event loop (api/serving.py)
    auth_actions = {"GET": "config.read"}

    def __init__(self, config: Config):
        # ssize is always present (0 when the flavor has no storage): the
        # Session Manager reads it unconditionally.
        self.body = [{"name": f.name, "cores": f.cores, "msize": f.msize, "ssize": f.ssize}
                     for f in config.flavors.values()]

    def on_get(self, req: falcon.Request, resp: falcon.Response) -> None:
        resp.media = self.body
