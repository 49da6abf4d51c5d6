-- Step jobs using services.
local H = require("helper")
local test, eq, ok, contains = H.test, H.eq, H.ok, H.contains

local STEP = "#!/bin/bash\n#BB_LUA wfm_use name=u_s_nfs hint=RO\n#BB_LUA wfm_use name=u_s_sbb\nsrun app\n"
local function status(name, st, extra)
	return { code = 200, body = '{"user": "u", "name": "' .. name .. '", "status": "' .. st
		.. '", "detail": "d", "time": "2024-01-01T00:00:00Z"' .. (extra or "") .. '}' }
end

-- The orchestrator's 500 for a service that is unknown or not the uid's.
local NOT_THEIRS = '{"title": "Request failed", "description": "no service u_s_sbb of uid 1000 (u): '
	.. 'a job may use only its own user\'s services"}'

local function setup(ctx, job_id)
	return ctx.env.slurm_bb_setup(job_id, "1000", "1000", "", "0", ctx.script(STEP))
end

test("setup of a step job checks each service's status and paths exports them", function()
	local ctx = H.setup_env({
		["GET /v1.0.0/ephemeralservice/status/u_s_nfs"] = status("u_s_nfs", "ALLOCATED"),
		["GET /v1.0.0/ephemeralservice/status/u_s_sbb"] = status("u_s_sbb", "STAGEDIN"),
	})
	eq(setup(ctx, "50"), ctx.slurm.SUCCESS)
	eq(#ctx.calls, 2)
	local pf = H.write(ctx.dir .. "/path", "")
	eq(ctx.env.slurm_bb_paths("50", ctx.dir .. "/script", pf), 0)
	H.list_eq(H.lines(H.read(pf)), {
		"WFM_SERVICE_COUNT=2",
		"WFM_SERVICES=u_s_nfs,u_s_sbb",
		"WFM_SERVICE_0_NAME=u_s_nfs",
		"WFM_SERVICE_0_HINT=RO",
		"WFM_SERVICE_0_STATUS=ALLOCATED",
		"WFM_SERVICE_1_NAME=u_s_sbb",
		"WFM_SERVICE_1_HINT=RW",
		"WFM_SERVICE_1_STATUS=STAGEDIN",
	})
end)

test("a step's service that is not ALLOCATED or STAGEDIN fails setup with its status and detail", function()
	local ctx = H.setup_env({
		["GET /v1.0.0/ephemeralservice/status/u_s_nfs"] = status("u_s_nfs", "STAGINGIN"),
		["GET /v1.0.0/ephemeralservice/status/u_s_sbb"] = { code = 500, body = NOT_THEIRS },
	})
	local rc, msg = setup(ctx, "50")
	eq(rc, ctx.slurm.ERROR)
	contains(msg, "service u_s_nfs is not usable (status STAGINGIN: d)")
	contains(msg, "; service u_s_sbb is not usable: no service u_s_sbb of uid 1000 (u): a job may use only its own user's services")
	eq(H.exists(ctx.cache_file("50")), false)
end)

test("setup of a step job sends the uid and its job id (its claim) with each status request", function()
	local ctx = H.setup_env({
		["GET /v1.0.0/ephemeralservice/status/u_s_nfs"] = status("u_s_nfs", "ALLOCATED"),
		["GET /v1.0.0/ephemeralservice/status/u_s_sbb"] = status("u_s_sbb", "STAGEDIN"),
	})
	eq(ctx.env.slurm_bb_setup("50", 1001, 1001, "", 0, ctx.script(STEP)), ctx.slurm.SUCCESS)
	eq(ctx.calls[1].query, "uid=1001&job_id=50")
	eq(ctx.calls[2].query, "uid=1001&job_id=50")
end)

test("a 500 without a description still says which service and uid", function()
	local ctx = H.setup_env({
		["GET /v1.0.0/ephemeralservice/status/u_s_nfs"] = status("u_s_nfs", "ALLOCATED"),
		["GET /v1.0.0/ephemeralservice/status/u_s_sbb"] = { code = 500, body = "" },
	})
	local rc, msg = setup(ctx, "50")
	eq(rc, ctx.slurm.ERROR)
	eq(msg, "service u_s_sbb is not usable: no service u_s_sbb of uid 1000 (HTTP 500)")
	eq(H.exists(ctx.cache_file("50")), false)
end)

test("a malformed status answer fails step setup", function()
	local ctx = H.setup_env({
		["GET /v1.0.0/ephemeralservice/status/u_s_nfs"] = { code = 200, body = '{"status": "RUNNING"}' },
		["GET /v1.0.0/ephemeralservice/status/u_s_sbb"] = { code = 200, body = "<html>" },
	})
	local rc, msg = setup(ctx, "50")
	eq(rc, ctx.slurm.ERROR)
	contains(msg, "unknown status 'RUNNING'")
	contains(msg, "not JSON")
end)

test("servers in a status answer are exported as WFM_SERVICE_<i>_SERVERS", function()
	local ctx = H.setup_env({
		["GET /v1.0.0/ephemeralservice/status/u_s_nfs"] = status("u_s_nfs", "ALLOCATED", ', "servers": ["dn1", "dn2"]'),
		["GET /v1.0.0/ephemeralservice/status/u_s_sbb"] = status("u_s_sbb", "ALLOCATED", ', "servers": [{"server_name": "dn3"}]'),
	})
	eq(setup(ctx, "50"), 0)
	local pf = H.write(ctx.dir .. "/path", "")
	eq(ctx.env.slurm_bb_paths("50", ctx.dir .. "/script", pf), 0)
	local text = H.read(pf)
	contains(text, "WFM_SERVICE_0_SERVERS=dn1,dn2\n")
	contains(text, "WFM_SERVICE_1_SERVERS=dn3\n")
end)

test("teardown of a step job removes its cache and calls nothing", function()
	local ctx = H.setup_env({
		["GET /v1.0.0/ephemeralservice/status/u_s_nfs"] = status("u_s_nfs", "ALLOCATED"),
		["GET /v1.0.0/ephemeralservice/status/u_s_sbb"] = status("u_s_sbb", "ALLOCATED"),
	})
	eq(setup(ctx, "50"), 0)
	local n = #ctx.calls
	for _ = 1, 3 do
		eq(ctx.env.slurm_bb_job_teardown("50", ctx.dir .. "/script", "false"), ctx.slurm.SUCCESS)
	end
	eq(H.exists(ctx.cache_file("50")), false)
	eq(#ctx.calls, n)
end)
