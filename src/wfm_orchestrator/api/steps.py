"""step/launch, step/progress, step/status[/{step_id | user_id}], step/abort/{step_id}."""

from __future__ import annotations

import falcon

from ..errors import InvalidRequest, NoSlurm, NotFound
from ..model import check_name, check_user
from ..steps import StepManager
from .errors import APIError


def _manager(steps: StepManager | None) -> StepManager:
    if steps is None:
        raise NoSlurm()
    return steps


class Launch:
    """POST step/launch: 200 once the step is durably recorded; the rest is asynchronous."""

    def __init__(self, steps: StepManager | None):
        self.steps = steps

    def on_post(self, req: falcon.Request, resp: falcon.Response) -> None:
        resp.media = _manager(self.steps).launch(req.get_media())


class Progress:
    """POST step/progress: a data mover's progress, shown in the step's detail."""

    def __init__(self, steps: StepManager | None):
        self.steps = steps

    def on_post(self, req: falcon.Request, resp: falcon.Response) -> None:
        try:
            resp.media = _manager(self.steps).progress(req.get_media())
        except NotFound as e:
            raise APIError(500, "Step progress failed", f"{e}") from None


class AllStepStatus:
    def __init__(self, steps: StepManager | None):
        self.steps = steps

    def on_get(self, req: falcon.Request, resp: falcon.Response) -> None:
        resp.media = self.steps.statuses() if self.steps is not None else []


class StepStatus:
    """A step name is looked up first; otherwise the segment is a user id (a list)."""

    def __init__(self, steps: StepManager | None):
        self.steps = steps

    def on_get(self, req: falcon.Request, resp: falcon.Response, ident: str) -> None:
        check_name(ident, "step_id")
        status = self.steps.status(ident) if self.steps is not None else None
        if status is not None:
            resp.media = status
            return
        try:
            check_user(ident, "user_id")
        except InvalidRequest:
            raise InvalidRequest(
                "step_id", f"no step named {ident!r}, and it is not a valid user id either"
            ) from None
        resp.media = self.steps.statuses(user=ident) if self.steps is not None else []


class Abort:
    """DELETE step/abort/{step_id}: cancel every job of the step (idempotent)."""

    def __init__(self, steps: StepManager | None):
        self.steps = steps

    def on_delete(self, req: falcon.Request, resp: falcon.Response, step_id: str) -> None:
        check_name(step_id, "step_id")
        try:
            resp.media = _manager(self.steps).abort(step_id)
        except NotFound as e:
            raise APIError(500, "Abort failed", f"{e}: no such step") from None
