"""POST / DELETE server/jobservice: a job's own services (#18), for the burst-buffer plugin.

``?job_id=N&uid=U`` say which job the plugin acts for (api/plugin_identity.py); both are
required here, whoever calls: the endpoint is about one job. Served by worker threads:
the reservation asks Slurm whether the job may have one (job_services.py).
"""

from __future__ import annotations

import falcon

from ..errors import InvalidRequest
from ..job_services import JobServices
from .media import read_json
from .plugin_identity import acting_for
from .reservations import reserve_answer
from .serving import answer_after


def _required(req: falcon.Request, *names: str) -> list[int]:
    """The values of ``names`` (``job_id``, ``uid``), each required."""
    who = acting_for(req, *names)
    out = []
    for name in names:
        value = who[name]
        if value is None:
            raise InvalidRequest(name, "a job-scoped service is the job's: add the query "
                                 "parameter (?job_id=N&uid=U, as Slurm gives them to the "
                                 "burst-buffer plugin)")
        out.append(value)
    return out


class JobService:
    auth_actions = {"POST": "jobservice", "DELETE": "jobservice"}

    def __init__(self, jobs: JobServices):
        self.jobs = jobs

    def on_post(self, req: falcon.Request, resp: falcon.Response) -> None:
        job_id, uid = _required(req, "job_id", "uid")
        rec, ticket = self.jobs.reserve(job_id, uid, read_json(req))
        answer_after(req, ticket)
        resp.media = {**reserve_answer(self.jobs.rm, rec), "scope": "job",
                      "job_id": rec.request.job_id, "type": rec.request.type,
                      "mountpoint": rec.request.mountpoint or ""}

    def on_delete(self, req: falcon.Request, resp: falcon.Response) -> None:
        (job_id,) = _required(req, "job_id")
        names, ticket = self.jobs.release(job_id)
        if ticket is not None:
            answer_after(req, ticket)
        resp.media = {"job_id": job_id, "released": names,
                      "message": f"{len(names)} job-scoped service(s) released"}
