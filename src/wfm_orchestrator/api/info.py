"""Configuration read by the Session Manager: location/list and ephemeralservice/flavors."""

from __future__ import annotations

import falcon

from ..config import Config


class Locations:
    nonblocking = True  # may be served on the server's event loop (api/serving.py)
    auth_actions = {"GET": "config.read"}

    def __init__(self, config: Config):
        self.config = config
        self._made: tuple[object, list] = (None, [])

    def on_get(self, req: falcon.Request, resp: falcon.Response) -> None:
        locations = self.config.locations  # a reload replaces the mapping
        if self._made[0] is not locations:
            self._made = (locations, [{"name": name} for name in locations])
        resp.media = self._made[1]


class Flavors:
    nonblocking = True  # may be served on the server's event loop (api/serving.py)
    auth_actions = {"GET": "config.read"}

    def __init__(self, config: Config):
        self.config = config
        self._made: tuple[object, list] = (None, [])

    def on_get(self, req: falcon.Request, resp: falcon.Response) -> None:
        flavors = self.config.flavors  # a reload replaces the mapping
        if self._made[0] is not flavors:
            # ssize is always present (0 when the flavor has no storage): the
            # Session Manager reads it unconditionally.
            self._made = (flavors, [{"name": f.name, "cores": f.cores, "msize": f.msize,
                                     "ssize": f.ssize} for f in flavors.values()])
        resp.media = self._made[1]
