-- Service jobs: slurm_bb_setup and slurm_bb_paths.
local H = require("helper")
local test, eq, ok, contains = H.test, H.eq, H.ok, H.contains

local GET = "GET /v2.0.0/server/allocation/u_s_nfs"

local function setup(ctx, job_id, script)
	return ctx.env.slurm_bb_setup(job_id, "1000", "1000", "", "0", script or ctx.script(H.SERVICE_SCRIPT))
end

local function paths(ctx, job_id)
	local pf = H.write(ctx.dir .. "/path_" .. job_id, "")
	local rc, msg = ctx.env.slurm_bb_paths(job_id, ctx.dir .. "/script", pf)
	return rc, msg, H.read(pf)
end

test("setup of a service job GETs its allocation and caches the answer", function()
	local ctx = H.setup_env({ [GET] = { code = 200, body = H.ALLOC_OK } })
	eq(setup(ctx, "42"), ctx.slurm.SUCCESS)
	eq(#ctx.calls, 1)
	eq(ctx.calls[1].method, "GET")
	eq(ctx.calls[1].path, "/v2.0.0/server/allocation/u_s_nfs")
	local rec = assert(ctx.M.json.decode(assert(H.read(ctx.cache_file("42")))))
	eq(rec.kind, "service"); eq(rec.name, "u_s_nfs"); eq(rec.job_id, "42")
	eq(rec.allocation.properties[1].server_name, "dn1")
	eq(H.exists(ctx.cache_file("42") .. ".tmp"), false, "no temp file left")
	contains(table.concat(ctx.slurm.logs, "\n"), "job 42 service u_s_nfs: reservation ALLOCATED")
end)

test("setup of a service job sends its job id and uid (GET allocation?job_id=N&uid=U)", function()
	local ctx = H.setup_env({ [GET] = { code = 200, body = H.ALLOC_OK } })
	-- Slurm passes "%u" strings; a Lua number must give the same query
	eq(ctx.env.slurm_bb_setup("42", 1001, 1001, "", 0, ctx.script(H.SERVICE_SCRIPT)), ctx.slurm.SUCCESS)
	eq(ctx.calls[1].query, "job_id=42&uid=1001")
	eq(ctx.calls[1].url, "http://orch.example:8080/v2.0.0/server/allocation/u_s_nfs?job_id=42&uid=1001")
end)

-- The orchestrator's 403s (contract of #15 item 1), as its API edge writes them.
local function refusal(description)
	return { code = 403, body = '{"title": "Forbidden", "description": "' .. description
		.. '", "message": "' .. description .. '", "field": "job_id"}' }
end

test("setup refused (403) holds the job with 'job N (uid U) may not bind reservation X: <rule>' and caches nothing", function()
	local ctx = H.setup_env({ [GET] = refusal("job 42 (uid 1000, alice) may not bind reservation u_s_nfs: "
		.. "it belongs to another user (a job binds only its owner's reservations)") }, { retries = 2 })
	local rc, msg = setup(ctx, "42")
	eq(rc, ctx.slurm.ERROR)
	eq(msg, "job 42 (uid 1000) may not bind reservation u_s_nfs: "
		.. "it belongs to another user (a job binds only its owner's reservations)")
	eq(H.exists(ctx.cache_file("42")), false)
	eq(H.count(ctx.calls, "curl"), 1, "an HTTP answer is not retried")
	contains(table.concat(ctx.slurm.logs, "\n"), "error: burst_buffer.lua: job 42: setup: job 42 (uid 1000) may not bind")
end)

test("the field prefix of the orchestrator's description is dropped (its body names the field)", function()
	local d = "uid: job 42 (uid 1000) may not bind reservation u_s_nfs: it belongs to another user"
	local body = '{"title": "Forbidden", "description": "' .. d .. '", "field": "uid"}'
	local ctx = H.setup_env({ [GET] = { code = 403, body = body } })
	local rc, msg = setup(ctx, "42")
	eq(rc, ctx.slurm.ERROR)
	eq(msg, "job 42 (uid 1000) may not bind reservation u_s_nfs: it belongs to another user")
end)

test("a 403 for another rule, or worded otherwise, gives the orchestrator's description whole", function()
	local cases = {
		{ refusal("job 42 (uid 1000, u) may not bind reservation u_s_nfs: job 42 is not the service job "
			.. "the orchestrator submitted for it (job 40)"),
			"job 42 (uid 1000) may not bind reservation u_s_nfs: job 42 is not the service job the orchestrator submitted for it (job 40)" },
		{ refusal("GET /v2.0.0/server/allocation/u_s_nfs needs the burst-buffer role (or admin); x has neither"),
			"job 42 (uid 1000) may not bind reservation u_s_nfs: GET /v2.0.0/server/allocation/u_s_nfs needs the burst-buffer role (or admin); x has neither" },
		{ refusal("job 43 (uid 1000, u) may not bind reservation u_s_nfs: not this job"),
			"job 42 (uid 1000) may not bind reservation u_s_nfs: job 43 (uid 1000, u) may not bind reservation u_s_nfs: not this job" },
		{ { code = 403, body = "" },
			"job 42 (uid 1000) may not bind reservation u_s_nfs: refused by the orchestrator (HTTP 403, no description)" },
	}
	for _, c in ipairs(cases) do
		local ctx = H.setup_env({ [GET] = c[1] })
		local rc, msg = setup(ctx, "42")
		eq(rc, ctx.slurm.ERROR, c[2])
		eq(msg, c[2])
		eq(H.exists(ctx.cache_file("42")), false, c[2])
	end
end)

test("setup re-run answered 200 for the same job (orchestrator knows the job) is handled like any 200", function()
	local ctx = H.setup_env({ [GET] = { { code = 200, body = H.ALLOC_OK }, { code = 200, body = H.ALLOC_OK } } })
	eq(setup(ctx, "42"), 0)
	local before = H.read(ctx.cache_file("42"))
	eq(setup(ctx, "42"), ctx.slurm.SUCCESS)
	eq(H.read(ctx.cache_file("42")), before)
	eq(ctx.calls[2].query, "job_id=42&uid=1000")
	local _, _, text = paths(ctx, "42")
	H.list_eq(H.lines(text), H.ALLOC_ENV)
end)

test("paths exports the cached allocation as KEY=VALUE lines", function()
	local ctx = H.setup_env({ [GET] = { code = 200, body = H.ALLOC_OK } })
	eq(setup(ctx, "42"), 0)
	local rc, _, text = paths(ctx, "42")
	eq(rc, ctx.slurm.SUCCESS)
	H.list_eq(H.lines(text), H.ALLOC_ENV)
	eq(text:sub(-1), "\n")
	-- paths is idempotent: a second run writes the same file
	local rc2, _, text2 = paths(ctx, "42")
	eq(rc2, 0); eq(text2, text)
end)

test("setup creates the cache directory when it is missing", function()
	local ctx = H.setup_env({ [GET] = { code = 200, body = H.ALLOC_OK } }, { no_cache_dir = true })
	eq(H.exists(ctx.cache_dir), false)
	eq(setup(ctx, "42"), 0)
	eq(H.count(ctx.calls, "mkdir"), 1)
	ok(H.exists(ctx.cache_file("42")))
end)

test("setup answers 409 with 'reservation <name> is still queued'", function()
	local ctx = H.setup_env({ [GET] = { code = 409, body = '{"title": "Conflict", "description": "queued, position 3"}' } })
	local rc, msg = setup(ctx, "42")
	eq(rc, ctx.slurm.ERROR)
	contains(msg, "reservation u_s_nfs is still queued")
	contains(msg, "queued, position 3")
	eq(H.exists(ctx.cache_file("42")), false)
end)

test("setup answers 500 with 'reservation <name> does not exist'", function()
	local ctx = H.setup_env({ [GET] = { code = 500, body = "" } })
	local rc, msg = setup(ctx, "42")
	eq(rc, ctx.slurm.ERROR)
	contains(msg, "reservation u_s_nfs does not exist")
end)

test("setup answers 501 without a cache of this job with an error", function()
	local ctx = H.setup_env({ [GET] = { code = 501, body = "" } })
	local rc, msg = setup(ctx, "42")
	eq(rc, ctx.slurm.ERROR)
	contains(msg, "reservation u_s_nfs is already ALLOCATED and job 42 has no cached allocation")
end)

test("setup re-run (501 already ALLOCATED, orchestrator older than job_id) succeeds with this job's cache and keeps it", function()
	local ctx = H.setup_env({ [GET] = { { code = 200, body = H.ALLOC_OK }, { code = 501, body = "" } } })
	eq(setup(ctx, "42"), 0)
	local before = H.read(ctx.cache_file("42"))
	eq(setup(ctx, "42"), ctx.slurm.SUCCESS)
	eq(H.read(ctx.cache_file("42")), before)
	local _, _, text = paths(ctx, "42")
	H.list_eq(H.lines(text), H.ALLOC_ENV)
end)

test("a 501 does not reuse the cache of another job or another service", function()
	local ctx = H.setup_env({ [GET] = { { code = 200, body = H.ALLOC_OK }, { code = 501, body = "" } } })
	eq(setup(ctx, "42"), 0)
	local rc = setup(ctx, "43")
	eq(rc, ctx.slurm.ERROR)
end)

test("setup rejects allocation answers that are malformed or unsafe, and caches nothing", function()
	local bad = {
		{ "not json", "is not JSON" },
		{ "[]", "not a JSON object" },
		{ '{"name": "other", "servers": 1, "properties": [{"server_name": "dn1"}]}', "names 'other'" },
		{ '{"name": "u_s_nfs", "servers": 2, "properties": [{"server_name": "dn1"}]}', "servers=2 but lists 1" },
		{ '{"name": "u_s_nfs", "servers": 0, "properties": []}', "lists no servers" },
		{ '{"name": "u_s_nfs", "properties": {"a": 1}}', "no 'properties' list" },
		{ '{"name": "u_s_nfs", "servers": 1, "properties": [{"server_name": "dn1\\nX=1"}]}', "unsafe characters" },
		{ '{"name": "u_s_nfs", "servers": 1, "properties": [{"server_name": "dn1;id"}]}', "unsafe characters" },
		{ '{"name": "u_s_nfs", "servers": 1, "properties": [{"server_name": "dn1", "cores": -1}]}', "cores is not a non-negative integer" },
		{ '{"name": "u_s_nfs", "servers": 1, "properties": [{"server_name": "dn1", "msize": "5"}]}', "msize" },
		{ '{"name": "u_s_nfs", "servers": 1, "properties": [{"server_name": "dn1", "core_list": [0, 1.5]}]}', "core_list" },
	}
	for _, c in ipairs(bad) do
		local ctx = H.setup_env({ [GET] = { code = 200, body = c[1] } })
		local rc, msg = setup(ctx, "42")
		eq(rc, ctx.slurm.ERROR, c[1])
		contains(msg, c[2], c[1])
		eq(H.exists(ctx.cache_file("42")), false, c[1])
	end
end)

test("setup retries a transport failure, then reports the orchestrator unreachable", function()
	local ctx = H.setup_env({ [GET] = { { transport = true }, { transport = true }, { transport = true } } }, { retries = 2 })
	local rc, msg = setup(ctx, "42")
	eq(rc, ctx.slurm.ERROR)
	contains(msg, "cannot reach the orchestrator at http://orch.example:8080")
	contains(msg, "Connection refused")
	eq(H.count(ctx.calls, "curl"), 3)
	eq(H.count(ctx.calls, "sleep"), 2)
end)

test("setup succeeds when a retry gets through", function()
	local ctx = H.setup_env({ [GET] = { { transport = true }, { code = 200, body = H.ALLOC_OK } } }, { retries = 1 })
	eq(setup(ctx, "42"), ctx.slurm.SUCCESS)
end)

test("an unexpected HTTP status is reported with its code", function()
	local ctx = H.setup_env({ [GET] = { code = 401, body = '{"title": "Unauthorized", "description": "bad token"}' } })
	local rc, msg = setup(ctx, "42")
	eq(rc, ctx.slurm.ERROR)
	contains(msg, "unexpected HTTP status 401: Unauthorized: bad token")
end)

test("paths without a cache fails with a clear message", function()
	local ctx = H.setup_env({})
	local rc, msg = paths(ctx, "77")
	eq(rc, ctx.slurm.ERROR)
	contains(msg, "no cached allocation for job 77")
	eq(#ctx.calls, 0)
end)

test("paths with a corrupt cache fails with a clear message", function()
	local ctx = H.setup_env({})
	H.write(ctx.cache_file("77"), "{not json")
	local rc, msg = paths(ctx, "77")
	eq(rc, ctx.slurm.ERROR)
	contains(msg, "is unreadable")
	H.write(ctx.cache_file("77"), '{"version": 1, "job_id": "77", "kind": "service", "name": "x", "allocation": {"name": "x", "properties": [{"server_name": "a b"}]}}')
	rc, msg = paths(ctx, "77")
	eq(rc, ctx.slurm.ERROR)
	contains(msg, "unsafe characters")
end)
