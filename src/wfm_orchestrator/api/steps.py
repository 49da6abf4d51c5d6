"""step/launch, step/progress, step/status[/{step_id | user_id}], step/abort/{step_id}."""

from __future__ import annotations

from typing import Any

import falcon

from ..auth import visible
from ..config import is_user_name
from ..errors import NoSlurm, NotFound
from ..model import check_name
from ..paging import Page
from ..steps import StepManager
from . import paging
from .auth import identity_of
from .errors import APIError
from .media import read_json
from .serving import answer_after


def _manager(steps: StepManager | None) -> StepManager:
    if steps is None:
        raise NoSlurm()
    return steps


class Launch:
    """POST step/launch: 200 once the step is durably recorded; the rest is asynchronous."""

    auth_actions = {"POST": "step.launch"}

    def __init__(self, steps: StepManager | None):
        self.steps = steps

    def on_post(self, req: falcon.Request, resp: falcon.Response) -> None:
        body, ticket = _manager(self.steps).launch(read_json(req))
        answer_after(req, ticket)
        resp.media = body


class Progress:
    """POST step/progress: a data mover's progress, shown in the step's detail."""

    auth_actions = {"POST": "step.progress"}

    def __init__(self, steps: StepManager | None):
        self.steps = steps

    def on_post(self, req: falcon.Request, resp: falcon.Response) -> None:
        try:
            body, ticket = _manager(self.steps).progress(read_json(req))
        except NotFound as e:
            raise APIError(500, "Step progress failed", f"{e}") from None
        answer_after(req, ticket)
        resp.media = body


class AllStepStatus:
    """Every status the caller may read, oldest first; paged (api/paging.py)."""

    auth_actions = {"GET": "step.read"}

    def __init__(self, steps: StepManager | None):
        self.steps = steps

    def on_get(self, req: falcon.Request, resp: falcon.Response) -> None:
        identity = identity_of(req)
        after, limit = paging.requested(req, "s")
        steps = self.steps
        if steps is None:
            paging.answer(req, resp, Page(), "s", limit)
            return

        def page(after: Any, limit: int | None) -> Page[dict[str, str]]:
            return steps.page(after, limit, lambda s: visible(identity, s.user, "step.read"))

        if paging.streamed(req, limit):
            paging.whole(resp, paging.walk(page, after))
            return
        paging.answer(req, resp, page(after, limit), "s", limit)


class StepStatus:
    """A step name is looked up first; otherwise the segment is a user id (a list, paged
    like every list; ``[]`` for a name no step and no user has: a forgotten step too).

    A step the caller may not read is treated as unknown (its existence is not revealed).
    """

    auth_actions = {"GET": "step.read"}

    def __init__(self, steps: StepManager | None):
        self.steps = steps

    def on_get(self, req: falcon.Request, resp: falcon.Response, ident: str) -> None:
        check_name(ident, "step_id")
        identity = identity_of(req)
        after, limit = paging.requested(req, "s")  # checked whatever the segment names
        status = self.steps.status(ident) if self.steps is not None else None
        if status is not None and visible(identity, status["user"], "step.read"):
            resp.media = status
            return
        if (self.steps is None or not visible(identity, ident, "step.read")
                or not is_user_name(ident)):
            resp.media = []  # as a user id: nothing the caller may read, or no such user
            return
        steps = self.steps

        def page(after: Any, limit: int | None) -> Page[dict[str, str]]:
            return steps.page(after, limit, user=ident)

        if paging.streamed(req, limit):
            paging.whole(resp, paging.walk(page, after))
            return
        paging.answer(req, resp, page(after, limit), "s", limit)


class Abort:
    """DELETE step/abort/{step_id}: cancel every job of the step (idempotent)."""

    auth_actions = {"DELETE": "step.abort"}

    def __init__(self, steps: StepManager | None):
        self.steps = steps

    def on_delete(self, req: falcon.Request, resp: falcon.Response, step_id: str) -> None:
        check_name(step_id, "step_id")
        try:
            body, ticket = _manager(self.steps).abort(step_id)
        except NotFound as e:
            raise APIError(500, "Abort failed", f"{e}: no such step") from None
        answer_after(req, ticket)
        resp.media = body
