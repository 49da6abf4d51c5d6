-- A service for the length of one job (issue #18): the wfm_job directive, the check
-- against the orchestrator's limits file at submission, and the job's life hook by hook
-- (setup reserves, data_in waits, paths exports, teardown releases or keeps at requeue).
local H = require("helper")
local test, eq, ok, contains = H.test, H.eq, H.ok, H.contains

-- The unit tests' cluster (tests/conftest.py SMALL_CONF), as plugin_limits.py writes it.
local LIMITS = [[{"version": 1, "types": ["DASI", "GBF", "NFS", "SBB"],
 "flavors": {"small": {"cores": 2, "msize": 5120, "ssize": 0},
             "large": {"cores": 8, "msize": 16384, "ssize": 1048576}},
 "locations": {"loc1": ["loc2"], "loc2": ["loc1"], "loc3": []},
 "datanodes": [
  {"name": "dn1", "location": "loc1", "cores": 8, "msize": 16384, "ssize": 1048576},
  {"name": "dn2", "location": "loc1", "cores": 8, "msize": 16384, "ssize": 1048576},
  {"name": "dn3", "location": "loc2", "cores": 8, "msize": 16384, "ssize": 1048576},
  {"name": "dn4", "location": "loc2", "cores": 8, "msize": 16384, "ssize": 1048576}]}]]

local ONE = "#!/bin/bash\n#SBATCH -N 2\n#BB_LUA wfm_job type=NFS gssize=1T mountpoint=/mnt/scratch servers=2 name=scratch\nsrun app\n"
local TWO = "#!/bin/bash\n#BB_LUA wfm_job type=NFS gssize=100G mountpoint=/mnt/a name=home\n"
	.. "#BB_LUA wfm_job type=SBB flavor=small targets=/in/*.h5,/ref/* name=bb location=loc1\nsrun app\n"

local function parse(text)
	local _, M = H.load()
	return M.parse_directives(text)
end

test("wfm_job: the keys of the reserve request make the reserve body, sizes as the API takes them", function()
	local spec = assert(parse(ONE))
	eq(spec.kind, "job")
	eq(#spec.services, 1)
	local s = spec.services[1]
	eq(s.short, "scratch"); eq(s.type, "NFS")
	eq(s.body.name, "scratch"); eq(s.body.servers, 2)
	eq(s.body.attributes.gssize, "1T"); eq(s.body.attributes.mountpoint, "/mnt/scratch")
	eq(s.demand.ssize, 524288, "1T over 2 servers, MB each")
	eq(s.demand.cores, 1, "the API's default")
	local two = assert(parse(TWO))
	eq(#two.services, 2)
	eq(two.services[2].body.attributes.flavor, "small")
	eq(table.concat(two.services[2].body.attributes.targets, "|"), "/in/*.h5|/ref/*")
	eq(two.services[2].body.location[1], "loc1")
	local n = assert(parse("#BB_LUA wfm_job type=GBF gssize=512 msize=1.5G cores=0 mountpoint=/m\n"))
	eq(n.services[1].demand.ssize, 512, "a bare number is MB"); eq(n.services[1].body.attributes.gssize, 512)
	eq(n.services[1].demand.msize, 1536); eq(n.services[1].demand.cores, 0)
	eq(n.services[1].short, nil)
end)

local INVALID = {
	{ "#BB_LUA wfm_job gssize=1G\n", "wfm_job: missing type=" },
	{ "#BB_LUA wfm_job type=XFS\n", "type 'XFS' must be SBB, NFS, GBF or DASI" },
	{ "#BB_LUA wfm_job type=NFS mountpoint=/m\n", "gssize is required for type NFS" },
	{ "#BB_LUA wfm_job type=NFS gssize=1G\n", "mountpoint is required for type NFS" },
	{ "#BB_LUA wfm_job type=SBB flavor=small\n", "targets is required for type SBB" },
	{ "#BB_LUA wfm_job type=SBB flavor=small targets=/a cores=2\n", "cores is exclusive with flavor" },
	{ "#BB_LUA wfm_job type=GBF gssize=1G ssize=1G mountpoint=/m\n", "ssize is exclusive with gssize" },
	{ "#BB_LUA wfm_job type=GBF gssize=12X mountpoint=/m\n", "gssize '12X' is not a size" },
	{ "#BB_LUA wfm_job type=GBF gssize=1.G mountpoint=/m\n", "gssize '1.G' is not a size" },
	{ "#BB_LUA wfm_job type=GBF gssize=1G mountpoint=m\n", "mountpoint 'm' must be an absolute path" },
	{ "#BB_LUA wfm_job type=GBF gssize=1G mountpoint=/m servers=0\n", "servers '0' must be a whole number from 1" },
	{ "#BB_LUA wfm_job type=GBF gssize=1G mountpoint=/m cores=2000\n", "cores '2000' must be a whole number from 0 to 1024" },
	{ "#BB_LUA wfm_job type=GBF gssize=1G mountpoint=/m name=a_b\n", "name 'a_b' must be 1 to 32 letters" },
	{ "#BB_LUA wfm_job type=GBF gssize=1G mountpoint=/m name=1x\n", "starting with a letter" },
	{ "#BB_LUA wfm_job type=GBF gssize=1G mountpoint=/m size=3\n", "wfm_job: unknown key 'size'" },
	{ "#BB_LUA wfm_job type=SBB flavor=small targets=/a,,/b\n", "targets has an empty pattern" },
	{ "#BB_LUA wfm_job type=GBF gssize=1G mountpoint=/m location=loc1;x\n", "must be location names" },
	{ "#BB_LUA wfm_job type=GBF gssize=1G mountpoint=/m\n#BB_LUA wfm_job type=GBF gssize=1G mountpoint=/n name=b\n",
		"line 2: wfm_job: a job with several wfm_job lines names each" },
	{ "#BB_LUA wfm_job type=GBF gssize=1G mountpoint=/m name=A\n#BB_LUA wfm_job type=GBF gssize=1G mountpoint=/n name=a\n",
		"line 2: wfm_job: name 'a' is given twice" },
	{ "#BB_LUA wfm_job type=GBF gssize=1G mountpoint=/m\n#BB_LUA wfm_use name=x\n",
		"line 2: wfm_job lines cannot be mixed with other directives" },
	{ "#BB_LUA wfm_service name=x\n#BB_LUA wfm_job type=GBF gssize=1G mountpoint=/m\n",
		"line 2: wfm_job lines cannot be mixed" },
}

test("wfm_job: a bad key or value is rejected naming the line, the key and the value", function()
	for _, case in ipairs(INVALID) do
		local spec, err = parse(case[1])
		eq(spec, nil, case[1])
		contains(err, case[2], case[1])
	end
	local many = {}
	for i = 1, 17 do
		many[i] = "#BB_LUA wfm_job type=GBF gssize=1G mountpoint=/m name=s" .. i
	end
	local _, err = parse(table.concat(many, "\n") .. "\n")
	contains(err, "line 17: wfm_job: more than 16 services")
end)

local function job_process(script_text, opts)
	local ctx = H.setup_env({}, opts)
	local trapped = H.forbid_commands(ctx.env)
	local rc, msg = ctx.env.slurm_bb_job_process(ctx.script(script_text))
	eq(#trapped, 0, "job_process runs no command")
	eq(H.count(ctx.calls, "curl"), 0, "job_process makes no request")
	return rc, msg, ctx
end

test("wfm_job: a request the empty cluster could hold is accepted at submission, judged by the limits file alone", function()
	local rc, msg = job_process(ONE, { limits = LIMITS })
	eq(rc, 0, tostring(msg))
	rc, msg = job_process("#BB_LUA wfm_job type=NFS gssize=4T servers=4 mountpoint=/m\n", { limits = LIMITS })
	eq(rc, 0, "1T on each of the four 1T datanodes: " .. tostring(msg))
end)

test("wfm_job: too large, unknown flavor, unknown location or too many servers: refused naming why", function()
	local cases = {
		{ "#BB_LUA wfm_job type=NFS gssize=5T servers=2 mountpoint=/m\n",
			"can never fit: it needs 2 datanode(s) with 1 cores, 0 MB of memory and 2621440 MB of storage each in any location" },
		{ "#BB_LUA wfm_job type=GBF gssize=1G servers=5 mountpoint=/m\n", "needs 5 datanode(s)" },
		{ "#BB_LUA wfm_job type=GBF gssize=1G mountpoint=/m location=loc3\n", "the 0 candidate datanodes" },
		{ "#BB_LUA wfm_job type=GBF gssize=1G mountpoint=/m location=moon\n", "unknown location 'moon' (valid: loc1, loc2, loc3)" },
		{ "#BB_LUA wfm_job type=SBB flavor=huge targets=/a\n", "unknown flavor 'huge' (valid: large, small)" },
		{ "#BB_LUA wfm_job type=GBF gssize=1G mountpoint=/m cores=9\n", "with 9 cores" },
		{ "#BB_LUA wfm_job type=GBF gssize=1G mountpoint=/m name=a\n#BB_LUA wfm_job type=SBB flavor=large targets=/a servers=5 name=b\n",
			"wfm_job line 2: wfm_job: can never fit" },
	}
	for _, case in ipairs(cases) do
		local rc, msg = job_process(case[1], { limits = LIMITS })
		eq(rc, -1, case[1])
		contains(msg, case[2], case[1])
	end
end)

test("wfm_job: without a limits file only the syntax is checked, and why is logged", function()
	local rc, _, ctx = job_process("#BB_LUA wfm_job type=NFS gssize=50T servers=2 mountpoint=/m\n")
	eq(rc, 0)
	contains(table.concat(ctx.slurm.logs, "\n"), "what can fit is not checked at submission: no limits_file configured")
	rc = job_process("#BB_LUA wfm_job type=NFS gssize=50T mountpoint=/m\n", { limits = "{not json" })
	eq(rc, 0)
end)

-- The life of a wfm_job job --------------------------------------------------

local RESERVED_SCRATCH = { code = 200, body = [[{"name": "alice_job42_scratch", "status": "QUEUED",
 "message": "not enough resources now: queued at position 1", "scope": "job", "job_id": 42,
 "type": "NFS", "mountpoint": "/mnt/scratch"}]] }

local function status(name, st, servers)
	return { code = 200, body = '{"user": "alice", "name": "' .. name .. '", "status": "' .. st
		.. '", "detail": "d", "servers": ' .. (servers or "[]") .. '}' }
end

test("wfm_job: setup reserves for the job and its uid, data_in waits until up, paths exports each service", function()
	local ctx = H.setup_env({
		["POST /v2.0.0/server/jobservice"] = RESERVED_SCRATCH,
		["GET /v1.0.0/ephemeralservice/status/alice_job42_scratch"] = {
			status("alice_job42_scratch", "STAGINGIN"), status("alice_job42_scratch", "STAGINGIN"),
			status("alice_job42_scratch", "ALLOCATED", '["dn1", "dn2"]') },
	}, { wait = 10 })
	local script = ctx.script(ONE)
	eq(ctx.env.slurm_bb_setup("42", "1001", "1001", "", 0, script), 0)
	local post = ctx.calls[1]
	eq(post.method, "POST"); eq(post.params.job_id, "42"); eq(post.params.uid, "1001")
	local body = ctx.M.json.decode(post.body)
	eq(body.name, "scratch"); eq(body.type, "NFS"); eq(body.servers, 2)
	eq(body.attributes.gssize, "1T"); eq(body.user, nil, "the user is the job's, said by Slurm")
	eq(ctx.env.slurm_bb_data_in("42", script), 0)
	eq(H.count(ctx.calls, "sleep"), 2, "polled until ALLOCATED")
	local path_file = ctx.dir .. "/paths"
	eq(ctx.env.slurm_bb_paths("42", script, path_file), 0)
	H.list_eq(H.lines(H.read(path_file)), {
		"WFM_JOB_COUNT=1", "WFM_JOB_SERVICES=alice_job42_scratch",
		"WFM_JOB_0_NAME=alice_job42_scratch", "WFM_JOB_0_TYPE=NFS", "WFM_JOB_0_SERVERS=dn1,dn2",
		"WFM_JOB_0_MOUNTPOINT=/mnt/scratch",
		"WFM_JOB_SCRATCH_NAME=alice_job42_scratch", "WFM_JOB_SCRATCH_TYPE=NFS",
		"WFM_JOB_SCRATCH_SERVERS=dn1,dn2", "WFM_JOB_SCRATCH_MOUNTPOINT=/mnt/scratch",
	})
end)

test("wfm_job: two lines reserve two services; data_in waits for both", function()
	local ctx = H.setup_env({
		["POST /v2.0.0/server/jobservice"] = {
			{ code = 200, body = '{"name": "alice_job7_home", "status": "FREE", "mountpoint": "/mnt/a"}' },
			{ code = 200, body = '{"name": "alice_job7_bb", "status": "FREE", "mountpoint": ""}' } },
		["GET /v1.0.0/ephemeralservice/status/alice_job7_home"] = status("alice_job7_home", "ALLOCATED", '["dn3"]'),
		["GET /v1.0.0/ephemeralservice/status/alice_job7_bb"] = {
			status("alice_job7_bb", "STAGINGIN"), status("alice_job7_bb", "ALLOCATED", '["dn1"]') },
	}, { wait = 10 })
	local script = ctx.script(TWO)
	eq(ctx.env.slurm_bb_setup("7", "1001", "1001", "", 0, script), 0)
	eq(ctx.M.json.decode(ctx.calls[2].body).name, "bb")
	eq(ctx.env.slurm_bb_data_in("7", script), 0)
	local path_file = ctx.dir .. "/paths"
	eq(ctx.env.slurm_bb_paths("7", script, path_file), 0)
	local env = H.read(path_file)
	contains(env, "WFM_JOB_COUNT=2\nWFM_JOB_SERVICES=alice_job7_home,alice_job7_bb\n")
	contains(env, "WFM_JOB_HOME_SERVERS=dn3\n")
	contains(env, "WFM_JOB_BB_SERVERS=dn1\n")
end)

test("wfm_job: the orchestrator's refusal fails setup naming the job, the uid and its rule", function()
	local ctx = H.setup_env({ ["POST /v2.0.0/server/jobservice"] = { code = 403, body =
		'{"title": "Forbidden", "description": "job 42 (uid 1002) may not have a job-scoped service: the job runs as another user", "field": "uid"}' } })
	local rc, msg = ctx.env.slurm_bb_setup("42", "1002", "1002", "", 0, ctx.script(ONE))
	eq(rc, -1)
	contains(msg, "job 42 (uid 1002) may not have its service (wfm_job name=scratch): job 42 (uid 1002) may not")
	ok(not H.exists(ctx.cache_file("42")), "nothing cached")
end)

test("wfm_job: a service that ends while staging in, or is not up within wait, fails data_in with its status", function()
	local ctx = H.setup_env({
		["POST /v2.0.0/server/jobservice"] = RESERVED_SCRATCH,
		["GET /v1.0.0/ephemeralservice/status/alice_job42_scratch"] = status("alice_job42_scratch", "STOPPED"),
	}, { wait = 4 })
	local script = ctx.script(ONE)
	eq(ctx.env.slurm_bb_setup("42", "1001", "1001", "", 0, script), 0)
	local rc, msg = ctx.env.slurm_bb_data_in("42", script)
	eq(rc, -1); contains(msg, "service alice_job42_scratch cannot start: it is STOPPED: d")
	ctx = H.setup_env({
		["POST /v2.0.0/server/jobservice"] = RESERVED_SCRATCH,
		["GET /v1.0.0/ephemeralservice/status/alice_job42_scratch"] = status("alice_job42_scratch", "STAGINGIN"),
	}, { wait = 4 })
	script = ctx.script(ONE)
	eq(ctx.env.slurm_bb_setup("42", "1001", "1001", "", 0, script), 0)
	rc, msg = ctx.env.slurm_bb_data_in("42", script)
	eq(rc, -1)
	contains(msg, "not up (ALLOCATED) after 4 s (the plugin's wait): alice_job42_scratch STAGINGIN: d")
end)

test("wfm_job on Slurm 24.05+: data_in looks once, test_data_in answers BUSY until up, holding no wait", function()
	local st = "GET /v1.0.0/ephemeralservice/status/alice_job42_scratch"
	local ctx = H.setup_env({
		["POST /v2.0.0/server/jobservice"] = RESERVED_SCRATCH,
		[st] = { status("alice_job42_scratch", "QUEUED"), status("alice_job42_scratch", "STAGINGIN"),
			status("alice_job42_scratch", "ALLOCATED", '["dn1", "dn2"]') },
	}, { wait = 100 })
	ctx.slurm.SLURM_BB_BUSY = "BUSY"
	local script = ctx.script(ONE)
	eq(ctx.env.slurm_bb_setup("42", "1001", "1001", "", 0, script), 0)
	eq(ctx.env.slurm_bb_data_in("42", script, "1001", "1001", {}), 0, "data_in returns at once")
	eq(H.count(ctx.calls, "sleep"), 0, "and never sleeps: Slurm polls test_data_in")
	local rc, busy = ctx.env.slurm_bb_test_data_in("42", script, "1001", "1001", {})
	eq(rc, 0); eq(busy, "BUSY", "STAGINGIN: still busy")
	rc, busy = ctx.env.slurm_bb_test_data_in("42", script, "1001", "1001", {})
	eq(rc, 0); eq(busy, nil, "ALLOCATED: stage-in complete")
	eq(H.count(ctx.calls, "sleep"), 0)
	local rec = assert(ctx.M.read_cache(ctx.M.load_config(), "42"))
	eq(rec.services[1].status, "ALLOCATED"); eq(rec.services[1].servers[2], "dn2")
end)

test("wfm_job on Slurm 24.05+: a service that ends while test_data_in polls fails it with its status", function()
	local ctx = H.setup_env({
		["POST /v2.0.0/server/jobservice"] = RESERVED_SCRATCH,
		["GET /v1.0.0/ephemeralservice/status/alice_job42_scratch"] = {
			status("alice_job42_scratch", "QUEUED"), status("alice_job42_scratch", "STOPPED") },
	})
	ctx.slurm.SLURM_BB_BUSY = "BUSY"
	local script = ctx.script(ONE)
	eq(ctx.env.slurm_bb_setup("42", "1001", "1001", "", 0, script), 0)
	eq(ctx.env.slurm_bb_data_in("42", script, "1001", "1001", {}), 0)
	local rc, msg = ctx.env.slurm_bb_test_data_in("42", script, "1001", "1001", {})
	eq(rc, -1); contains(msg, "service alice_job42_scratch cannot start: it is STOPPED: d")
end)

local RELEASED = { code = 200, body = '{"job_id": 42, "released": ["alice_job42_scratch"], "message": "1"}' }

test("wfm_job teardown: an ended job releases its services by job id, cache or not, and again is success", function()
	for _, state in ipairs({ "COMPLETED", "FAILED", "CANCELLED", "TIMEOUT", "GONE" }) do
		local ctx = H.setup_env({ ["DELETE /v2.0.0/server/jobservice"] = {
			RELEASED, { code = 200, body = '{"job_id": 42, "released": [], "message": "0"}' } } },
			{ job_state = state })
		local script = ctx.script(ONE)
		eq(ctx.env.slurm_bb_job_teardown("42", script, false), 0, state)
		local del = ctx.calls[#ctx.calls]
		eq(del.method, "DELETE"); eq(del.query, "job_id=42")
		eq(ctx.env.slurm_bb_job_teardown("42", script, false), 0, state .. " again")
	end
end)

test("wfm_job teardown at a requeue: COMPLETING is read again until PENDING, and the services are kept", function()
	local ctx = H.setup_env({}, { job_state = { "COMPLETING", "COMPLETING", "PENDING" }, wait = 10 })
	eq(ctx.env.slurm_bb_job_teardown("42", ctx.script(ONE), false), 0)
	eq(H.count(ctx.calls, "curl"), 0, "nothing released")
	eq(H.count(ctx.calls, "sleep"), 2)
	contains(table.concat(ctx.slurm.logs, "\n"), "will run again: its job-scoped services are kept")
	ctx = H.setup_env({ ["DELETE /v2.0.0/server/jobservice"] = RELEASED },
		{ job_state = { "COMPLETING", "COMPLETED" }, wait = 10 })
	eq(ctx.env.slurm_bb_job_teardown("42", ctx.script(ONE), false), 0)
	eq(H.count(ctx.calls, "curl"), 1, "the real end releases")
	ctx = H.setup_env({}, { job_state = "COMPLETING", wait = 4 })
	local rc, msg = ctx.env.slurm_bb_job_teardown("42", ctx.script(ONE), false)
	eq(rc, -1); contains(msg, "still COMPLETING after 4 s")
end)

test("wfm_job teardown: an orchestrator error fails it (Slurm retries) and keeps the cache", function()
	local ctx = H.setup_env({
		["POST /v2.0.0/server/jobservice"] = RESERVED_SCRATCH,
		["DELETE /v2.0.0/server/jobservice"] = { code = 500, body = '{"title": "x", "description": "store down"}' },
	})
	local script = ctx.script(ONE)
	eq(ctx.env.slurm_bb_setup("42", "1001", "1001", "", 0, script), 0)
	local rc, msg = ctx.env.slurm_bb_job_teardown("42", script, false)
	eq(rc, -1); contains(msg, "unexpected HTTP status 500")
	ok(H.exists(ctx.cache_file("42")))
end)

test("wfm_job: the hooks take 24.11's arguments too (uid, gid, job_info)", function()
	local ctx = H.setup_env({
		["POST /v2.0.0/server/jobservice"] = RESERVED_SCRATCH,
		["GET /v1.0.0/ephemeralservice/status/alice_job42_scratch"] = status("alice_job42_scratch", "ALLOCATED", '["dn1"]'),
		["DELETE /v2.0.0/server/jobservice"] = RELEASED,
	}, { limits = LIMITS, wait = 4 })
	local script = ctx.script(ONE)
	local info = { job_id = 42 }
	eq(ctx.env.slurm_bb_job_process(script, "1001", "1001", info), 0)
	eq(ctx.env.slurm_bb_setup("42", "1001", "1001", "", 0, script, info), 0)
	eq(ctx.env.slurm_bb_data_in("42", script, "1001", "1001", info), 0)
	eq(ctx.env.slurm_bb_test_data_in("42", script, "1001", "1001", info), 0)
	eq(ctx.env.slurm_bb_paths("42", script, ctx.dir .. "/p", "1001", "1001", info), 0)
	eq(ctx.env.slurm_bb_job_teardown("42", script, false, "1001", "1001", info), 0)
	ok(not H.exists(ctx.cache_file("42")))
end)
