"""Authentication and authorization at the edge: one Falcon middleware.

Each resource declares ``auth_actions``: HTTP method -> action of
``wfm_orchestrator.auth`` (``PUBLIC`` for documents anyone may read). A
method without a declared action is refused to everyone but ``admin``, so a
new endpoint is closed until someone decides who may call it. Reads of
owned items (``service.read``, ``step.read``) are let through here and
checked item by item by the resource with ``visible()``.
"""

from __future__ import annotations

import logging

import falcon

from ..auth import ANONYMOUS_ADMIN, AuthError, Identity, KeysNotCached, TokenVerifier, authorize
from ..config import Config
from .errors import APIError
from .serving import HandToWorker, loop_request

log = logging.getLogger("wfm_orchestrator.auth")

PUBLIC = "public"
OWNER_CHECKED = frozenset({"service.read", "step.read"})
_WHO_MAY = {
    "reserve": "session-manager", "service.release": "session-manager",
    "allocation": "burst-buffer", "resources": "admin", "step.launch": "session-manager",
    "step.abort": "session-manager", "step.progress": "datamover", "metrics": "metrics",
}


def identity_of(req: falcon.Request) -> Identity:
    return getattr(req.context, "identity", ANONYMOUS_ADMIN)


def build_verifier(config: Config) -> TokenVerifier | None:
    if config.auth != "keycloak":
        return None
    roles = {"session-manager": config.role_session_manager,
             "burst-buffer": config.role_burst_buffer,
             "datamover": config.role_datamover, "metrics": config.role_metrics,
             "admin": config.role_admin}
    return TokenVerifier(config.keycloak_server, config.keycloak_realm,
                         config.keycloak_audience, roles)


class Authorization:
    def __init__(self, verifier: TokenVerifier | None):
        self.verifier = verifier

    def process_resource(self, req: falcon.Request, resp: falcon.Response, resource,
                         params) -> None:
        if resource is None or not hasattr(resource, f"on_{req.method.lower()}"):
            return  # 404 / 405 answered by Falcon
        action = getattr(resource, "auth_actions", {}).get(req.method)
        if action == PUBLIC or req.method == "OPTIONS":
            return
        identity = self._authenticate(req)
        req.context.identity = identity
        if action is None:
            if not identity.has("admin"):
                log.warning("%s %s: no authorization rule; refused to %s", req.method,
                            req.path, identity.user)
                raise APIError(403, "Forbidden", f"{req.method} {req.path} is reserved to "
                                                 "the admin role")
            return
        if action in OWNER_CHECKED:
            return
        if not authorize(identity, action):
            role = _WHO_MAY.get(action, "admin")
            raise APIError(403, "Forbidden", f"{req.method} {req.path} needs the {role} role "
                                             f"(or admin); {identity.user} has neither")

    def _authenticate(self, req: falcon.Request) -> Identity:
        if self.verifier is None:
            return ANONYMOUS_ADMIN
        on_loop = loop_request(req) is not None
        try:
            # The event loop must not wait for the identity provider.
            return self.verifier.verify(req.get_header("Authorization"), fetch=not on_loop)
        except KeysNotCached as e:
            raise HandToWorker(str(e)) from None
        except AuthError as e:
            log.info("%s %s: authentication refused: %s", req.method, req.path, e.reason)
            raise APIError(e.status, "Unauthorized" if e.status == 401 else
                           "Authentication unavailable", e.message,
                           headers={"WWW-Authenticate": e.www_authenticate}) from None
