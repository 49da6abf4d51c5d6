"""Configuration read by the Session Manager: location/list and ephemeralservice/flavors
(paged like every list, api/paging.py)."""

from __future__ import annotations

import falcon

from ..config import Config
from . import paging


class Locations:
    nonblocking = True  # may be served on the server's event loop (api/serving.py)
    auth_actions = {"GET": "config.read"}

    def __init__(self, config: Config):
        self.config = config
        self._made: tuple[object, list] = (None, [])

    def on_get(self, req: falcon.Request, resp: falcon.Response) -> None:
        locations = self.config.locations  # a reload replaces the mapping
        if req.query_string:
            paging.answer_configured(req, resp, "l", list(locations),
                                     lambda names: [{"name": name} for name in names])
            return
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
        made = self._made[1]
        if req.query_string:
            index = {item["name"]: item for item in made}
            paging.answer_configured(req, resp, "f", list(index),
                                     lambda names: [index[name] for name in names])
            return
        resp.media = made
