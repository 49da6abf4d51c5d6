-- The IO-SEA Session Manager's dialect (issue #17): its exact scripts, and the
-- create, use, destroy and bbstat paths with the orchestrator's answers.
local H = require("helper")
local test, eq, ok, contains = H.test, H.eq, H.ok, H.contains

local SVC = "alice-s1-sbb"
local STATUS = "GET /v1.0.0/ephemeralservice/status/" .. SVC
local RELEASE = "DELETE /v1.0.0/ephemeralservice/release/" .. SVC

-- The Session Manager's files, byte for byte as it writes them (wfm-api 1.6.0).
local CREATE_SBB = "#!/bin/bash\n#SBATCH --output=/tmp/out-create_service-%j.txt\n"
	.. "#SBATCH --error=/tmp/err-create_service-%j.txt\n"
	.. "#BB_LUA SBB create_persistent Name=" .. SVC .. " Flavor=small Targets=/a/*:/b/* Datanodes=1\n"
	.. "srun hostname\n"
local CREATE_NFS = "#!/bin/bash\n#SBATCH --output=/tmp/out-create_service-%j.txt\n"
	.. "#SBATCH --error=/tmp/err-create_service-%j.txt\n"
	.. "#BB_LUA GBF create_persistent Name=alice-s1-nfs StorageSize=2GiB Path=/mnt/nfs"
	.. " FSType=ganesha MetaDataServers=0 StorageDataServers=1 data_dst=/home/alice/ds"
	.. " data_src=/home/alice/ds\nsrun hostname\n"
local DESTROY = "#!/bin/bash\n#SBATCH --output=/tmp/out-destroy_service-%j.txt\n"
	.. "#SBATCH --error=/tmp/err-destroy_service-%j.txt\n"
	.. "#BB_LUA SBB destroy_persistent Name=" .. SVC .. "\nsrun hostname\n"
