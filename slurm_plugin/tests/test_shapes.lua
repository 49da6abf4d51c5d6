-- One script for Slurm 22.05 and 24.11: the same job lives, hook by hook, with
-- each version's arguments (burst_buffer_lua.c of slurm-22-05 and
-- slurm-24-11-0-1: 24.11 adds uid, gid and a job_info table to most hooks;
-- Slurm passes numbers as "%u" strings).
local H = require("helper")
local test, eq, contains = H.test, H.eq, H.contains

-- A job_info as 24.11 pushes it (a table indexed by field name).
local JOB_INFO = { job_id = 42, user_id = 1000, user_name = "u", group_id = 1000,
	partition = "data", comment = "", name = "es" }

-- hook -> function(env, job) calling it with the version's arguments.
local SHAPES = {
	["22.05"] = {
		job_process = function(e, j) return e.slurm_bb_job_process(j.script) end,
		setup = function(e, j) return e.slurm_bb_setup(j.id, "1000", "1000", "", "0", j.script) end,
		data_in = function(e, j) return e.slurm_bb_data_in(j.id, j.script) end,
		real_size = function(e, j) return e.slurm_bb_real_size(j.id) end,
		paths = function(e, j) return e.slurm_bb_paths(j.id, j.script, j.path_file) end,
		pre_run = function(e, j) return e.slurm_bb_pre_run(j.id, j.script) end,
		post_run = function(e, j) return e.slurm_bb_post_run(j.id, j.script) end,
		data_out = function(e, j) return e.slurm_bb_data_out(j.id, j.script) end,
		teardown = function(e, j) return e.slurm_bb_job_teardown(j.id, j.script, "false") end,
	},
	["24.11"] = {
		job_process = function(e, j) return e.slurm_bb_job_process(j.script, "1000", "1000", JOB_INFO) end,
		setup = function(e, j) return e.slurm_bb_setup(j.id, "1000", "1000", "", "0", j.script, JOB_INFO) end,
		data_in = function(e, j) return e.slurm_bb_data_in(j.id, j.script, "1000", "1000", JOB_INFO) end,
		test_data_in = function(e, j) return e.slurm_bb_test_data_in(j.id, j.script, "1000", "1000", JOB_INFO) end,
		real_size = function(e, j) return e.slurm_bb_real_size(j.id, "1000", "1000", JOB_INFO) end,
		paths = function(e, j) return e.slurm_bb_paths(j.id, j.script, j.path_file, "1000", "1000", JOB_INFO) end,
		pre_run = function(e, j) return e.slurm_bb_pre_run(j.id, j.script, "1000", "1000", JOB_INFO) end,
		post_run = function(e, j) return e.slurm_bb_post_run(j.id, j.script, "1000", "1000", JOB_INFO) end,
		data_out = function(e, j) return e.slurm_bb_data_out(j.id, j.script, "1000", "1000", JOB_INFO) end,
		test_data_out = function(e, j) return e.slurm_bb_test_data_out(j.id, j.script, "1000", "1000", JOB_INFO) end,
		teardown = function(e, j) return e.slurm_bb_job_teardown(j.id, j.script, "false", "1000", "1000") end,
	},
}
local ORDER = { "job_process", "setup", "data_in", "test_data_in", "real_size", "paths",
	"pre_run", "post_run", "data_out", "test_data_out", "teardown" }

-- Run a job's whole life with one version's shapes: every hook's result and the
-- exported environment.
-- Slurm 24.11 (_handle_lua_return) fails a hook whose second value is there but not
-- a string ("Cannot handle non-string as second return value"): nil included.
local function checked(hook, ...)
	local n = select("#", ...)
	if n >= 2 then
		eq(type((select(2, ...))), "string", hook .. "'s second return value")
	end
	return (...)
end

local function life(version, routes, text)
	local ctx = H.setup_env(routes)
	if version ~= "22.05" then
		ctx.slurm.SLURM_BB_BUSY = "BUSY" -- defined by 24.05+ only
	end
	local job = { id = "42", script = ctx.script(text), path_file = H.write(ctx.dir .. "/path", "") }
	local results = {}
	for _, hook in ipairs(ORDER) do
		local call = SHAPES[version][hook]
		if call then
			results[#results + 1] = hook .. "=" .. tostring(checked(hook, call(ctx.env, job)))
		end
	end
	return ctx, results, H.read(job.path_file)
end

for _, version in ipairs({ "22.05", "24.11" }) do
	test("a service job's whole life with Slurm " .. version .. "'s hook arguments: bound with job and uid, env exported, released by its job", function()
		local ctx, results, env = life(version, {
			["GET /v2.0.0/server/allocation/u_s_nfs"] = { code = 200, body = H.ALLOC_OK },
			["DELETE /v2.0.0/server/allocation/u_s_nfs"] = { code = 200, body = "" },
		}, H.SERVICE_SCRIPT)
		for _, r in ipairs(results) do
			eq(r:match("=(.*)$"), "0", r)
		end
		H.list_eq(H.lines(env), H.ALLOC_ENV)
		local http = {}
		for _, c in ipairs(ctx.calls) do
			if c.prog == "curl" then
				http[#http + 1] = c.method .. " " .. c.path .. "?" .. (c.query or "")
			end
		end
		H.list_eq(http, { "GET /v2.0.0/server/allocation/u_s_nfs?job_id=42&uid=1000",
			"DELETE /v2.0.0/server/allocation/u_s_nfs?job_id=42" })
		eq(H.exists(ctx.cache_file("42")), false, "cache removed at teardown")
	end)

	test("a step job's whole life with Slurm " .. version .. "'s hook arguments: status asked with the uid", function()
		local ctx, results, env = life(version, {
			["GET /v1.0.0/ephemeralservice/status/u_s_nfs"] = { code = 200, body =
				'{"user": "u", "name": "u_s_nfs", "status": "ALLOCATED", "detail": "d", "time": "t"}' },
		}, "#!/bin/bash\n#BB_LUA wfm_use name=u_s_nfs hint=RO\nsrun app\n")
		for _, r in ipairs(results) do
			eq(r:match("=(.*)$"), "0", r)
		end
		contains(env, "WFM_SERVICE_0_NAME=u_s_nfs")
		contains(env, "WFM_SERVICE_0_STATUS=ALLOCATED")
		eq(ctx.calls[1].params.uid, "1000")
	end)

	test("a refused binding holds the job the same way with Slurm " .. version .. "'s arguments", function()
		local ctx = H.setup_env({ ["GET /v2.0.0/server/allocation/u_s_nfs"] = { code = 403, body =
			'{"title": "Forbidden", "description": "uid: job 42 (uid 1000) may not bind reservation u_s_nfs: it belongs to another user", "field": "uid"}' } })
		local job = { id = "42", script = ctx.script(H.SERVICE_SCRIPT) }
		local rc, msg = SHAPES[version].setup(ctx.env, job)
		eq(rc, ctx.slurm.ERROR)
		eq(msg, "job 42 (uid 1000) may not bind reservation u_s_nfs: it belongs to another user")
	end)
end
