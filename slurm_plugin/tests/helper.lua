-- Test helpers: a tiny test framework, a stubbed `slurm` table, a fresh
-- load of burst_buffer.lua per test, and a fake command runner that plays
-- the orchestrator (curl) and Slurm (scontrol).

local H = {}

H.tests = {}

-- test(statement, fn): statement is the one-line behaviour checked.
function H.test(statement, fn)
	H.tests[#H.tests + 1] = { name = statement, fn = fn }
end

local function fmt(v)
	if type(v) == "string" then
		return string.format("%q", v)
	end
	return tostring(v)
end

function H.eq(actual, expected, what)
	if actual ~= expected then
		error((what and (what .. ": ") or "") .. "expected " .. fmt(expected)
			.. ", got " .. fmt(actual), 2)
	end
end

function H.ok(v, what)
	if not v then
		error("expected a true value" .. (what and (": " .. what) or ""), 2)
	end
	return v
end

function H.contains(s, sub, what)
	if type(s) ~= "string" or not s:find(sub, 1, true) then
		error((what and (what .. ": ") or "") .. "expected " .. fmt(s)
			.. " to contain " .. fmt(sub), 2)
	end
end

function H.not_contains(s, sub, what)
	if type(s) == "string" and s:find(sub, 1, true) then
		error((what and (what .. ": ") or "") .. "expected " .. fmt(s)
			.. " not to contain " .. fmt(sub), 2)
	end
end

function H.list_eq(actual, expected, what)
	H.eq(table.concat(actual, "\n"), table.concat(expected, "\n"), what)
end

-- Paths -------------------------------------------------------------------

local here = debug.getinfo(1, "S").source:sub(2):match("^(.*)/[^/]*$") or "."
H.tests_dir = here
H.plugin_dir = here .. "/.."
H.script = H.plugin_dir .. "/burst_buffer.lua"

local function q(s)
	return "'" .. tostring(s):gsub("'", "'\\''") .. "'"
end
H.q = q

local tmp_dirs = {}

function H.tmpdir()
	local p = os.tmpname()
	os.remove(p)
	assert(os.execute("mkdir -p " .. q(p)) == 0)
	tmp_dirs[#tmp_dirs + 1] = p
	return p
end

function H.cleanup()
	for _, d in ipairs(tmp_dirs) do
		os.execute("rm -rf " .. q(d))
	end
	tmp_dirs = {}
end

function H.write(path, text)
	local f = assert(io.open(path, "wb"))
	f:write(text)
	f:close()
	return path
end

function H.read(path)
	local f = io.open(path, "rb")
	if not f then
		return nil
	end
	local t = f:read("*a")
	f:close()
	return t
end

function H.exists(path)
	local f = io.open(path, "rb")
	if f then
		f:close()
		return true
	end
	return false
end

function H.lines(text)
	local out = {}
	for l in text:gmatch("[^\n]+") do
		out[#out + 1] = l
	end
	return out
end

-- The stubbed slurm table (Slurm 22.05: SUCCESS, ERROR, log_* taking a
-- string.format format) ------------------------------------------------------

function H.fake_slurm()
	local logs = {}
	local s = { SUCCESS = 0, ERROR = -1, logs = logs }
	for _, lvl in ipairs({ "info", "error", "debug", "debug2", "debug3",
		"debug4", "debug5", "verbose", "user" }) do
		s["log_" .. lvl] = function(f, ...)
			logs[#logs + 1] = lvl .. ": " .. string.format(f, ...)
		end
	end
	return s
end

-- Load a fresh copy of the script in its own global table.
-- Returns env (the script's globals: hooks, slurm, wfm_bb), M, returns.
function H.load()
	local env = setmetatable({}, { __index = _G })
	env.slurm = H.fake_slurm()
	local chunk = assert(loadfile(H.script))
	setfenv(chunk, env)
	local rets = { chunk() }
	if env.wfm_bb then
		env.wfm_bb.posix = H.fake_posix({})
	end
	return env, env.wfm_bb, rets
end

-- A fake luaposix (M.posix) whose process holds `pipes`: { [fd] = pipe id }, as
-- /proc/self/fd would show them; fake.closed lists the descriptors closed.
function H.fake_posix(pipes)
	local fake = { closed = {} }
	local px = {
		dirent = { files = function(dir)
			assert(dir == "/proc/self/fd", dir)
			local names = { ".", "..", "0", "1", "2" }
			for fd in pairs(pipes) do
				names[#names + 1] = tostring(fd)
			end
			local i = 0
			return function()
				i = i + 1
				return names[i]
			end
		end },
		stat = {
			stat = function(path)
				local fd = tonumber(path:match("^/proc/self/fd/(%d+)$"))
				if fd and pipes[fd] then
					return { st_mode = "fifo", st_dev = 15, st_ino = pipes[fd] }
				end
				return { st_mode = "chr", st_dev = 6, st_ino = fd or 0 }
			end,
			S_ISFIFO = function(mode) return mode == "fifo" and 1 or 0 end,
		},
		unistd = { close = function(fd)
			fake.closed[#fake.closed + 1] = fd
			pipes[fd] = nil
			return 0
		end },
	}
	fake.posix = px
	return setmetatable(fake, { __call = function() return px end })
end

-- Forbid io.popen / os.execute for code run with this env (the hooks that
-- run inside slurmctld).
function H.forbid_commands(env)
	local trapped = {}
	env.io = setmetatable({ popen = function(cmd)
		trapped[#trapped + 1] = "io.popen " .. tostring(cmd)
		error("io.popen called")
	end }, { __index = io })
	env.os = setmetatable({ execute = function(cmd)
		trapped[#trapped + 1] = "os.execute " .. tostring(cmd)
		error("os.execute called")
	end }, { __index = os })
	return trapped
end

-- A fake runner. routes["GET /v2.0.0/server/allocation/x"] = response or a
-- list of responses consumed in order; a response is {code=, body=} or
-- {transport=true}. Routes are keyed by the path without its query.
-- opts.job_state is what scontrol reports (or "GONE", "FAIL"; a list: in turn, the
-- last for ever), opts.slurm_version
-- what `scontrol --version` prints (default "slurm 22.05.8"). Returns
-- run, calls; each call records argv, method, path, query (the text after
-- '?', or nil), params (query parameters by name), the content of the
-- header file given with -H @file and the request body (--data-binary @file).
function H.fake_runner(routes, opts)
	opts = opts or {}
	local calls = {}
	local function run(argv)
		local call = { argv = argv, prog = argv[1] }
		calls[#calls + 1] = call
		if argv[1] == "curl" then
			local out_file
			for i, a in ipairs(argv) do
				if a == "-X" then
					call.method = argv[i + 1]
				elseif a == "-o" then
					out_file = argv[i + 1]
				elseif a == "-H" and argv[i + 1]:sub(1, 1) == "@" then
					call.header = H.read(argv[i + 1]:sub(2))
				elseif a == "--data-binary" then
					call.body = H.read(argv[i + 1]:sub(2))
				end
			end
			call.url = argv[#argv]
			local target = call.url:match("^https?://[^/]+(.*)$")
			call.path, call.query = target:match("^([^?]*)%?(.*)$")
			if not call.path then
				call.path = target
			end
			call.params = {}
			for k, v in (call.query or ""):gmatch("([^&=]+)=([^&]*)") do
				call.params[k] = v
			end
			local key = call.method .. " " .. call.path
			-- A route may name the orchestrator too ("GET http://b:8080/v1.0.0/..."),
			-- for the tests of a list of orchestrators.
			local r = routes[call.method .. " " .. call.url:match("^(https?://[^/]+)") .. call.path]
			if r == nil then
				r = routes[key]
			end
			if r == nil then
				error("unexpected request " .. key)
			end
			if r[1] then
				r = table.remove(r, 1)
			end
			if r.transport then
				return false, "curl: (7) Failed to connect to 127.0.0.1 port 1: Connection refused\n__WFM_HTTP=000", 7
			end
			H.write(out_file, r.body or "")
			return true, "__WFM_HTTP=" .. r.code, 0
		elseif argv[1] == "scontrol" and argv[2] == "--version" then
			return true, (opts.slurm_version or "slurm 22.05.8") .. "\n", 0
		elseif argv[1] == "scontrol" then
			local st = opts.job_state or "COMPLETED"
			if type(st) == "table" then
				-- States in turn, the last one for ever.
				st = #st > 1 and table.remove(st, 1) or st[1]
			end
			if st == "GONE" then
				return false, "slurm_load_jobs error: Invalid job id specified\n", 1
			elseif st == "FAIL" then
				return false, "slurm_load_jobs error: Unable to contact slurm controller (connect failure)\n", 1
			end
			return true, "JobId=" .. argv[5] .. " JobName=es UserId=u(1000) JobState=" .. st .. " Reason=None\n", 0
		elseif argv[1] == "scancel" then
			return true, "", 0
		elseif argv[1] == "sleep" then
			return true, "", 0
		elseif argv[1] == "mkdir" then
			os.execute("mkdir -p " .. q(argv[#argv]))
			return true, "", 0
		end
		error("unexpected command " .. tostring(argv[1]))
	end
	return run, calls
end

function H.count(calls, prog)
	local n = 0
	for _, c in ipairs(calls) do
		if c.prog == prog then
			n = n + 1
		end
	end
	return n
end

-- A loaded plugin with a config file, a cache dir, a job script dir and a
-- fake runner. Returns a context table.
function H.setup_env(routes, opts)
	opts = opts or {}
	local env, M = H.load()
	local dir = H.tmpdir()
	local ctx = { env = env, M = M, dir = dir, slurm = env.slurm }
	ctx.cache_dir = dir .. "/cache"
	if not opts.no_cache_dir then
		os.execute("mkdir -p " .. q(ctx.cache_dir))
	end
	local conf = opts.conf or ("orchestrator_url = http://orch.example:8080\n"
		.. "cache_dir = " .. ctx.cache_dir .. "\n"
		.. "timeout = 5\nretries = " .. (opts.retries or 0) .. "\n"
		.. (opts.wait and ("wait = " .. opts.wait .. "\npoll = 2\n") or "")
		.. (opts.token and ("token_file = " .. dir .. "/token\n") or "")
		.. (opts.limits and ("limits_file = " .. dir .. "/limits.json\n") or ""))
	M.config_file = H.write(dir .. "/burst_buffer_wfm.conf", conf)
	if opts.limits then
		H.write(dir .. "/limits.json", opts.limits)
	end
	if opts.token then
		H.write(dir .. "/token", opts.token)
	end
	ctx.run, ctx.calls = H.fake_runner(routes or {}, opts)
	M.run = ctx.run
	function ctx.script(text, name)
		return H.write(dir .. "/" .. (name or "script"), text)
	end
	function ctx.cache_file(job_id)
		return ctx.cache_dir .. "/job_" .. job_id .. ".json"
	end
	return ctx
end

H.ALLOC_OK = [[{"name": "u_s_nfs", "servers": 2, "properties": [
 {"server_name": "dn1", "cores": 2, "core_list": [0, 1], "msize": 5120, "ssize": 512000},
 {"server_name": "dn2", "cores": 0, "core_list": [], "msize": 0, "ssize": 512000}]}]]

H.ALLOC_ENV = {
	"WFM_SERVICE_NAME=u_s_nfs",
	"WFM_SERVER_COUNT=2",
	"WFM_SERVERS=dn1,dn2",
	"WFM_SERVER_0_NAME=dn1",
	"WFM_SERVER_0_CORES=2",
	"WFM_SERVER_0_CORE_LIST=0,1",
	"WFM_SERVER_0_MSIZE=5120",
	"WFM_SERVER_0_SSIZE=512000",
	"WFM_SERVER_1_NAME=dn2",
	"WFM_SERVER_1_CORES=0",
	"WFM_SERVER_1_CORE_LIST=",
	"WFM_SERVER_1_MSIZE=0",
	"WFM_SERVER_1_SSIZE=512000",
}

H.SERVICE_SCRIPT = "#!/bin/bash\n#SBATCH -N 1\n#BB_LUA wfm_service name=u_s_nfs\nexec run-nfs\n"

return H
