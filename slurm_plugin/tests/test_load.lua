-- Loading the script and Slurm's contract with it.
local H = require("helper")
local test, eq, ok, contains = H.test, H.eq, H.ok, H.contains

local HOOKS = {
	"slurm_bb_job_process", "slurm_bb_pools", "slurm_bb_job_teardown",
	"slurm_bb_setup", "slurm_bb_data_in", "slurm_bb_real_size",
	"slurm_bb_paths", "slurm_bb_pre_run", "slurm_bb_post_run",
	"slurm_bb_data_out", "slurm_bb_get_status",
	-- required by Slurm 24.05+ before it loads the script
	"slurm_bb_test_data_in", "slurm_bb_test_data_out",
}

test("the script defines all 13 slurm_bb_* hooks of Slurm 22.05 and 24.05+", function()
	local env = H.load()
	eq(#HOOKS, 13)
	for _, name in ipairs(HOOKS) do
		eq(type(rawget(env, name)), "function", name)
	end
end)

test("loading returns no value (Slurm reads a returned number as a load failure)", function()
	local _, _, rets = H.load()
	eq(#rets, 0)
end)

test("loading runs no command and defines only the hooks and wfm_bb as globals", function()
	local env = setmetatable({}, { __index = _G })
	env.slurm = H.fake_slurm()
	local trapped = H.forbid_commands(env)
	local chunk = assert(loadfile(H.script))
	setfenv(chunk, env)
	chunk()
	eq(#trapped, 0)
	for k in pairs(env) do
		if k ~= "slurm" and k ~= "io" and k ~= "os" and k ~= "wfm_bb" then
			ok(k:match("^slurm_bb_"), "unexpected global " .. k)
		end
	end
end)

test("slurm_bb_pools returns SUCCESS and valid JSON with an empty pools list", function()
	local env, M = H.load()
	local rc, text = env.slurm_bb_pools()
	eq(rc, env.slurm.SUCCESS)
	eq(type(text), "string")
	ok(text ~= "", "pools must not be empty (slurmctld logs 'Problem parsing')")
	local v = assert(M.json.decode(text))
	ok(M.json.is_array(v.pools), "pools is a JSON array")
	eq(#v.pools, 0)
	eq(text, '{"pools":[]}')
end)

test("hooks with nothing to do return SUCCESS without running anything", function()
	local ctx = H.setup_env({})
	local e, S = ctx.env, ctx.slurm.SUCCESS
	local script = ctx.script(H.SERVICE_SCRIPT)
	eq(e.slurm_bb_data_in("7", script), S)
	eq(e.slurm_bb_test_data_in("7", script, "1000", "1000", {}), S)
	eq(e.slurm_bb_real_size("7"), S)
	eq(e.slurm_bb_pre_run("7", script), S)
	eq(e.slurm_bb_post_run("7", script), S)
	eq(e.slurm_bb_data_out("7", script), S)
	eq(e.slurm_bb_test_data_out("7", script, "1000", "1000", {}), S)
	eq(#ctx.calls, 0)
end)

test("the hooks that run inside slurmctld (job_process, pools, paths) run no command, with 22.05 or 24.11 arguments", function()
	local ctx = H.setup_env({ ["GET /v2.0.0/server/allocation/u_s_nfs"] = { code = 200, body = H.ALLOC_OK } })
	local script = ctx.script(H.SERVICE_SCRIPT)
	eq(ctx.env.slurm_bb_setup("9", "1000", "1000", "", "0", script), 0)
	local n = #ctx.calls
	local trapped = H.forbid_commands(ctx.env)
	ctx.M.run = function(argv) error("runner called from a slurmctld hook: " .. argv[1]) end
	eq(ctx.env.slurm_bb_job_process(script), 0)
	-- 24.11 passes uid, gid and job_info too: still no call (locks held)
	eq(ctx.env.slurm_bb_job_process(script, 1000, 1000, {}), 0)
	eq((ctx.env.slurm_bb_pools()), 0)
	eq(ctx.env.slurm_bb_paths("9", script, ctx.dir .. "/path"), 0)
	eq(#trapped, 0, "io.popen/os.execute calls")
	eq(#ctx.calls, n)
end)

test("a Lua error inside a hook becomes slurm.ERROR with a message, not a crash", function()
	local ctx = H.setup_env({})
	ctx.M.run = function() error("boom") end
	local rc, msg = ctx.env.slurm_bb_setup("9", "1000", "1000", "", "0", ctx.script(H.SERVICE_SCRIPT))
	eq(rc, ctx.slurm.ERROR)
	contains(msg, "internal error")
	contains(msg, "boom")
end)

test("an invalid job id is refused before any command runs", function()
	local ctx = H.setup_env({})
	local script = ctx.script(H.SERVICE_SCRIPT)
	for _, id in ipairs({ "1;id", "", "$(id)", "12 3", "../1" }) do
		local rc, msg = ctx.env.slurm_bb_setup(id, "1000", "1000", "", "0", script)
		eq(rc, ctx.slurm.ERROR, id)
		contains(msg, "invalid job id")
		rc = ctx.env.slurm_bb_job_teardown(id, script, "false")
		eq(rc, ctx.slurm.ERROR, id)
		rc = ctx.env.slurm_bb_paths(id, script, ctx.dir .. "/p")
		eq(rc, ctx.slurm.ERROR, id)
	end
	eq(#ctx.calls, 0)
end)

test("an invalid uid is refused by setup, naming it, before any request (service and step jobs)", function()
	local ctx = H.setup_env({})
	local scripts = { ctx.script(H.SERVICE_SCRIPT, "service"),
		ctx.script("#!/bin/bash\n#BB_LUA wfm_use name=u_s_nfs\nsrun app\n", "step") }
	for _, script in ipairs(scripts) do
		for _, uid in ipairs({ "", "-1", "1;id", "1.5", "1000&job_id=1", "$(id)", "1 0", "1234567890123" }) do
			local rc, msg = ctx.env.slurm_bb_setup("9", uid, "1000", "", "0", script)
			eq(rc, ctx.slurm.ERROR, uid)
			contains(msg, "invalid uid '" .. uid .. "'", uid)
		end
		local rc, msg = ctx.env.slurm_bb_setup("9", nil, "1000", "", "0", script)
		eq(rc, ctx.slurm.ERROR)
		contains(msg, "invalid uid ''")
	end
	eq(#ctx.calls, 0)
end)