-- sbatch --bbf inserts the file (#!/bin/bash + the line) after the script's first line.
local STEP_BBF = "#!/bin/bash\n#!/bin/bash\n#BB_LUA SBB use_persistent Name=" .. SVC .. "\n"
	.. "#SBATCH -n 1\nsrun ./app\n"
-- srun --bb "<text>": Slurm writes "#!/bin/bash\n" .. text as the job's script.
local SRUN_CREATE = "#!/bin/bash\n#BB_LUA SBB create_persistent Name=" .. SVC
	.. " Flavor=small Targets=/a/*  "

local function status(st, extra)
	return { code = 200, body = '{"user": "alice", "name": "' .. SVC .. '", "status": "' .. st
		.. '", "detail": "d ' .. st .. '", "time": "2026-12-06T10:00:00Z", "type": "SBB",'
		.. ' "id": 7, "created": "2026-12-06T09:59:58Z"' .. (extra or "") .. '}' }
end
local NOT_THEIRS = { code = 500, body = '{"title": "Service not usable", "description": '
	.. '"no service ' .. SVC .. ' of uid 1002: a job may use only its own user\'s services"}' }

test("the Session Manager's create, destroy and use scripts (sbatch --bbf, srun --bb) parse", function()
	local _, M = H.load()
	local spec = assert(M.parse_directives(CREATE_SBB))
	eq(spec.kind, "create"); eq(spec.name, SVC); eq(spec.type, "SBB")
	spec = assert(M.parse_directives(CREATE_NFS))
	eq(spec.kind, "create"); eq(spec.name, "alice-s1-nfs"); eq(spec.type, "GBF")
	spec = assert(M.parse_directives(DESTROY))
	eq(spec.kind, "destroy"); eq(spec.name, SVC)
	spec = assert(M.parse_directives(STEP_BBF))
	eq(spec.kind, "step"); eq(spec.services[1].name, SVC); eq(spec.services[1].hint, "RW")
	spec = assert(M.parse_directives(SRUN_CREATE))
	eq(spec.kind, "create")
	spec = assert(M.parse_directives("#!/bin/bash\n#BB_LUA SBB use_persistent Name=a\n"
		.. "#BB_LUA wfm_use name=b hint=RO\n"))
	eq(#spec.services, 2)
end)

test("create: setup claims the service with the job and uid, data_in waits until ALLOCATED, teardown releases nothing", function()
	local ctx = H.setup_env({ [STATUS] = { status("STAGINGIN"), status("STAGINGIN"),
		status("STAGEDIN"), status("ALLOCATED") } })
	local script = ctx.script(CREATE_SBB)
	eq(ctx.env.slurm_bb_job_process(script), 0)
	eq(ctx.env.slurm_bb_setup("60", "1001", "1001", "", "0", script), 0)
	eq(ctx.calls[1].query, "uid=1001&job_id=60")
	eq(ctx.env.slurm_bb_data_in("60", script), 0)
	eq(H.count(ctx.calls, "curl"), 4)
	eq(ctx.calls[#ctx.calls].query, "uid=1001")  -- waiting claims nothing more
	local pf = H.write(ctx.dir .. "/path", "")
	eq(ctx.env.slurm_bb_paths("60", script, pf), 0)
	H.list_eq(H.lines(H.read(pf)), { "WFM_SERVICE_NAME=" .. SVC, "WFM_SERVICE_STATUS=ALLOCATED" })
	local n = #ctx.calls
	eq(ctx.env.slurm_bb_job_teardown("60", script, false), 0)
	eq(#ctx.calls, n)  -- no DELETE, no scontrol: the service stays up
	eq(H.exists(ctx.cache_file("60")), false)
end)

test("create for a name the user did not reserve is refused at setup, naming the rule; nothing cached", function()
	local ctx = H.setup_env({ [STATUS] = NOT_THEIRS })
	local rc, msg = ctx.env.slurm_bb_setup("61", "1002", "1002", "", "0", ctx.script(CREATE_SBB))
	eq(rc, ctx.slurm.ERROR)
	contains(msg, "job 61 (uid 1002) may not create service " .. SVC)
	contains(msg, "a job may use only its own user's services")
	eq(H.exists(ctx.cache_file("61")), false)
end)

test("create of a service that cannot start fails data_in with its status and detail; teardown cancels the held job", function()
	local ctx = H.setup_env({ [STATUS] = { status("STAGINGIN"), status("TEARDOWN") } },
		{ job_state = "PENDING" })
	local script = ctx.script(CREATE_SBB)
	eq(ctx.env.slurm_bb_setup("62", "1001", "1001", "", "0", script), 0)
	local rc, msg = ctx.env.slurm_bb_data_in("62", script)
	eq(rc, ctx.slurm.ERROR)
	eq(msg, "service " .. SVC .. " cannot start: it is TEARDOWN: d TEARDOWN")
	eq(H.count(ctx.calls, "scancel"), 0)  -- not inside the hook: Slurm records the reason first
	-- Slurm holds it, then (Flags=TeardownFailure) tears it down: cancelled, so that
	-- the SM's afterany dependents run.
	eq(ctx.env.slurm_bb_job_teardown("62", script, true), 0)
	local last = ctx.calls[#ctx.calls]
	eq(last.prog, "scancel"); eq(last.argv[2], "62")
	eq(H.exists(ctx.cache_file("62")), false)
	-- already stopped at setup: failed there, and cancelled at teardown the same way
	ctx = H.setup_env({ [STATUS] = status("STOPPED") }, { job_state = "PENDING" })
	script = ctx.script(CREATE_SBB)
	rc, msg = ctx.env.slurm_bb_setup("63", "1001", "1001", "", "0", script)
	eq(rc, ctx.slurm.ERROR)
	contains(msg, "cannot start: it is STOPPED: d STOPPED")
	eq(ctx.env.slurm_bb_job_teardown("63", script, true), 0)
	eq(ctx.calls[#ctx.calls].prog, "scancel")
end)

test("teardown of a create job that did not fail cancels nothing", function()
	local ctx = H.setup_env({ [STATUS] = status("ALLOCATED") }, { job_state = "PENDING" })
	local script = ctx.script(CREATE_SBB)
	eq(ctx.env.slurm_bb_setup("65", "1001", "1001", "", "0", script), 0)
	eq(ctx.env.slurm_bb_job_teardown("65", script, true), 0)
	eq(H.count(ctx.calls, "scancel"), 0)
	eq(H.count(ctx.calls, "scontrol"), 0)
end)

test("create waits at most 'wait' seconds, then fails naming the last status", function()
	local polls = {}
	for i = 1, 10 do
		polls[i] = status("STAGINGIN")
	end
	local ctx = H.setup_env({ [STATUS] = polls }, { wait = 4 })
	local script = ctx.script(CREATE_SBB)
	eq(ctx.env.slurm_bb_setup("64", "1001", "1001", "", "0", script), 0)
	local rc, msg = ctx.env.slurm_bb_data_in("64", script)
	eq(rc, ctx.slurm.ERROR)
	contains(msg, "is not up (ALLOCATED) after 4 s (the plugin's wait): STAGINGIN: d STAGINGIN")
	eq(H.count(ctx.calls, "curl"), 1 + 3)  -- setup, then 4 s / 2 s + 1 polls
	eq(H.count(ctx.calls, "sleep"), 2)  -- 2 polls
	eq(H.count(ctx.calls, "scancel"), 0)  -- held: it may still come up (scontrol release)
end)

test("destroy: setup releases the service with the job and uid, data_in waits until STOPPED", function()
	local ctx = H.setup_env({
		[STATUS] = { status("ALLOCATED"), status("STAGINGOUT"), status("STOPPED") },
		[RELEASE] = { code = 200, body = '{"name": "' .. SVC .. '", "message": "release accepted"}' },
	})
	local script = ctx.script(DESTROY)
	eq(ctx.env.slurm_bb_setup("70", "1001", "1001", "", "0", script), 0)
	eq(ctx.calls[2].method, "DELETE")
	eq(ctx.calls[2].query, "job_id=70&uid=1001")
	eq(ctx.env.slurm_bb_data_in("70", script), 0)
	local pf = H.write(ctx.dir .. "/path", "")
	eq(ctx.env.slurm_bb_paths("70", script, pf), 0)
	contains(H.read(pf), "WFM_SERVICE_STATUS=STOPPED")
	eq(ctx.env.slurm_bb_job_teardown("70", script, false), 0)
end)

test("destroy of another user's service is refused at setup and nothing is released", function()
	local ctx = H.setup_env({ [STATUS] = NOT_THEIRS })
	local rc, msg = ctx.env.slurm_bb_setup("71", "1002", "1002", "", "0", ctx.script(DESTROY))
	eq(rc, ctx.slurm.ERROR)
	contains(msg, "job 71 (uid 1002) may not destroy service " .. SVC)
	eq(H.count(ctx.calls, "curl"), 1)  -- no DELETE
end)

test("destroy: a release refused (403 naming uid) fails setup with the rule; a 500 (released meanwhile) does not", function()
	local refused = { code = 403, body = '{"title": "Forbidden", "description": "uid: no service '
		.. SVC .. ' of uid 1001: a job may stop only its own user\'s services", "field": "uid"}' }
	local ctx = H.setup_env({ [STATUS] = status("ALLOCATED"), [RELEASE] = refused })
	local rc, msg = ctx.env.slurm_bb_setup("73", "1001", "1001", "", "0", ctx.script(DESTROY))
	eq(rc, ctx.slurm.ERROR)
	eq(msg, "job 73 (uid 1001) may not destroy service " .. SVC .. ": no service " .. SVC
		.. " of uid 1001: a job may stop only its own user's services")
	local gone = { code = 500, body = '{"title": "Release failed", "description": "service '
		.. SVC .. ' not found: not found or already released"}' }
	ctx = H.setup_env({ [STATUS] = status("ALLOCATED"), [RELEASE] = gone })
	eq(ctx.env.slurm_bb_setup("74", "1001", "1001", "", "0", ctx.script(DESTROY)), 0)
end)

test("destroy of a service already STOPPED sends no release and succeeds (a re-run)", function()
	local ctx = H.setup_env({ [STATUS] = { status("STOPPED"), status("STOPPED") } })
	local script = ctx.script(DESTROY)
	eq(ctx.env.slurm_bb_setup("72", "1001", "1001", "", "0", script), 0)
	eq(ctx.env.slurm_bb_data_in("72", script), 0)
	eq(H.count(ctx.calls, "curl"), 2)
end)

test("a step's use_persistent is a wfm_use: status with uid and job id, env exported", function()
	local ctx = H.setup_env({ [STATUS] = status("ALLOCATED") })
	local script = ctx.script(STEP_BBF)
	eq(ctx.env.slurm_bb_setup("80", "1001", "1001", "", "0", script), 0)
	eq(ctx.calls[1].query, "uid=1001&job_id=80")
	eq(ctx.env.slurm_bb_data_in("80", script), 0)  -- nothing to wait for
	local pf = H.write(ctx.dir .. "/path", "")
	eq(ctx.env.slurm_bb_paths("80", script, pf), 0)
	contains(H.read(pf), "WFM_SERVICE_0_NAME=" .. SVC .. "\n")
end)

local LIST = '[{"user": "alice", "name": "alice-s1-sbb", "status": "ALLOCATED", "detail": "", '
	.. '"time": "2026-12-06T10:00:00Z", "type": "SBB", "id": 7, "created": "2026-12-06T09:59:58Z"},'
	.. '{"user": "bob", "name": "bob-s-nfs", "status": "STAGINGIN", "detail": "", '
	.. '"time": "2026-12-06T10:00:00Z", "type": "NFS", "id": 8, "created": "2026-12-06T10:00:01Z"},'
	.. '{"user": "bob", "name": "bob-s-old", "status": "STOPPED", "detail": "", '
	.. '"time": "2026-12-06T10:00:00Z", "type": "SBB", "id": 2, "created": "2026-12-06T08:00:00Z"}]'

test("bbstat under 22.05 (no uid given) lists every live service in the Session Manager's format", function()
	local ctx = H.setup_env({ ["GET /v1.0.0/ephemeralservice/status"] = { code = 200, body = LIST } })
	local rc, text = ctx.env.slurm_bb_get_status()
	eq(rc, 0)
	eq(text, "FA: BB Type=SBB bbid=7 Name=alice-s1-sbb State=staged-in CreateTime=2026-12-06T09:59:58\n"
		.. "FA: BB Type=NFS bbid=8 Name=bob-s-nfs State=staging-in CreateTime=2026-12-06T10:00:01\n")
	eq(ctx.calls[#ctx.calls].query, nil)
	-- A 22.05 user typing two numbers is not taken for a uid.
	rc, text = ctx.env.slurm_bb_get_status("1002", "1002")
	eq(ctx.calls[#ctx.calls].query, nil)
end)

test("bbstat under 24.11 asks for the asking uid's services only; root sees every one", function()
	local ctx = H.setup_env({ ["GET /v1.0.0/ephemeralservice/status"] = { code = 200, body = "[]" } },
		{ slurm_version = "slurm-wlm 24.11.5" })
	local rc, text = ctx.env.slurm_bb_get_status("1002", "1002")
	eq(rc, 0); eq(text, "")
	eq(ctx.calls[#ctx.calls].query, "uid=1002")
	ctx.env.slurm_bb_get_status("0", "0")
	eq(ctx.calls[#ctx.calls].query, nil)
	local _, t2 = ctx.env.slurm_bb_get_status()
	contains(t2, "Slurm did not say who asks: nothing listed")
end)

test("bbstat 'job <id>' still shows the job's cache, under both argument forms", function()
	local ctx = H.setup_env({ [STATUS] = status("ALLOCATED") })
	eq(ctx.env.slurm_bb_setup("81", "1001", "1001", "", "0", ctx.script(CREATE_SBB)), 0)
	local _, text = ctx.env.slurm_bb_get_status("job", "81")
	contains(text, "job 81:\nWFM_SERVICE_NAME=" .. SVC)
	local _, text2 = ctx.env.slurm_bb_get_status("1001", "1001", "job", "81")
	eq(text2, text)
end)

test("bbstat with the orchestrator unreachable says so", function()
	local ctx = H.setup_env({ ["GET /v1.0.0/ephemeralservice/status"] = { transport = true } })
	local rc, text = ctx.env.slurm_bb_get_status()
	eq(rc, 0)
	contains(text, "cannot reach the orchestrator")
end)

test("the 24.11 hook arguments (uid, gid, job_info after the script) change nothing for create and destroy", function()
	local ctx = H.setup_env({ [STATUS] = status("ALLOCATED") })
	local script = ctx.script(CREATE_SBB)
	eq(ctx.env.slurm_bb_job_process(script, 1001, 1001, {}), 0)
	eq(ctx.env.slurm_bb_setup("82", 1001, 1001, "", 0, script, {}), 0)
	eq(ctx.env.slurm_bb_data_in("82", script, 1001, 1001, {}), 0)
	eq(ctx.env.slurm_bb_test_data_in("82", script, 1001, 1001, {}), 0)
	eq(ctx.env.slurm_bb_job_teardown("82", script, false, 1001, 1001, {}), 0)
	ok(true)
end)

test("create and destroy on Slurm 24.05+: data_in looks once, test_data_in answers BUSY until done", function()
	local ctx = H.setup_env({ [STATUS] = { status("STAGINGIN"), status("STAGINGIN"), status("STAGINGIN"),
		status("ALLOCATED"), status("ALLOCATED"), status("STOPPED"), status("STOPPED") }, [RELEASE] = { code = 200, body = "{}" } }, { wait = 100 })
	ctx.slurm.SLURM_BB_BUSY = "BUSY"
	local script = ctx.script(CREATE_SBB)
	eq(ctx.env.slurm_bb_setup("83", 1001, 1001, "", 0, script, {}), 0)
	eq(ctx.env.slurm_bb_data_in("83", script, 1001, 1001, {}), 0)
	local rc, busy = ctx.env.slurm_bb_test_data_in("83", script, 1001, 1001, {})
	eq(rc, 0); eq(busy, "BUSY")
	rc, busy = ctx.env.slurm_bb_test_data_in("83", script, 1001, 1001, {})
	eq(rc, 0); eq(busy, nil, "ALLOCATED: the create job runs")
	eq(H.count(ctx.calls, "sleep"), 0, "no wait inside a hook")
	script = ctx.script(DESTROY)
	eq(ctx.env.slurm_bb_setup("84", 1001, 1001, "", 0, script, {}), 0)
	eq(ctx.env.slurm_bb_data_in("84", script, 1001, 1001, {}), 0)
	rc, busy = ctx.env.slurm_bb_test_data_in("84", script, 1001, 1001, {})
	eq(rc, 0); eq(busy, nil, "STOPPED: the destroy job runs")
end)

test("22.05 without luaposix: a setup whose data_in will wait ends a second later; with it, 24.05+ and other jobs do not wait", function()
	local function no_posix() return nil, "module 'posix.unistd' not found:" end
	for _, case in ipairs({ { "22.05", nil, no_posix, 1 }, { "22.05 with luaposix", nil, nil, 0 },
		{ "24.11", "BUSY", no_posix, 0 } }) do
		local ctx = H.setup_env({ [STATUS] = status("STAGINGIN") })
		ctx.slurm.SLURM_BB_BUSY = case[2]
		ctx.M.posix = case[3] or ctx.M.posix
		eq(ctx.env.slurm_bb_setup("65", "1001", "1001", "", "0", ctx.script(CREATE_SBB)), 0)
		eq(H.count(ctx.calls, "sleep"), case[4], case[1])
	end
	local ctx = H.setup_env({ ["GET /v2.0.0/server/allocation/u_s_nfs"] = { code = 200, body = H.ALLOC_OK } })
	ctx.M.posix = no_posix
	eq(ctx.env.slurm_bb_setup("66", "1000", "1000", "", "0", ctx.script(H.SERVICE_SCRIPT)), 0)
	eq(H.count(ctx.calls, "sleep"), 0, "a service job's setup: no wait")
end)

test("22.05: a data_in that will wait first closes both ends of every pipe it inherited, never its own", function()
	local ctx = H.setup_env({ [STATUS] = status("ALLOCATED") })
	local script = ctx.script(CREATE_SBB)
	eq(ctx.env.slurm_bb_setup("67", "1001", "1001", "", "0", script), 0)
	-- 7 and 8: another hook's pipe, both ends; 9: this hook's own output (write end only)
	local fake = H.fake_posix({ [7] = 100, [8] = 100, [9] = 200 })
	ctx.M.posix = fake
	eq(ctx.env.slurm_bb_data_in("67", script), 0)
	table.sort(fake.closed)
	H.list_eq(fake.closed, { 7, 8 })
	contains(table.concat(ctx.slurm.logs, "\n"), "debug: burst_buffer.lua: job 67: data_in: closed 2 descriptor(s)")
end)

test("22.05 without luaposix: a waiting data_in says what to install; 24.05+ and a service job's data_in look at no pipe", function()
	local ctx = H.setup_env({ [STATUS] = status("ALLOCATED") })
	local script = ctx.script(CREATE_SBB)
	eq(ctx.env.slurm_bb_setup("68", "1001", "1001", "", "0", script), 0)
	ctx.M.posix = function() return nil, "module 'posix.unistd' not found:" end
	eq(ctx.env.slurm_bb_data_in("68", script), 0)
	contains(table.concat(ctx.slurm.logs, "\n"),
		"error: burst_buffer.lua: job 68: data_in: luaposix is not loadable (module 'posix.unistd' not found:)")
	contains(table.concat(ctx.slurm.logs, "\n"), "install lua-posix")

	ctx = H.setup_env({ [STATUS] = status("ALLOCATED") })
	ctx.slurm.SLURM_BB_BUSY = "BUSY"
	script = ctx.script(CREATE_SBB)
	eq(ctx.env.slurm_bb_setup("69", "1001", "1001", "", "0", script), 0)
	local fake = H.fake_posix({ [7] = 100, [8] = 100 })
	ctx.M.posix = fake
	eq(ctx.env.slurm_bb_data_in("69", script), 0)
	eq(#fake.closed, 0, "24.11: data_in is short, test_data_in waits")

	ctx = H.setup_env({ ["GET /v2.0.0/server/allocation/u_s_nfs"] = { code = 200, body = H.ALLOC_OK } })
	script = ctx.script(H.SERVICE_SCRIPT)
	eq(ctx.env.slurm_bb_setup("70", "1000", "1000", "", "0", script), 0)
	fake = H.fake_posix({ [7] = 100, [8] = 100 })
	ctx.M.posix = fake
	eq(ctx.env.slurm_bb_data_in("70", script), 0)
	eq(#fake.closed, 0, "a service job's data_in does not wait")
end)

test("luaposix (Debian's lua-posix, which deploy/install installs): the real pipes a process holds both ends of are closed, a lone write end is kept", function()
	local env, M = H.load()
	local px, why = M.load_posix()
	H.ok(px, "luaposix is not loadable: apt-get install lua-posix (" .. tostring(why) .. ")")
	local r1, w1 = px.unistd.pipe()
	local r2, w2 = px.unistd.pipe()
	px.unistd.close(r2)
	eq(M.drop_inherited_pipes(px), 2)
	eq(px.stat.stat("/proc/self/fd/" .. r1), nil, "the inherited read end is closed")
	eq(px.stat.stat("/proc/self/fd/" .. w1), nil, "the inherited write end is closed")
	H.ok(px.stat.stat("/proc/self/fd/" .. w2), "a pipe of which only the write end is here is kept")
	eq(M.drop_inherited_pipes(px), 0, "nothing left to close")
	px.unistd.close(w2)
	H.ok(env)
end)
