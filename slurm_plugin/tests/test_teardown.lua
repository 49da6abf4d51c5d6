-- Service-job teardown: idempotent release of the reservation.
local H = require("helper")
local test, eq, ok, contains = H.test, H.eq, H.ok, H.contains

local GET = "GET /v2.0.0/server/allocation/u_s_nfs"
local DELETE = "DELETE /v2.0.0/server/allocation/u_s_nfs"

local function bound(routes, opts)
	routes[GET] = routes[GET] or { code = 200, body = H.ALLOC_OK }
	local ctx = H.setup_env(routes, opts)
	ctx.script_path = ctx.script(H.SERVICE_SCRIPT)
	eq(ctx.env.slurm_bb_setup("42", "1000", "1000", "", "0", ctx.script_path), 0)
	return ctx
end

local function teardown(ctx, hurry)
	return ctx.env.slurm_bb_job_teardown("42", ctx.script_path, hurry or "false")
end

test("teardown DELETEs the allocation (200) and removes the cache", function()
	local ctx = bound({ [DELETE] = { code = 200, body = "" } })
	eq(teardown(ctx), ctx.slurm.SUCCESS)
	local last = ctx.calls[#ctx.calls]
	eq(last.method, "DELETE")
	eq(last.path, "/v2.0.0/server/allocation/u_s_nfs")
	eq(H.exists(ctx.cache_file("42")), false)
	contains(table.concat(ctx.slurm.logs, "\n"), "job 42 service u_s_nfs: reservation released")
end)

test("teardown's DELETE names the job (allocation?job_id=N), not the uid", function()
	local ctx = bound({ [DELETE] = { code = 200 } })
	eq(teardown(ctx), 0)
	local last = ctx.calls[#ctx.calls]
	eq(last.method, "DELETE")
	eq(last.query, "job_id=42")
end)

-- The orchestrator's answer when job 42 did not bind the reservation.
local NOT_BOUND = { code = 403, body = '{"title": "Forbidden", "description": "job 42 did not bind '
	.. 'reservation u_s_nfs (job 40 did): nothing released", "field": "job_id"}' }

test("teardown answered 403 (this job did not bind it) succeeds at once: logged, cache removed, no retry", function()
	local ctx = bound({ [DELETE] = { NOT_BOUND } }, { retries = 2 })
	eq(teardown(ctx), ctx.slurm.SUCCESS)
	eq(H.count(ctx.calls, "curl"), 2, "setup's GET and one DELETE")
	eq(H.count(ctx.calls, "sleep"), 0)
	eq(H.exists(ctx.cache_file("42")), false)
	local logs = table.concat(ctx.slurm.logs, "\n")
	contains(logs, "info: burst_buffer.lua: job 42 service u_s_nfs: nothing released: "
		.. "the orchestrator says this job did not bind the reservation (job 42 did not bind "
		.. "reservation u_s_nfs (job 40 did): nothing released)")
	H.not_contains(logs, "error:")
	H.not_contains(logs, "reservation released")
end)

test("a 403 that is not about job_id (the token lost its role) is an error: cache kept, Slurm retries", function()
	local role = { code = 403, body = '{"title": "Forbidden", "description": "DELETE needs the '
		.. 'burst-buffer role (or admin); x has neither"}' }
	local ctx = bound({ [DELETE] = { role } })
	eq(teardown(ctx), ctx.slurm.ERROR)
	eq(H.exists(ctx.cache_file("42")), true)
	H.not_contains(table.concat(ctx.slurm.logs, "\n"), "nothing released")
end)

test("a job whose script names someone else's reservation (no cache) tears down without releasing it", function()
	local ctx = H.setup_env({ [DELETE] = { NOT_BOUND } })
	local rc = ctx.env.slurm_bb_job_teardown("42", ctx.script(H.SERVICE_SCRIPT), "true")
	eq(rc, ctx.slurm.SUCCESS)
	eq(H.count(ctx.calls, "curl"), 1)
	eq(ctx.calls[#ctx.calls].query, "job_id=42")
	contains(table.concat(ctx.slurm.logs, "\n"), "nothing released")
end)

test("teardown treats 502 (allocation not found) as already released", function()
	local ctx = bound({ [DELETE] = { code = 502, body = "" } })
	eq(teardown(ctx, "true"), ctx.slurm.SUCCESS)
	eq(H.exists(ctx.cache_file("42")), false)
end)

test("teardown run three times succeeds every time (200, then 502, 502)", function()
	local ctx = bound({ [DELETE] = { { code = 200 }, { code = 502 }, { code = 502 } } })
	eq(teardown(ctx), 0)
	eq(teardown(ctx), 0)
	eq(teardown(ctx, "true"), 0)
	eq(H.count(ctx.calls, "curl"), 4)
end)

test("teardown without a cache takes the service name from the job script", function()
	local ctx = H.setup_env({ [DELETE] = { code = 502 } })
	local rc = ctx.env.slurm_bb_job_teardown("42", ctx.script(H.SERVICE_SCRIPT), "true")
	eq(rc, ctx.slurm.SUCCESS)
	eq(ctx.calls[#ctx.calls].path, "/v2.0.0/server/allocation/u_s_nfs")
end)

test("teardown with neither cache nor readable script has nothing to release", function()
	local ctx = H.setup_env({})
	eq(ctx.env.slurm_bb_job_teardown("42", ctx.dir .. "/gone", "true"), ctx.slurm.SUCCESS)
	eq(#ctx.calls, 0)
end)

test("teardown reports a failed DELETE (500) and keeps the cache for the retry", function()
	local ctx = bound({ [DELETE] = { code = 500, body = '{"title": "Internal", "description": "db locked"}' } })
	local rc, msg = teardown(ctx)
	eq(rc, ctx.slurm.ERROR)
	contains(msg, "unexpected HTTP status 500: Internal: db locked")
	ok(H.exists(ctx.cache_file("42")))
end)

test("teardown of a job Slurm will stage in again keeps the reservation and the cache", function()
	for _, state in ipairs({ "PENDING", "REQUEUED", "REQUEUE_HOLD" }) do
		local ctx = bound({}, { job_state = state })
		eq(teardown(ctx, "true"), ctx.slurm.SUCCESS, state)
		eq(H.count(ctx.calls, "curl"), 1, state) -- only setup's GET
		ok(H.exists(ctx.cache_file("42")), state)
	end
end)

test("slurmctld restart: teardown of the pending job, then setup again (501) and paths work", function()
	local ctx = bound({ [GET] = { { code = 200, body = H.ALLOC_OK }, { code = 501 } } }, { job_state = "PENDING" })
	eq(teardown(ctx, "true"), 0)
	eq(ctx.env.slurm_bb_setup("42", "1000", "1000", "", "0", ctx.script_path), ctx.slurm.SUCCESS)
	local pf = H.write(ctx.dir .. "/path", "")
	eq(ctx.env.slurm_bb_paths("42", ctx.script_path, pf), 0)
	H.list_eq(H.lines(H.read(pf)), H.ALLOC_ENV)
end)

test("teardown releases when Slurm no longer knows the job", function()
	local ctx = bound({ [DELETE] = { code = 200 } }, { job_state = "GONE" })
	eq(teardown(ctx), ctx.slurm.SUCCESS)
	eq(ctx.calls[#ctx.calls].method, "DELETE")
end)

test("teardown fails without releasing when scontrol cannot tell the job state", function()
	local ctx = bound({}, { job_state = "FAIL" })
	local rc, msg = teardown(ctx)
	eq(rc, ctx.slurm.ERROR)
	contains(msg, "scontrol show job 42 failed")
	eq(H.count(ctx.calls, "curl"), 1)
	ok(H.exists(ctx.cache_file("42")))
end)

test("teardown of a completed, cancelled or completing job releases", function()
	for _, state in ipairs({ "COMPLETED", "CANCELLED", "COMPLETING", "STAGE_OUT", "FAILED", "TIMEOUT" }) do
		local ctx = bound({ [DELETE] = { code = 200 } }, { job_state = state })
		eq(teardown(ctx), ctx.slurm.SUCCESS, state)
		eq(ctx.calls[#ctx.calls].method, "DELETE", state)
	end
end)

test("teardown with an unreachable orchestrator fails and keeps the cache", function()
	local ctx = bound({ [DELETE] = { transport = true } })
	local rc, msg = teardown(ctx)
	eq(rc, ctx.slurm.ERROR)
	contains(msg, "cannot reach the orchestrator")
	ok(H.exists(ctx.cache_file("42")))
end)
