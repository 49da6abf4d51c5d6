--[[
burst_buffer.lua -- Slurm burst_buffer/lua plugin of the WFM Orchestrator.

Binds Slurm jobs to ephemeral-service reservations held by the orchestrator
(IO-SEA Orchestrator API):

  #BB_LUA wfm_service name=<service>            the job IS the service
  #BB_LUA wfm_use name=<service> [hint=RO|RW|WO] the job USES a service

  #BB_LUA wfm_job type=<T> [name=<short>] ...  a service for this job only (#18)

and the IO-SEA Session Manager's dialect (issue #17), <T> being SBB, GBF, NFS or DASI:

  #BB_LUA <T> create_persistent Name=<service> ...  waits until the service is up
  #BB_LUA <T> use_persistent Name=<service>         the job uses it (as wfm_use)
  #BB_LUA <T> destroy_persistent Name=<service>     stops it, waits until it is

Written for Slurm 22.05 (Lua 5.1) and 24.11: 24.05+ requires
slurm_bb_test_data_in/out before it loads the script, and polls
test_data_in, where a 24.05+ stage-in waits (22.05: inside data_in).

Layout: constants; JSON codec; the one command runner (M.run) every
external command goes through; configuration; pure directive parsing;
pure conversion of orchestrator answers into environment lines; the cache;
the orchestrator client; operations (return ok, err); and finally the
slurm_bb_* entry points, the only place where ok/err become slurm.SUCCESS /
slurm.ERROR, msg.

Where hooks run (Slurm 22.05 to 24.11):
  inside slurmctld, locks held, never killed: job_process, pools, paths.
    These read local files only: no network, no io.popen, no M.run.
  in slurmscriptd, with a timeout: every other hook.

Who may bind, use or release a service is the orchestrator's decision
(issue #15): setup sends the job id and the uid Slurm gives it, teardown
the job id, and a 403 is the orchestrator's refusal. The plugin trusts
nothing it reads in the job script to decide that.

The module table is published as the global `wfm_bb` so that tests can
replace `wfm_bb.run` (the command runner) and `wfm_bb.config_file`. The
script returns nothing: Slurm reads a returned value as a return code.
--]]

local M = {}
wfm_bb = M

---------------------------------------------------------------------------
-- Constants
---------------------------------------------------------------------------

M.SCRIPT_NAME = "burst_buffer.lua"
M.CONF_NAME = "burst_buffer_wfm.conf"
M.DIRECTIVE = "#BB_LUA"
M.NAME_MAX = 128
M.MAX_USES = 64
M.HINTS = { RO = true, RW = true, WO = true }
M.DEFAULT_HINT = "RW"
-- Service statuses (spec: ephemeralservice/status) under which a step may
-- use a service.
M.USABLE_STATUS = { ALLOCATED = true, STAGEDIN = true }
-- A create_persistent job completes once its service runs (ALLOCATED: its job
-- runs on the datanodes); these statuses mean it never will.
M.UP_STATUS = { ALLOCATED = true }
M.ENDED_STATUS = { STAGINGOUT = true, STAGEDOUT = true, STOPPED = true, TEARDOWN = true }
-- The Session Manager's dialect: "#BB_LUA <type> <operation> Key=Value ...".
M.SM_TYPES = { SBB = true, GBF = true, NFS = true, DASI = true }
local SM_CREATE_KEYS = {
	Name = true, Flavor = true, Targets = true, Datanodes = true, StorageSize = true,
	Path = true, FSType = true, MetaDataServers = true, StorageDataServers = true,
	data_dst = true, data_src = true,
}
M.SM_OPS = {
	create_persistent = SM_CREATE_KEYS,
	use_persistent = { Name = true },
	destroy_persistent = { Name = true },
}
-- scontrol show bbstat: the Session Manager's line for each live service, whose
-- State it reads (staged-in = allocated, staging-out = stopping, staged-out = stopped).
M.BBSTAT_STATE = {
	STAGINGIN = "staging-in", STAGEDIN = "staging-in", ALLOCATED = "staged-in",
	STAGINGOUT = "staging-out", STAGEDOUT = "staged-out", TEARDOWN = "teardown",
}
M.KNOWN_STATUS = {
	STAGINGIN = true, STAGEDIN = true, ALLOCATED = true, STAGINGOUT = true,
	STAGEDOUT = true, STOPPED = true, TEARDOWN = true,
}
-- Slurm job states (as printed by scontrol) of a job that will be staged
-- in again: teardown then keeps its reservation and cache.
M.WILL_RERUN_STATES = {
	PENDING = true, REQUEUED = true, REQUEUE_HOLD = true, REQUEUE_FED = true,
}
M.DEFAULTS = {
	timeout = 10,
	retries = 2,
	retry_for = 0,
	wait = 100,
	poll = 2,
	cache_dir = "/var/spool/slurm/wfm_bb",
	curl = "curl",
	scontrol = "scontrol",
	scancel = "scancel",
}
-- A service for the length of one job (issue #18): "#BB_LUA wfm_job type=... ...".
M.MAX_JOB_SERVICES = 16
M.JOB_TYPES = { SBB = true, NFS = true, GBF = true, DASI = true }
-- Types sized globally (gssize over servers) that mount somewhere: as the API says.
M.GLOBAL_TYPES = { NFS = true, GBF = true, DASI = true }
M.SHORT_MAX = 32
M.MAX_SERVERS = 4096
M.MAX_CORES = 1024
M.LIMITS_VERSION = 1
M.CACHE_VERSION = 1
M.API_ALLOCATION = "/v2.0.0/server/allocation/"
M.API_STATUS = "/v1.0.0/ephemeralservice/status/"
M.API_STATUSES = "/v1.0.0/ephemeralservice/status"
M.API_RELEASE = "/v1.0.0/ephemeralservice/release/"
M.API_JOBSERVICE = "/v2.0.0/server/jobservice"

---------------------------------------------------------------------------
-- Small helpers
---------------------------------------------------------------------------

local function trim(s)
	return (s:gsub("^%s+", ""):gsub("%s+$", ""))
end

-- A message safe to show or log: no control characters, bounded length.
local function printable(s, max)
	s = tostring(s or ""):gsub("[%z\1-\31\127]", " ")
	max = max or 300
	if #s > max then
		s = s:sub(1, max) .. "..."
	end
	return s
end
M.printable = printable

function M.read_file(path)
	local f, err = io.open(path, "rb")
	if not f then
		return nil, err
	end
	local data = f:read("*a")
	f:close()
	if data == nil then
		return nil, "cannot read " .. path
	end
	return data
end

local function file_exists(path)
	local f = io.open(path, "rb")
	if f then
		f:close()
		return true
	end
	return false
end

---------------------------------------------------------------------------
-- Logging: always through slurm.log_*, with the job id and service name.
-- Never pass a token here.
---------------------------------------------------------------------------

function M.log(level, job_id, service, msg)
	local s = slurm
	if type(s) ~= "table" then
		return
	end
	local fn = s["log_" .. level] or s.log_info
	if type(fn) ~= "function" then
		return
	end
	local who = "job " .. tostring(job_id or "?")
	if service then
		who = who .. " service " .. tostring(service)
	end
	fn("%s: %s: %s", M.SCRIPT_NAME, who, printable(msg, 1000))
end

---------------------------------------------------------------------------
-- JSON: a small strict decoder (RFC 8259) and an encoder.
-- Arrays carry a metatable so that empty arrays survive a round trip.
---------------------------------------------------------------------------

local json = {}
M.json = json

json.null = setmetatable({}, { __tostring = function() return "null" end })
local array_mt = { __jsontype = "array" }

function json.array(t)
	return setmetatable(t or {}, array_mt)
end

function json.is_array(t)
	return type(t) == "table" and getmetatable(t) == array_mt
end

local function utf8_char(cp)
	if cp < 0x80 then
		return string.char(cp)
	elseif cp < 0x800 then
		return string.char(0xC0 + math.floor(cp / 0x40), 0x80 + cp % 0x40)
	elseif cp < 0x10000 then
		return string.char(0xE0 + math.floor(cp / 0x1000),
			0x80 + math.floor(cp / 0x40) % 0x40, 0x80 + cp % 0x40)
	end
	return string.char(0xF0 + math.floor(cp / 0x40000),
		0x80 + math.floor(cp / 0x1000) % 0x40,
		0x80 + math.floor(cp / 0x40) % 0x40, 0x80 + cp % 0x40)
end

local ESCAPES = {
	['"'] = '"', ["\\"] = "\\", ["/"] = "/", b = "\b", f = "\f",
	n = "\n", r = "\r", t = "\t",
}
local MAX_DEPTH = 64

-- Decode a JSON text. Returns value or nil, "invalid JSON at byte N: why".
function json.decode(s)
	if type(s) ~= "string" then
		return nil, "invalid JSON: not a string"
	end
	local pos = 1

	local function fail(msg)
		error({ json_error = string.format("invalid JSON at byte %d: %s", pos, msg) }, 0)
	end

	local function skip_ws()
		pos = s:find("[^ \t\r\n]", pos) or (#s + 1)
	end

	local parse_value

	local function parse_string()
		-- pos is on the opening quote
		pos = pos + 1
		local parts = {}
		while true do
			local i = s:find('[%z\1-\31"\\]', pos)
			if not i then
				fail("unterminated string")
			end
			parts[#parts + 1] = s:sub(pos, i - 1)
			local c = s:sub(i, i)
			pos = i
			if c == '"' then
				pos = i + 1
				return table.concat(parts)
			elseif c == "\\" then
				local e = s:sub(i + 1, i + 1)
				if ESCAPES[e] then
					parts[#parts + 1] = ESCAPES[e]
					pos = i + 2
				elseif e == "u" then
					local hex = s:match("^%x%x%x%x", i + 2)
					if not hex then
						fail("bad \\u escape")
					end
					local cp = tonumber(hex, 16)
					pos = i + 6
					if cp >= 0xD800 and cp <= 0xDBFF then
						local lo = s:match("^\\u(%x%x%x%x)", pos)
						lo = lo and tonumber(lo, 16)
						if not lo or lo < 0xDC00 or lo > 0xDFFF then
							fail("unpaired surrogate")
						end
						cp = 0x10000 + (cp - 0xD800) * 0x400 + (lo - 0xDC00)
						pos = pos + 6
					elseif cp >= 0xDC00 and cp <= 0xDFFF then
						fail("unpaired surrogate")
					end
					parts[#parts + 1] = utf8_char(cp)
				else
					fail("bad escape")
				end
			else
				fail("control character in string")
			end
		end
	end

	local function parse_number()
		local start = pos
		local p = pos
		if s:sub(p, p) == "-" then
			p = p + 1
		end
		if s:sub(p, p) == "0" then
			p = p + 1
		else
			local d = s:match("^[1-9]%d*", p)
			if not d then
				fail("bad number")
			end
			p = p + #d
		end
		local frac = s:match("^%.%d+", p)
		if frac then
			p = p + #frac
		elseif s:sub(p, p) == "." then
			fail("bad number")
		end
		local exp = s:match("^[eE][-+]?%d+", p)
		if exp then
			p = p + #exp
		elseif s:match("^[eE]", p) then
			fail("bad number")
		end
		pos = p
		return tonumber(s:sub(start, p - 1))
	end

	local function parse_array(depth)
		pos = pos + 1
		local arr = json.array({})
		skip_ws()
		if s:sub(pos, pos) == "]" then
			pos = pos + 1
			return arr
		end
		while true do
			arr[#arr + 1] = parse_value(depth + 1)
			skip_ws()
			local c = s:sub(pos, pos)
			pos = pos + 1
			if c == "]" then
				return arr
			elseif c ~= "," then
				pos = pos - 1
				fail("expected ',' or ']'")
			end
		end
	end

	local function parse_object(depth)
		pos = pos + 1
		local obj = {}
		skip_ws()
		if s:sub(pos, pos) == "}" then
			pos = pos + 1
			return obj
		end
		while true do
			skip_ws()
			if s:sub(pos, pos) ~= '"' then
				fail("expected a string key")
			end
			local key = parse_string()
			skip_ws()
			if s:sub(pos, pos) ~= ":" then
				fail("expected ':'")
			end
			pos = pos + 1
			obj[key] = parse_value(depth + 1)
			skip_ws()
			local c = s:sub(pos, pos)
			pos = pos + 1
			if c == "}" then
				return obj
			elseif c ~= "," then
				pos = pos - 1
				fail("expected ',' or '}'")
			end
		end
	end

	parse_value = function(depth)
		if depth > MAX_DEPTH then
			fail("nested too deeply")
		end
		skip_ws()
		local c = s:sub(pos, pos)
		if c == "{" then
			return parse_object(depth)
		elseif c == "[" then
			return parse_array(depth)
		elseif c == '"' then
			return parse_string()
		elseif c == "-" or c:match("%d") then
			return parse_number()
		elseif s:sub(pos, pos + 3) == "true" then
			pos = pos + 4
			return true
		elseif s:sub(pos, pos + 4) == "false" then
			pos = pos + 5
			return false
		elseif s:sub(pos, pos + 3) == "null" then
			pos = pos + 4
			return json.null
		elseif c == "" then
			fail("unexpected end of input")
		end
		fail("unexpected character")
	end

	local ok, res = pcall(function()
		local v = parse_value(1)
		skip_ws()
		if pos <= #s then
			fail("trailing characters")
		end
		return v
	end)
	if ok then
		return res
	end
	if type(res) == "table" and res.json_error then
		return nil, res.json_error
	end
	error(res, 0)
end

local function encode_string(s)
	return '"' .. s:gsub('[%z\1-\31"\\\127]', function(c)
		local map = { ['"'] = '\\"', ["\\"] = "\\\\", ["\n"] = "\\n",
			["\r"] = "\\r", ["\t"] = "\\t", ["\b"] = "\\b", ["\f"] = "\\f" }
		return map[c] or string.format("\\u%04x", c:byte())
	end) .. '"'
end

-- Encode a Lua value as JSON. Returns text or nil, err.
function json.encode(v)
	local function enc(x, depth)
		if depth > MAX_DEPTH then
			error({ json_error = "nested too deeply" }, 0)
		end
		local t = type(x)
		if x == nil or x == json.null then
			return "null"
		elseif t == "boolean" then
			return tostring(x)
		elseif t == "number" then
			if x ~= x or x == math.huge or x == -math.huge then
				error({ json_error = "cannot encode a non-finite number" }, 0)
			end
			if x == math.floor(x) and math.abs(x) < 2 ^ 53 then
				return string.format("%d", x)
			end
			return string.format("%.17g", x)
		elseif t == "string" then
			return encode_string(x)
		elseif t == "table" then
			local n = #x
			local is_arr = json.is_array(x)
			if not is_arr and n > 0 then
				is_arr = true
				for k in pairs(x) do
					if type(k) ~= "number" or k < 1 or k > n or k ~= math.floor(k) then
						is_arr = false
						break
					end
				end
			end
			local out = {}
			if is_arr then
				for i = 1, n do
					out[i] = enc(x[i], depth + 1)
				end
				return "[" .. table.concat(out, ",") .. "]"
			end
			local keys = {}
			for k in pairs(x) do
				if type(k) ~= "string" then
					error({ json_error = "object keys must be strings" }, 0)
				end
				keys[#keys + 1] = k
			end
			table.sort(keys)
			for i, k in ipairs(keys) do
				out[i] = encode_string(k) .. ":" .. enc(x[k], depth + 1)
			end
			return "{" .. table.concat(out, ",") .. "}"
		end
		error({ json_error = "cannot encode a " .. t }, 0)
	end
	local ok, res = pcall(enc, v, 1)
	if ok then
		return res
	end
	if type(res) == "table" and res.json_error then
		return nil, res.json_error
	end
	error(res, 0)
end

---------------------------------------------------------------------------
-- The command runner. Every external command goes through M.run(argv).
-- Lua has no execv, so argv is turned into ONE shell command line where
-- every argument is single-quoted by M.quote. Only validated names and
-- validated configuration values are ever put into argv.
--
-- M.run(argv) -> ok (exit status 0), output (stdout+stderr), exit_code
-- Tests replace M.run with their own function.
---------------------------------------------------------------------------

function M.quote(s)
	return "'" .. tostring(s):gsub("'", "'\\''") .. "'"
end

local EXIT_MARK = "__WFM_EXIT="

function M.command_line(argv)
	local parts = {}
	for i, a in ipairs(argv) do
		if type(a) ~= "string" or a == "" or a:find("[%z\n\r]") then
			return nil, "argument " .. i .. " is empty or not a single-line string"
		end
		parts[i] = M.quote(a)
	end
	if #parts == 0 then
		return nil, "empty command"
	end
	return table.concat(parts, " ") .. " </dev/null 2>&1; echo " .. EXIT_MARK .. "$?"
end

function M.default_run(argv)
	local cmd, err = M.command_line(argv)
	if not cmd then
		return false, "refusing to run a command: " .. err, -1
	end
	local p = io.popen(cmd, "r")
	if not p then
		return false, "cannot start " .. tostring(argv[1]), -1
	end
	local out = p:read("*a") or ""
	p:close()
	local body, code = out:match("^(.-)" .. EXIT_MARK .. "(%d+)%s*$")
	if not body then
		return false, out, -1
	end
	code = tonumber(code)
	return code == 0, body, code
end

M.run = M.default_run

---------------------------------------------------------------------------
-- Configuration: burst_buffer_wfm.conf beside this script, or the file
-- named by $WFM_BB_CONF, or M.config_file (tests). Lines `key = value`;
-- '#' starts a comment (at line start or after a blank).
---------------------------------------------------------------------------

local SCRIPT_SOURCE = debug.getinfo(1, "S").source

function M.script_dir()
	local src = SCRIPT_SOURCE or ""
	if src:sub(1, 1) == "@" then
		local dir = src:sub(2):match("^(.*)/[^/]*$")
		if dir then
			return dir == "" and "/" or dir
		end
		return "."
	end
	return "."
end

function M.config_path()
	if M.config_file then
		return M.config_file
	end
	local env = os.getenv("WFM_BB_CONF")
	if env and env ~= "" then
		return env
	end
	return M.script_dir() .. "/" .. M.CONF_NAME
end

local SAFE_PATH = "^/[A-Za-z0-9_./%-]*$"
local SAFE_PROGRAM = "^[A-Za-z0-9_./%-]+$"

local CONF_KEYS = {
	-- One URL, or several separated by commas (issue #20: the orchestrators of a
	-- highly available pair, tried in order). A list of URLs.
	orchestrator_url = function(v)
		local urls = {}
		for item in (v .. ","):gmatch("%s*([^,]-)%s*,") do
			local url = item:gsub("/+$", "")
			if not url:match("^https?://[A-Za-z0-9._~%-]+[A-Za-z0-9._~:%-%[%]]*[A-Za-z0-9._~/%-]*$")
				or url:find("%.%.") then
				return nil, "must be http(s)://host[:port][/path] with no query, quotes or spaces"
					.. " (several: separated by commas)"
			end
			urls[#urls + 1] = url
		end
		if #urls > 8 then
			return nil, "names at most 8 orchestrators"
		end
		return urls
	end,
	token_file = function(v)
		if not v:match(SAFE_PATH) then
			return nil, "must be an absolute path of letters, digits, '_', '.', '-', '/'"
		end
		return v
	end,
	cache_dir = function(v)
		if not v:match(SAFE_PATH) or v == "/" then
			return nil, "must be an absolute path of letters, digits, '_', '.', '-', '/'"
		end
		return (v:gsub("/+$", ""))
	end,
	timeout = function(v)
		local n = tonumber(v)
		if not v:match("^%d+$") or n < 1 or n > 3600 then
			return nil, "must be a whole number of seconds between 1 and 3600"
		end
		return n
	end,
	retries = function(v)
		local n = tonumber(v)
		if not v:match("^%d+$") or n > 10 then
			return nil, "must be a whole number between 0 and 10"
		end
		return n
	end,
	retry_for = function(v)
		local n = tonumber(v)
		if not v:match("^%d+$") or n > 3600 then
			return nil, "must be a whole number of seconds between 0 and 3600"
		end
		return n
	end,
	wait = function(v)
		local n = tonumber(v)
		if not v:match("^%d+$") or n < 1 or n > 86400 then
			return nil, "must be a whole number of seconds between 1 and 86400"
		end
		return n
	end,
	poll = function(v)
		local n = tonumber(v)
		if not v:match("^%d+$") or n < 1 or n > 60 then
			return nil, "must be a whole number of seconds between 1 and 60"
		end
		return n
	end,
	curl = function(v)
		if not v:match(SAFE_PROGRAM) or v:sub(1, 1) == "-" then
			return nil, "must be a program name or an absolute path"
		end
		return v
	end,
}
-- The orchestrator's limits file (plugin_limits_file in wfm.conf), read at submission.
CONF_KEYS.limits_file = CONF_KEYS.token_file
CONF_KEYS.scontrol = CONF_KEYS.curl
CONF_KEYS.scancel = CONF_KEYS.curl

-- Parse the configuration text. Returns cfg or nil, "origin:line: why".
function M.parse_config(text, origin)
	origin = origin or M.CONF_NAME
	local cfg = {}
	for k, v in pairs(M.DEFAULTS) do
		cfg[k] = v
	end
	local seen = {}
	local n = 0
	for line in (text .. "\n"):gmatch("([^\n]*)\n") do
		n = n + 1
		line = line:gsub("\r$", "")
		line = line:gsub("^#.*$", ""):gsub("%s+#.*$", "")
		if not line:match("^%s*$") then
			local key, value = line:match("^%s*([%w_]+)%s*=%s*(.-)%s*$")
			if not key then
				return nil, string.format("%s:%d: expected 'key = value'", origin, n)
			end
			local check = CONF_KEYS[key]
			if not check then
				return nil, string.format("%s:%d: unknown key '%s'", origin, n, printable(key, 40))
			end
			if seen[key] then
				return nil, string.format("%s:%d: '%s' is set twice", origin, n, key)
			end
			seen[key] = true
			local v, err = check(value)
			if v == nil then
				return nil, string.format("%s:%d: %s %s", origin, n, key, err)
			end
			cfg[key] = v
		end
	end
	return cfg
end

function M.load_config()
	local path = M.config_path()
	local text, err = M.read_file(path)
	if not text then
		return nil, "cannot read configuration file " .. path .. ": " .. tostring(err)
	end
	return M.parse_config(text, path)
end

---------------------------------------------------------------------------
-- Directives (pure). Only the leading comment block of the job script is
-- read, as sbatch does: parsing stops at the first line that is neither
-- blank nor a comment.
---------------------------------------------------------------------------

-- Returns true or nil, why.
function M.check_name(name)
	if type(name) ~= "string" or name == "" then
		return nil, "service name is empty"
	end
	if #name > M.NAME_MAX then
		return nil, "service name is longer than " .. M.NAME_MAX .. " characters"
	end
	if not name:match("^[A-Za-z0-9_.%-]+$") then
		return nil, "service name '" .. printable(name, 60)
			.. "' may only contain letters, digits, '_', '-' and '.'"
	end
	if name:match("^[.%-]") then
		return nil, "service name '" .. name .. "' must not start with '-' or '.'"
	end
	if name:find("..", 1, true) then
		return nil, "service name '" .. name .. "' must not contain '..'"
	end
	return true
end

local DIRECTIVE_KEYS = {
	wfm_service = { name = true },
	wfm_use = { name = true, hint = true },
	-- The keys of the reserve request (issue #18); name is the short name.
	wfm_job = { type = true, name = true, servers = true, location = true, flavor = true,
		cores = true, msize = true, ssize = true, gssize = true, targets = true,
		mountpoint = true },
}

local function count_in(v, lo, hi)
	local n = v:match("^%d+$") and tonumber(v)
	return n and n >= lo and n <= hi and n or nil
end

local UNIT_EXP = { K = 1, M = 2, G = 3, T = 4, P = 5 }

-- A size as the API accepts it: whole MB, or a number with a unit K, M, G, T, P
-- (then B or iB allowed; binary multiples). Returns the MB (rounded up, as the
-- orchestrator rounds a demand) and the value to send (a number of MB, or the text,
-- which the orchestrator parses itself), or nil, why.
function M.size_mb(v)
	if v:match("^%d+$") then
		local n = tonumber(v)
		if n > 2 ^ 53 then
			return nil, "is larger than the largest size accepted"
		end
		return n, n
	end
	local number, unit, suffix = v:match("^(%d+%.?%d*)([KMGTPkmgtp])(%a*)$")
	if not number or number:match("%.$") or (suffix ~= "" and suffix ~= "B" and suffix ~= "iB") then
		return nil, "is not a size (whole MB, or a number with a unit K, M, G, T or P: 512, 10G, 1.5TB, 2TiB)"
	end
	local exp = UNIT_EXP[unit:upper()]
	local bytes = math.ceil(tonumber(number) * 1024 ^ exp)
	if bytes > 2 ^ 60 then
		return nil, "is larger than 1 EiB"
	end
	return math.ceil(bytes / 1048576), v
end

local function split_commas(v)
	local out = {}
	for item in (v .. ","):gmatch("([^,]*),") do
		out[#out + 1] = item
	end
	return out
end

-- Check a wfm_job line's keys (d, as parsed) by the reserve request's rules and build
-- what setup sends: {keyword, short, type, body = reserve body less name/user/token,
-- demand = {servers, cores, msize, ssize} per server (flavor: resolved with the
-- limits file), locations}. Returns it or nil, why (naming the key).
function M.check_job_line(d)
	local w = "wfm_job: "
	if not d.type then
		return nil, w .. "missing type=<SBB|NFS|GBF|DASI>"
	end
	if not M.JOB_TYPES[d.type] then
		return nil, w .. "type '" .. printable(d.type, 20) .. "' must be SBB, NFS, GBF or DASI"
	end
	local line = { keyword = "wfm_job", type = d.type, short = d.name }
	if d.name and (#d.name > M.SHORT_MAX or not d.name:match("^[A-Za-z][A-Za-z0-9%-]*$")) then
		return nil, w .. "name '" .. printable(d.name, 40) .. "' must be 1 to " .. M.SHORT_MAX
			.. " letters, digits or '-', starting with a letter"
	end
	for _, key in ipairs({ "location", "flavor", "targets", "mountpoint" }) do
		if d[key] == "" then
			return nil, w .. key .. " is empty"
		end
	end
	if d.flavor then
		for _, key in ipairs({ "cores", "msize", "ssize", "gssize" }) do
			if d[key] then
				return nil, w .. key .. " is exclusive with flavor (a flavor defines cores, msize and ssize)"
			end
		end
	end
	if d.ssize and d.gssize then
		return nil, w .. "ssize is exclusive with gssize"
	end
	if M.GLOBAL_TYPES[d.type] then
		for _, key in ipairs({ "gssize", "mountpoint" }) do
			if not d[key] then
				return nil, w .. key .. " is required for type " .. d.type
			end
		end
	elseif d.type == "SBB" then
		for _, key in ipairs({ "flavor", "targets" }) do
			if not d[key] then
				return nil, w .. key .. " is required for type SBB"
			end
		end
	end
	local servers = 1
	if d.servers then
		servers = count_in(d.servers, 1, M.MAX_SERVERS)
		if not servers then
			return nil, w .. "servers '" .. printable(d.servers, 20) .. "' must be a whole number from 1 to " .. M.MAX_SERVERS
		end
	end
	local attrs, demand = {}, { servers = servers, cores = 1, msize = 0, ssize = 0 }
	if d.flavor then
		if not d.flavor:match("^[A-Za-z0-9_.%-]+$") then
			return nil, w .. "flavor '" .. printable(d.flavor, 40) .. "' is not a flavor name"
		end
		attrs.flavor = d.flavor
		demand.flavor = d.flavor
	end
	if d.cores then
		local n = count_in(d.cores, 0, M.MAX_CORES)
		if not n then
			return nil, w .. "cores '" .. printable(d.cores, 20) .. "' must be a whole number from 0 to " .. M.MAX_CORES
		end
		attrs.cores, demand.cores = n, n
	end
	for _, key in ipairs({ "msize", "ssize", "gssize" }) do
		if d[key] then
			local mb, sent = M.size_mb(d[key])
			if not mb then
				return nil, w .. key .. " '" .. printable(d[key], 20) .. "' " .. sent
			end
			attrs[key] = sent
			if key == "gssize" then
				demand.ssize = math.ceil(mb / servers)
			else
				demand[key] = mb
			end
		end
	end
	if d.targets then
		local list = split_commas(d.targets)
		for _, t in ipairs(list) do
			if t == "" then
				return nil, w .. "targets has an empty pattern (patterns are separated by ',')"
			end
		end
		attrs.targets = json.array(list)
	end
	if d.mountpoint then
		if d.mountpoint:sub(1, 1) ~= "/" then
			return nil, w .. "mountpoint '" .. printable(d.mountpoint, 40) .. "' must be an absolute path"
		end
		attrs.mountpoint = d.mountpoint
	end
	local locations = {}
	if d.location then
		locations = split_commas(d.location)
		for _, loc in ipairs(locations) do
			if not loc:match("^[A-Za-z0-9_.%-]+$") then
				return nil, w .. "location '" .. printable(d.location, 40) .. "' must be location names separated by ','"
			end
		end
	end
	line.demand, line.locations = demand, locations
	line.body = { type = d.type, servers = servers, attributes = attrs }
	if d.name then
		line.body.name = d.name
	end
	if #locations > 0 then
		line.body.location = json.array(locations)
	end
	return line
end

-- Can this wfm_job line ever fit the cluster the limits file describes (all its
-- datanodes empty)? The orchestrator's rule (fits_ever): `servers` candidate
-- datanodes (the requested locations and their neighbours, or all) each holding the
-- per-server demand. Returns true or nil, why (naming the key).
function M.check_job_fits(line, limits)
	local w = "wfm_job: "
	local known = {}
	for _, t in ipairs(limits.types or {}) do
		known[t] = true
	end
	if not known[line.type] then
		return nil, w .. "type " .. line.type .. " is not served by this cluster"
	end
	local demand = line.demand
	local cores, msize, ssize = demand.cores, demand.msize, demand.ssize
	if demand.flavor then
		local f = (limits.flavors or {})[demand.flavor]
		if type(f) ~= "table" then
			local names = {}
			for n in pairs(limits.flavors or {}) do
				names[#names + 1] = n
			end
			table.sort(names)
			return nil, w .. "unknown flavor '" .. demand.flavor .. "' (valid: "
				.. (#names > 0 and table.concat(names, ", ") or "none configured") .. ")"
		end
		cores, msize, ssize = f.cores, f.msize, f.ssize
	end
	local wanted
	if #line.locations > 0 then
		wanted = {}
		for _, loc in ipairs(line.locations) do
			local near = (limits.locations or {})[loc]
			if type(near) ~= "table" then
				local names = {}
				for n in pairs(limits.locations or {}) do
					names[#names + 1] = n
				end
				table.sort(names)
				return nil, w .. "unknown location '" .. loc .. "' (valid: "
					.. (#names > 0 and table.concat(names, ", ") or "none configured") .. ")"
			end
			wanted[loc] = true
			for _, n in ipairs(near) do
				wanted[n] = true
			end
		end
	end
	local candidates, enough = 0, 0
	local most = { cores = 0, msize = 0, ssize = 0 }
	for _, dn in ipairs(limits.datanodes or {}) do
		if not wanted or wanted[dn.location] then
			candidates = candidates + 1
			for k in pairs(most) do
				most[k] = math.max(most[k], tonumber(dn[k]) or 0)
			end
			if dn.cores >= cores and dn.msize >= msize and dn.ssize >= ssize then
				enough = enough + 1
			end
		end
	end
	if enough >= demand.servers then
		return true
	end
	return nil, string.format("%scan never fit: it needs %d datanode(s) with %d cores, %d MB of"
		.. " memory and %d MB of storage each in %s; the %d candidate datanodes offer at most %d"
		.. " cores, %d MB of memory and %d MB of storage each, and %d of them all of it",
		w, demand.servers, cores, msize, ssize,
		#line.locations > 0 and table.concat(line.locations, ",") or "any location",
		candidates, most.cores, most.msize, most.ssize, enough)
end

-- The limits file, or nil, why (then only the syntax is checked at submission).
function M.read_limits(cfg)
	if not cfg.limits_file then
		return nil, "no limits_file configured"
	end
	local text, err = M.read_file(cfg.limits_file)
	if not text then
		return nil, "cannot read limits_file " .. cfg.limits_file .. ": " .. tostring(err)
	end
	local limits, derr = json.decode(text)
	if type(limits) ~= "table" or limits.version ~= M.LIMITS_VERSION
		or type(limits.datanodes) ~= "table" then
		return nil, "limits_file " .. cfg.limits_file .. " is not a version "
			.. M.LIMITS_VERSION .. " limits file" .. (derr and (": " .. derr) or "")
	end
	return limits
end

-- Parse one directive body (the text after "#BB_LUA"). Returns
-- {keyword=, name=, hint=} or nil, why.
function M.parse_directive(body)
	local words = {}
	for w in body:gmatch("%S+") do
		words[#words + 1] = w
	end
	local keyword = words[1]
	if not keyword then
		return nil, "empty " .. M.DIRECTIVE .. " directive"
	end
	if M.SM_TYPES[keyword] then
		return M.parse_sm_directive(words)
	end
	local allowed = DIRECTIVE_KEYS[keyword]
	if not allowed then
		if keyword:sub(1, 4) == "wfm_" then
			return nil, "unknown directive '" .. printable(keyword, 40)
				.. "' (expected wfm_service, wfm_use or wfm_job)"
		end
		return nil, "'" .. M.DIRECTIVE .. " " .. printable(keyword, 40)
			.. "' is not handled by this burst buffer plugin: only wfm_service, wfm_use, wfm_job and"
			.. " the Session Manager's '<SBB|GBF|NFS|DASI> create_persistent|use_persistent|"
			.. "destroy_persistent Name=<service>' are supported"
	end
	local d = { keyword = keyword }
	for i = 2, #words do
		local key, value = words[i]:match("^([^=]*)=(.*)$")
		if not key then
			return nil, keyword .. ": unexpected word '" .. printable(words[i], 40)
				.. "' (expected key=value; values may not contain spaces)"
		end
		if not allowed[key] then
			return nil, keyword .. ": unknown key '" .. printable(key, 40) .. "'"
		end
		if d[key] then
			return nil, keyword .. ": key '" .. key .. "' given twice"
		end
		d[key] = value
	end
	if keyword == "wfm_job" then
		return M.check_job_line(d)
	end
	if not d.name then
		return nil, keyword .. ": missing name=<service name>"
	end
	local ok, err = M.check_name(d.name)
	if not ok then
		return nil, keyword .. ": " .. err
	end
	if keyword == "wfm_use" then
		if d.hint == nil then
			d.hint = M.DEFAULT_HINT
		elseif not M.HINTS[d.hint] then
			return nil, "wfm_use: hint '" .. printable(d.hint, 20) .. "' must be RO, RW or WO"
		end
	end
	return d
end

-- The Session Manager's form: words = { type, operation, Key=Value... }.
-- Returns {keyword = "sm", type=, op=, name=} or nil, why. Only Name is used:
-- the other keys (Flavor, Targets, StorageSize, ...) repeat what the Session
-- Manager reserved, and the orchestrator's reservation is what counts; they are
-- checked for form only.
function M.parse_sm_directive(words)
	local stype, op = words[1], words[2]
	local allowed = op and M.SM_OPS[op]
	if not allowed then
		return nil, stype .. ": unknown operation '" .. printable(op or "", 40)
			.. "' (expected create_persistent, use_persistent or destroy_persistent)"
	end
	local d = { keyword = "sm", type = stype, op = op }
	local seen = {}
	for i = 3, #words do
		local key, value = words[i]:match("^([^=]*)=(.*)$")
		if not key then
			return nil, op .. ": unexpected word '" .. printable(words[i], 40)
				.. "' (expected Key=Value; values may not contain spaces)"
		end
		if not allowed[key] then
			return nil, op .. ": unknown key '" .. printable(key, 40) .. "'"
		end
		if seen[key] then
			return nil, op .. ": key '" .. key .. "' given twice"
		end
		if value == "" or value:find("[%z\1-\31\127'\"]") then
			return nil, op .. ": " .. key .. " has an empty value or a quote"
		end
		seen[key] = true
		if key == "Name" then
			d.name = value
		end
	end
	if not d.name then
		return nil, op .. ": missing Name=<service name>"
	end
	local ok, err = M.check_name(d.name)
	if not ok then
		return nil, op .. ": " .. err
	end
	return d
end

-- Parse the job script text. Returns a spec:
--   { kind = "service", name = <name> }
--   { kind = "step", services = { {name=, hint=}, ... } }   (wfm_use, use_persistent)
--   { kind = "create" | "destroy", name = <name>, type = <SM type> }
-- or nil, "line N: why".
function M.parse_directives(text)
	if type(text) ~= "string" then
		return nil, "job script is not text"
	end
	local prefix = M.DIRECTIVE
	local service, uses, used = nil, {}, {}
	local sm_job  -- a create_persistent or destroy_persistent line
	local jobs, shorts = {}, {}  -- wfm_job lines, their short names (upper case)
	local n = 0
	for line in (text .. "\n"):gmatch("([^\n]*)\n") do
		n = n + 1
		line = line:gsub("\r$", "")
		if line:match("^%s*$") then
			-- blank lines do not end the leading comment block
		elseif not line:match("^%s*#") then
			break
		elseif line:sub(1, #prefix) == prefix then
			local body = line:sub(#prefix + 1)
			if body ~= "" and not body:match("^%s") then
				return nil, string.format("line %d: malformed directive (expected '%s <directive>')", n, prefix)
			end
			if body:match("\\%s*$") then
				return nil, string.format("line %d: line continuation is not supported; write each directive on one line", n)
			end
			local d, err = M.parse_directive(body)
			if not d then
				return nil, string.format("line %d: %s", n, err)
			end
			if d.keyword == "sm" and d.op ~= "use_persistent" then
				if sm_job then
					return nil, string.format("line %d: a job may carry only one create_persistent or destroy_persistent directive", n)
				end
				sm_job = { kind = d.op == "create_persistent" and "create" or "destroy",
					name = d.name, type = d.type }
			elseif d.keyword == "wfm_job" then
				if #jobs >= M.MAX_JOB_SERVICES then
					return nil, string.format("line %d: wfm_job: more than %d services", n, M.MAX_JOB_SERVICES)
				end
				if #jobs > 0 and (not d.short or not jobs[1].short) then
					return nil, string.format("line %d: wfm_job: a job with several wfm_job lines names each (name=<short name>)", n)
				end
				if d.short and shorts[d.short:upper()] then
					return nil, string.format("line %d: wfm_job: name '%s' is given twice (names are compared without case)", n, d.short)
				end
				if d.short then
					shorts[d.short:upper()] = true
				end
				jobs[#jobs + 1] = d
			elseif d.keyword == "wfm_service" then
				if service then
					return nil, string.format("line %d: a job may carry only one wfm_service directive", n)
				end
				service = d.name
			else
				if used[d.name] then
					return nil, string.format("line %d: wfm_use: service '%s' is named twice", n, d.name)
				end
				if #uses >= M.MAX_USES then
					return nil, string.format("line %d: wfm_use: more than %d services", n, M.MAX_USES)
				end
				used[d.name] = true
				uses[#uses + 1] = { name = d.name, hint = d.hint or M.DEFAULT_HINT }
			end
			if service and #uses > 0 then
				return nil, string.format("line %d: a job cannot both be a service (wfm_service) and use services (wfm_use)", n)
			end
			if sm_job and (service or #uses > 0) then
				return nil, string.format("line %d: a %s_persistent job carries no other directive", n, sm_job.kind)
			end
			if #jobs > 0 and (service or #uses > 0 or sm_job) then
				return nil, string.format("line %d: wfm_job lines cannot be mixed with other directives (a job uses persistent services or its own)", n)
			end
		end
	end
	if sm_job then
		return sm_job
	end
	if #jobs > 0 then
		return { kind = "job", services = jobs }
	end
	if service then
		return { kind = "service", name = service }
	end
	if #uses > 0 then
		return { kind = "step", services = uses }
	end
	return nil, "no '" .. prefix .. " wfm_service', '" .. prefix
		.. " wfm_use', '" .. prefix .. " wfm_job' or Session Manager ('" .. prefix .. " SBB create_persistent ...') directive"
		.. " in the leading comment block of the job script"
end

function M.describe_spec(spec)
	if spec.kind == "service" then
		return "service " .. spec.name
	elseif spec.kind == "job" then
		local names = {}
		for i, s in ipairs(spec.services) do
			names[i] = s.type .. (s.short and (":" .. s.short) or "")
		end
		return "job-scoped services " .. table.concat(names, ",")
	elseif spec.kind == "create" or spec.kind == "destroy" then
		return spec.type .. " " .. spec.kind .. "_persistent " .. spec.name
	end
	local names = {}
	for i, s in ipairs(spec.services) do
		names[i] = s.name .. ":" .. s.hint
	end
	return "step using " .. table.concat(names, ",")
end

function M.read_spec(job_script)
	local text, err = M.read_file(job_script)
	if not text then
		return nil, "cannot read the job script: " .. tostring(err)
	end
	return M.parse_directives(text)
end

-- The job id is part of the script path in 22.05 (.../hash.N/job.<id>/script);
-- used for log messages only.
function M.job_id_from_script(path)
	return tostring(path or ""):match("job%.(%d+)/script$")
end

-- Job ids and uids go into URLs and argv: digits only, bounded. Slurm
-- passes decimal strings ("%u"); a number is accepted too, as a string.
local function check_count_arg(what, v)
	v = tostring(v or "")
	if not v:match("^%d+$") or #v > 12 then
		return nil, "invalid " .. what .. " '" .. printable(v, 20) .. "'"
	end
	return v
end

function M.check_job_id(job_id)
	return check_count_arg("job id", job_id)
end

function M.check_uid(uid)
	return check_count_arg("uid", uid)
end

---------------------------------------------------------------------------
-- Orchestrator answers -> environment (pure)
---------------------------------------------------------------------------

local SAFE_SERVER = "^[A-Za-z0-9_][A-Za-z0-9_.:%-]*$"

local function is_count(v)
	return type(v) == "number" and v >= 0 and v == math.floor(v) and v < 2 ^ 53
end

local function int_str(v)
	return string.format("%d", v)
end

-- Validate a GET server/allocation answer. Returns a normalized table
-- {name=, servers={{name=, cores=, core_list={...}, msize=, ssize=}}}
-- or nil, why.
function M.check_allocation(alloc, expected_name)
	if type(alloc) ~= "table" or json.is_array(alloc) then
		return nil, "allocation answer is not a JSON object"
	end
	if alloc.name ~= expected_name then
		return nil, "allocation answer names '" .. printable(alloc.name, 60)
			.. "', expected '" .. tostring(expected_name) .. "'"
	end
	local props = alloc.properties
	if type(props) ~= "table" or not (json.is_array(props) or #props > 0) then
		return nil, "allocation answer has no 'properties' list"
	end
	if #props == 0 then
		return nil, "allocation answer lists no servers"
	end
	if alloc.servers ~= nil and (not is_count(alloc.servers) or alloc.servers ~= #props) then
		return nil, "allocation answer says servers=" .. printable(alloc.servers, 20)
			.. " but lists " .. #props .. " properties"
	end
	local out = { name = alloc.name, servers = {} }
	for i, p in ipairs(props) do
		local where = "allocation properties[" .. (i - 1) .. "]"
		if type(p) ~= "table" then
			return nil, where .. " is not an object"
		end
		local sname = p.server_name
		if type(sname) ~= "string" or #sname > 255 or not sname:match(SAFE_SERVER) then
			return nil, where .. ".server_name is missing or has unsafe characters"
		end
		local s = { name = sname, core_list = {} }
		for _, k in ipairs({ "cores", "msize", "ssize" }) do
			local v = p[k]
			if v == nil or v == json.null then
				v = 0
			end
			if not is_count(v) then
				return nil, where .. "." .. k .. " is not a non-negative integer"
			end
			s[k] = v
		end
		local cl = p.core_list
		if cl ~= nil and cl ~= json.null then
			if type(cl) ~= "table" then
				return nil, where .. ".core_list is not a list"
			end
			for j, c in ipairs(cl) do
				if not is_count(c) then
					return nil, where .. ".core_list has a non-integer entry"
				end
				s.core_list[j] = c
			end
		end
		out.servers[i] = s
	end
	return out
end

local function env_line(key, value)
	value = tostring(value)
	if not key:match("^[A-Z_][A-Z0-9_]*$") or value:find("[%z\n\r]") then
		error("unsafe environment line for " .. key)
	end
	return key .. "=" .. value
end

-- Environment lines of a service job from its validated allocation.
function M.service_env(checked)
	local lines, names = {}, {}
	lines[#lines + 1] = env_line("WFM_SERVICE_NAME", checked.name)
	lines[#lines + 1] = env_line("WFM_SERVER_COUNT", #checked.servers)
	for i, s in ipairs(checked.servers) do
		names[i] = s.name
	end
	lines[#lines + 1] = env_line("WFM_SERVERS", table.concat(names, ","))
	for i, s in ipairs(checked.servers) do
		local p = "WFM_SERVER_" .. (i - 1) .. "_"
		local cores = {}
		for j, c in ipairs(s.core_list) do
			cores[j] = int_str(c)
		end
		lines[#lines + 1] = env_line(p .. "NAME", s.name)
		lines[#lines + 1] = env_line(p .. "CORES", int_str(s.cores))
		lines[#lines + 1] = env_line(p .. "CORE_LIST", table.concat(cores, ","))
		lines[#lines + 1] = env_line(p .. "MSIZE", int_str(s.msize))
		lines[#lines + 1] = env_line(p .. "SSIZE", int_str(s.ssize))
	end
	return lines
end

-- Validate an ephemeralservice/status answer for the service `name`.
-- Returns {name=, status=, servers=list or nil} or nil, why.
function M.check_status(st, name)
	if type(st) ~= "table" or json.is_array(st) then
		return nil, "status answer is not a JSON object"
	end
	if st.name ~= nil and st.name ~= name then
		return nil, "status answer names '" .. printable(st.name, 60) .. "'"
	end
	if type(st.status) ~= "string" or not M.KNOWN_STATUS[st.status] then
		return nil, "status answer has an unknown status '" .. printable(st.status, 30) .. "'"
	end
	local out = { name = name, status = st.status }
	local detail = st.detail
	if type(detail) == "string" and detail ~= "" then
		out.detail = printable(detail, 200)
	end
	-- "servers" is not in the spec yet; accept a list of names or of
	-- objects with server_name, ignore anything else.
	if type(st.servers) == "table" and #st.servers > 0 then
		local list = {}
		for i, s in ipairs(st.servers) do
			local sname = type(s) == "table" and s.server_name or s
			if type(sname) ~= "string" or #sname > 255 or not sname:match(SAFE_SERVER) then
				list = nil
				break
			end
			list[i] = sname
		end
		out.servers = list
	end
	return out
end

-- Environment lines of a step job from the services it uses.
function M.step_env(services)
	local lines, names = {}, {}
	lines[#lines + 1] = env_line("WFM_SERVICE_COUNT", #services)
	for i, s in ipairs(services) do
		names[i] = s.name
	end
	lines[#lines + 1] = env_line("WFM_SERVICES", table.concat(names, ","))
	for i, s in ipairs(services) do
		local p = "WFM_SERVICE_" .. (i - 1) .. "_"
		lines[#lines + 1] = env_line(p .. "NAME", s.name)
		lines[#lines + 1] = env_line(p .. "HINT", s.hint)
		lines[#lines + 1] = env_line(p .. "STATUS", s.status)
		if s.servers then
			lines[#lines + 1] = env_line(p .. "SERVERS", table.concat(s.servers, ","))
		end
	end
	return lines
end

-- Short text from an orchestrator error body ({"title","description"} or text).
function M.error_text(body)
	if type(body) ~= "string" or body == "" then
		return ""
	end
	local v = json.decode(body)
	if type(v) == "table" then
		local parts = {}
		if type(v.title) == "string" then
			parts[#parts + 1] = v.title
		end
		if type(v.description) == "string" then
			parts[#parts + 1] = v.description
		end
		if #parts > 0 then
			return ": " .. printable(table.concat(parts, ": "), 300)
		end
	end
	return ": " .. printable(body, 200)
end

-- The orchestrator's description alone (it names the rule that refused),
-- else its title, else the body as text; nil for an empty body.
function M.error_description(body)
	if type(body) ~= "string" or body == "" then
		return nil
	end
	local v = json.decode(body)
	if type(v) == "table" then
		for _, k in ipairs({ "description", "title" }) do
			if type(v[k]) == "string" and v[k] ~= "" then
				local d = v[k]
				-- The orchestrator starts a description with the field it names
				-- ("uid: job 42 ..."); the field is in its own key too.
				if type(v.field) == "string" and d:sub(1, #v.field + 2) == v.field .. ": " then
					d = d:sub(#v.field + 3)
				end
				return printable(d, 300)
			end
		end
	end
	return printable(body, 200)
end

-- The field an orchestrator's error answer names (its "field" key), or nil.
function M.error_field(body)
	local v = type(body) == "string" and json.decode(body) or nil
	if type(v) == "table" and type(v.field) == "string" then
		return v.field
	end
	return nil
end

---------------------------------------------------------------------------
-- Cache: one JSON file per job in cache_dir, written to a temporary file
-- then renamed, so a reader never sees half a file.
---------------------------------------------------------------------------

function M.cache_path(cfg, job_id)
	return cfg.cache_dir .. "/job_" .. job_id .. ".json"
end

-- Returns the cached record, or nil, nil when there is none, or nil, err.
function M.read_cache(cfg, job_id)
	local path = M.cache_path(cfg, job_id)
	local text = M.read_file(path)
	if not text then
		return nil, nil
	end
	local rec, err = json.decode(text)
	if type(rec) ~= "table" or rec.version ~= M.CACHE_VERSION or tostring(rec.job_id) ~= job_id then
		return nil, "cache file " .. path .. " is unreadable: " .. tostring(err or "wrong content")
	end
	return rec
end

function M.write_cache(cfg, job_id, rec)
	local text, err = json.encode(rec)
	if not text then
		return nil, "cannot encode cache: " .. err
	end
	local path = M.cache_path(cfg, job_id)
	local tmp = path .. ".tmp"
	local f = io.open(tmp, "wb")
	if not f then
		-- The directory may not exist yet: create it once and retry.
		M.run({ "mkdir", "-p", cfg.cache_dir })
		f, err = io.open(tmp, "wb")
		if not f then
			return nil, "cannot write cache file " .. tmp .. ": " .. tostring(err)
		end
	end
	local ok, werr = f:write(text, "\n")
	local cok = f:close()
	if not ok or not cok then
		os.remove(tmp)
		return nil, "cannot write cache file " .. tmp .. ": " .. tostring(werr)
	end
	local rok, rerr = os.rename(tmp, path)
	if not rok then
		os.remove(tmp)
		return nil, "cannot rename " .. tmp .. ": " .. tostring(rerr)
	end
	return true
end

function M.remove_cache(cfg, job_id)
	local path = M.cache_path(cfg, job_id)
	os.remove(path .. ".tmp")
	if not file_exists(path) then
		return true
	end
	local ok, err = os.remove(path)
	if not ok then
		return nil, "cannot remove cache file " .. path .. ": " .. tostring(err)
	end
	return true
end

-- Environment lines of a wfm_job job from its services (issue #18), numbered in the
-- lines' order, and by short name (upper case, '-' as '_') for the named ones.
function M.job_env(services)
	local lines, names = {}, {}
	lines[#lines + 1] = env_line("WFM_JOB_COUNT", #services)
	for i, s in ipairs(services) do
		names[i] = s.name
	end
	lines[#lines + 1] = env_line("WFM_JOB_SERVICES", table.concat(names, ","))
	for i, s in ipairs(services) do
		if not M.check_name(s.name) then
			error("cached service name is invalid")
		end
		local servers = table.concat(type(s.servers) == "table" and s.servers or {}, ",")
		local prefixes = { "WFM_JOB_" .. (i - 1) .. "_" }
		if s.short then
			prefixes[2] = "WFM_JOB_" .. s.short:upper():gsub("%-", "_") .. "_"
		end
		for _, p in ipairs(prefixes) do
			lines[#lines + 1] = env_line(p .. "NAME", s.name)
			lines[#lines + 1] = env_line(p .. "TYPE", s.type)
			lines[#lines + 1] = env_line(p .. "SERVERS", servers)
			lines[#lines + 1] = env_line(p .. "MOUNTPOINT", s.mountpoint or "")
		end
	end
	return lines
end

-- Environment lines for a job from its cache record. Pure.
function M.env_from_cache(rec, job_id)
	if rec.kind == "job" and type(rec.services) == "table" then
		return M.job_env(rec.services)
	elseif rec.kind == "service" then
		local checked, err = M.check_allocation(rec.allocation, rec.name)
		if not checked then
			return nil, "cached allocation of job " .. job_id .. ": " .. err
		end
		return M.service_env(checked)
	elseif rec.kind == "step" and type(rec.services) == "table" then
		return M.step_env(rec.services)
	elseif (rec.kind == "create" or rec.kind == "destroy") and M.check_name(rec.name) then
		return { env_line("WFM_SERVICE_NAME", rec.name),
			env_line("WFM_SERVICE_STATUS", rec.status or "") }
	end
	return nil, "cache record of job " .. job_id .. " has an unknown kind"
end

---------------------------------------------------------------------------
-- Orchestrator client and scontrol (slurmscriptd only)
---------------------------------------------------------------------------

local HTTP_MARK = "__WFM_HTTP="

-- Returns the token (string) or nil when none, or nil, err. Never logged.
function M.read_token(cfg)
	if not cfg.token_file then
		return nil
	end
	local text = M.read_file(cfg.token_file)
	if not text then
		return nil
	end
	local token = trim(text)
	if token == "" then
		return nil
	end
	if token:find("[%z\1-\31\127]") then
		return nil, "token file " .. cfg.token_file .. " contains a line break or a control character"
	end
	return token
end

-- One HTTP request through curl, with a JSON body if `body` (text) is given.
-- Returns status, body or nil, err.
function M.http(cfg, method, path, body)
	if not cfg.orchestrator_url then
		return nil, "orchestrator_url is not set in " .. M.config_path()
	end
	local token, terr = M.read_token(cfg)
	if terr then
		return nil, terr
	end
	local body_file = os.tmpname()
	local header_file, data_file
	local argv = {
		cfg.curl, "-q", "-sS", "--max-time", tostring(cfg.timeout),
		"-o", body_file, "-w", HTTP_MARK .. "%{http_code}",
		"-X", method, "-H", "Accept: application/json",
	}
	if token then
		-- The token goes in a file (mode 0600 from mkstemp), never on the
		-- command line where `ps` would show it.
		header_file = os.tmpname()
		local f = io.open(header_file, "wb")
		if not f then
			os.remove(body_file)
			os.remove(header_file)
			return nil, "cannot write a temporary header file"
		end
		f:write("Authorization: Bearer ", token, "\n")
		f:close()
		argv[#argv + 1] = "-H"
		argv[#argv + 1] = "@" .. header_file
	end
	if body then
		-- Through a file too: the body may be long, and it is data, not an argument.
		data_file = os.tmpname()
		local f = io.open(data_file, "wb")
		if not f then
			os.remove(body_file)
			os.remove(data_file)
			if header_file then
				os.remove(header_file)
			end
			return nil, "cannot write a temporary request body file"
		end
		f:write(body)
		f:close()
		argv[#argv + 1] = "-H"
		argv[#argv + 1] = "Content-Type: application/json"
		argv[#argv + 1] = "--data-binary"
		argv[#argv + 1] = "@" .. data_file
	end
	local status, err = M.exchange(cfg, argv, method, path, body_file)
	local answer = M.read_file(body_file) or ""
	os.remove(body_file)
	if header_file then
		os.remove(header_file)
	end
	if data_file then
		os.remove(data_file)
	end
	if not status then
		return nil, err
	end
	return status, answer
end

-- Run curl's argv (its URL still to add) against the orchestrators in turn until one
-- answers. A round tries each configured URL in order; an orchestrator that cannot be
-- reached, or that answers 503 (a standby: issue #20; or one reading its state again
-- after a refused commit, a database failover: nothing was done), sends the request to
-- the next one. Rounds are repeated, a second apart, `retries` times, and for as long
-- as `retry_for` seconds from the first (longer than a failover). Every request the
-- plugin sends is safe to repeat (idempotent reserve, bind and release). Returns
-- status or nil, err (naming the last answer); the answer's body is in body_file.
function M.exchange(cfg, argv, method, path, body_file)
	local urls = cfg.orchestrator_url
	local deadline = os.time() + cfg.retry_for
	local n = #argv + 1
	local err
	local round = 0
	while true do
		for _, url in ipairs(urls) do
			argv[n] = url .. path
			local _, out = M.run(argv)
			out = out or ""
			local code = out:match(HTTP_MARK .. "(%d%d%d)")
			if code == "503" then
				local why = M.error_description(M.read_file(body_file))
				err = method .. " " .. path .. ": " .. url .. " answered 503 ("
					.. (why and printable(why, 300) or "not the leading orchestrator") .. ")"
			elseif code and code ~= "000" then
				return tonumber(code)
			else
				local msg = trim(out:gsub(HTTP_MARK .. "%d*", ""))
				err = method .. " " .. path .. ": cannot reach the orchestrator at "
					.. url .. (msg ~= "" and (": " .. printable(msg, 200)) or "")
			end
		end
		round = round + 1
		if round > cfg.retries and os.time() >= deadline then
			return nil, err
		end
		M.run({ "sleep", "1" })
	end
end

-- Request paths carrying whom the plugin acts for (issue #15): the
-- orchestrator decides from them whether this job may bind, use or release
-- the service. The name is a checked service name and the values checked
-- digits, so nothing needs escaping and curl sees no URL glob ([] {}).
function M.allocation_path(name, job_id, uid)
	local path = M.API_ALLOCATION .. name .. "?job_id=" .. job_id
	if uid then
		path = path .. "&uid=" .. uid
	end
	return path
end

function M.status_path(name, uid, job_id)
	return M.API_STATUS .. name .. "?uid=" .. uid .. (job_id and ("&job_id=" .. job_id) or "")
end

function M.release_path(name, job_id, uid)
	return M.API_RELEASE .. name .. "?job_id=" .. job_id .. "&uid=" .. uid
end

-- A job's own services (issue #18): reserved for job_id of uid, released for job_id.
function M.jobservice_path(job_id, uid)
	return M.API_JOBSERVICE .. "?job_id=" .. job_id .. (uid and ("&uid=" .. uid) or "")
end

-- The status list, for everybody (uid nil) or for uid's user only.
function M.statuses_path(uid)
	return M.API_STATUSES .. (uid and ("?uid=" .. uid) or "")
end

-- Job state as printed by scontrol, "GONE" when Slurm no longer knows the
-- job, or nil, err.
function M.job_state(cfg, job_id)
	local ok, out = M.run({ cfg.scontrol, "show", "job", "-o", job_id })
	out = out or ""
	local state = out:match("JobState=(%u[%u_]*)")
	if state then
		return state
	end
	if out:find("Invalid job id", 1, true) then
		return "GONE"
	end
	return nil, "scontrol show job " .. job_id .. " failed" .. (ok and "" or ": " .. printable(out, 200))
end

---------------------------------------------------------------------------
-- Operations. Each returns ok, err (or a value, err); none touches slurm.*
-- return codes.
---------------------------------------------------------------------------

-- Why the orchestrator refused (403) job_id the reservation `name`. Its
-- description restates "job N (uid U, user) may not bind reservation X: "
-- before the rule; our message starts with the same words, so keep only
-- the rule and the held job's reason says it once. Any other wording is
-- kept whole.
function M.refusal_reason(body, job_id, name)
	local d = M.error_description(body)
	if not d then
		return "refused by the orchestrator (HTTP 403, no description)"
	end
	local head = "job " .. job_id .. " "
	local _, last = d:find(" may not bind reservation " .. name .. ": ", 1, true)
	if last and d:sub(1, #head) == head and last < #d then
		return d:sub(last + 1)
	end
	return d
end

-- Bind a service job to its reservation and cache the allocation. The
-- orchestrator checks that job_id (running as uid) may bind it; a 200
-- for a reservation this job already bound is a re-run (slurmctld
-- restart, requeue) and is handled like any 200.
function M.setup_service(cfg, job_id, uid, name)
	local status, body = M.http(cfg, "GET", M.allocation_path(name, job_id, uid))
	if not status then
		return nil, body
	end
	if status == 200 then
		local alloc, derr = json.decode(body)
		if alloc == nil then
			return nil, "allocation answer for " .. name .. " is not JSON: " .. derr
		end
		local _, cerr = M.check_allocation(alloc, name)
		if cerr then
			return nil, cerr
		end
		local ok, werr = M.write_cache(cfg, job_id, {
			version = M.CACHE_VERSION, kind = "service", job_id = job_id,
			name = name, allocation = alloc,
		})
		if not ok then
			return nil, werr
		end
		M.log("info", job_id, name, "reservation ALLOCATED, allocation cached")
		return true
	elseif status == 403 then
		return nil, "job " .. job_id .. " (uid " .. uid .. ") may not bind reservation "
			.. name .. ": " .. M.refusal_reason(body, job_id, name)
	elseif status == 501 then
		-- Already ALLOCATED. An orchestrator that reads job_id answers 200
		-- to the job that bound it, so this is another job's binding, or
		-- the orchestrator predates job_id: then this job's cache shows a
		-- re-run of its own setup.
		local rec = M.read_cache(cfg, job_id)
		if rec and rec.kind == "service" and rec.name == name
			and M.check_allocation(rec.allocation, name) then
			M.log("info", job_id, name, "reservation already ALLOCATED to this job, using the cached allocation")
			return true
		end
		return nil, "reservation " .. name .. " is already ALLOCATED and job " .. job_id
			.. " has no cached allocation (was it started by another job?)"
	elseif status == 409 then
		return nil, "reservation " .. name .. " is still queued" .. M.error_text(body)
	elseif status == 500 then
		return nil, "reservation " .. name .. " does not exist" .. M.error_text(body)
	end
	return nil, "GET " .. M.API_ALLOCATION .. name .. ": unexpected HTTP status "
		.. status .. M.error_text(body)
end

-- Check that every service a step uses is usable by uid and cache what
-- the job will see in its environment.
function M.setup_step(cfg, job_id, uid, uses)
	local services, problems = {}, {}
	for i, use in ipairs(uses) do
		local status, body = M.http(cfg, "GET", M.status_path(use.name, uid, job_id))
		if not status then
			return nil, body
		end
		if status == 200 then
			local st, derr = json.decode(body)
			local checked, cerr
			if st == nil then
				cerr = "status answer is not JSON: " .. derr
			else
				checked, cerr = M.check_status(st, use.name)
			end
			if not checked then
				problems[#problems + 1] = "service " .. use.name .. ": " .. cerr
			elseif not M.USABLE_STATUS[checked.status] then
				problems[#problems + 1] = "service " .. use.name .. " is not usable (status "
					.. checked.status .. (checked.detail and (": " .. checked.detail) or "") .. ")"
			else
				services[i] = { name = use.name, hint = use.hint, status = checked.status,
					servers = checked.servers }
			end
		elseif status == 500 then
			-- No such service, or not uid's: the orchestrator answers both
			-- alike (it does not reveal which exist) and its description
			-- names the rule.
			problems[#problems + 1] = "service " .. use.name .. " is not usable: "
				.. (M.error_description(body) or ("no service " .. use.name
					.. " of uid " .. uid .. " (HTTP 500)"))
		else
			problems[#problems + 1] = "service " .. use.name .. ": unexpected HTTP status "
				.. status .. M.error_text(body)
		end
	end
	if #problems > 0 then
		return nil, table.concat(problems, "; ")
	end
	local ok, werr = M.write_cache(cfg, job_id, {
		version = M.CACHE_VERSION, kind = "step", job_id = job_id,
		services = json.array(services),
	})
	if not ok then
		return nil, werr
	end
	M.log("info", job_id, nil, "services checked and cached: " .. M.describe_spec({ kind = "step", services = uses }))
	return true
end

-- One status lookup of `name` for job_id (nil: no claim) of uid. Returns
-- checked status, or nil, why (refused = true when the orchestrator says the
-- service is not uid's, or unknown: it answers both alike).
function M.service_status(cfg, name, uid, job_id)
	local status, body = M.http(cfg, "GET", M.status_path(name, uid, job_id))
	if not status then
		return nil, body
	end
	if status == 500 then
		return nil, M.error_description(body) or ("no service " .. name .. " of uid " .. uid), true
	elseif status ~= 200 then
		return nil, "GET " .. M.API_STATUS .. name .. ": unexpected HTTP status " .. status
			.. M.error_text(body)
	end
	local st, derr = json.decode(body)
	if st == nil then
		return nil, "status answer for " .. name .. " is not JSON: " .. derr
	end
	return M.check_status(st, name)
end

local function with_detail(st)
	return st.status .. (st.detail and (": " .. st.detail) or "")
end

-- The service of a create_persistent job ended before it was up: final. The
-- hook fails, so Slurm holds the job and records the reason (Reason,
-- SystemComment); the cache says it failed, and teardown (which Slurm runs
-- after a failed stage-in with Flags=TeardownFailure) cancels the held job:
-- held, it would wait for ever, and so would everything after it (the SM's
-- steps and destroy use afterany). Cancelled inside this hook instead, the job
-- would end before Slurm records the reason (seen on 22.05). Returns nil, why.
function M.cannot_start(cfg, job_id, rec, status_text)
	local msg = "service " .. rec.name .. " cannot start: it is " .. status_text
	rec.failed = msg
	local ok, werr = M.write_cache(cfg, job_id, rec)
	if not ok then
		M.log("error", job_id, rec.name, werr)
	end
	return nil, msg
end

-- The refusal of a Session Manager job's action on a service, as a held job's reason.
function M.may_not(job_id, uid, verb, name, why)
	return "job " .. job_id .. " (uid " .. uid .. ") may not " .. verb .. " service " .. name
		.. ": " .. why
end

-- The cache record of a create or destroy job (what paths, data_in and teardown read).
function M.sm_record(kind, job_id, uid, name, status)
	return { version = M.CACHE_VERSION, kind = kind, job_id = job_id, name = name, uid = uid,
		status = status }
end

-- create_persistent (Session Manager): the job of uid claims its user's service
-- (the orchestrator records job_id's claim) and data_in waits until it is up.
-- The orchestrator starts the service itself when the reservation takes its
-- resources; this job neither binds nor releases it.
function M.setup_create(cfg, job_id, uid, spec)
	local st, err, refused = M.service_status(cfg, spec.name, uid, job_id)
	if not st then
		if refused then
			return nil, M.may_not(job_id, uid, "create", spec.name, err
				.. " (reserve it first, as its user)")
		end
		return nil, err
	end
	if M.ENDED_STATUS[st.status] then
		return M.cannot_start(cfg, job_id, M.sm_record("create", job_id, uid, spec.name,
			st.status), with_detail(st))
	end
	local ok, werr = M.write_cache(cfg, job_id, M.sm_record("create", job_id, uid, spec.name,
		st.status))
	if not ok then
		return nil, werr
	end
	M.log("info", job_id, spec.name, "create_persistent: claimed (" .. st.status .. ")")
	return true
end

-- destroy_persistent (Session Manager): stop uid's user's service (DELETE
-- ephemeralservice/release with the job and uid); data_in waits until it is
-- STOPPED. A service already STOPPED (a re-run) is success.
function M.setup_destroy(cfg, job_id, uid, spec)
	local st, err, refused = M.service_status(cfg, spec.name, uid, job_id)
	if not st then
		if refused then
			return nil, M.may_not(job_id, uid, "destroy", spec.name, err)
		end
		return nil, err
	end
	if st.status ~= "STOPPED" then
		local status, body = M.http(cfg, "DELETE", M.release_path(spec.name, job_id, uid))
		if not status then
			return nil, body
		end
		-- 403 naming uid: refused. 500: released meanwhile (data_in sees STOPPED).
		if status == 403 and M.error_field(body) == "uid" then
			return nil, M.may_not(job_id, uid, "destroy", spec.name,
				M.error_description(body) or "refused")
		elseif status ~= 200 and status ~= 500 then
			return nil, "DELETE " .. M.API_RELEASE .. spec.name .. ": unexpected HTTP status "
				.. status .. M.error_text(body)
		end
	end
	local ok, werr = M.write_cache(cfg, job_id, M.sm_record("destroy", job_id, uid, spec.name,
		st.status))
	if not ok then
		return nil, werr
	end
	M.log("info", job_id, spec.name, "destroy_persistent: release asked (was " .. st.status .. ")")
	return true
end

-- wfm_job (issue #18): reserve each line's service for this job of uid (POST
-- server/jobservice). The orchestrator asks Slurm whether job_id is uid's and carries
-- wfm_job, derives the name and answers it; the same line again (setup re-run,
-- requeue) gets the same reservation. data_in then waits until each is up.
function M.setup_job(cfg, job_id, uid, spec)
	local services = {}
	for i, line in ipairs(spec.services) do
		local body = assert(json.encode(line.body))
		local status, answer = M.http(cfg, "POST", M.jobservice_path(job_id, uid), body)
		if not status then
			return nil, answer
		end
		local what = "wfm_job" .. (line.short and (" name=" .. line.short) or "")
		if status == 403 then
			return nil, "job " .. job_id .. " (uid " .. uid .. ") may not have its service ("
				.. what .. "): " .. (M.error_description(answer) or "refused (HTTP 403)")
		elseif status ~= 200 then
			return nil, what .. ": the orchestrator refused it (HTTP " .. status .. ")"
				.. M.error_text(answer)
		end
		local got, derr = json.decode(answer)
		if type(got) ~= "table" or not M.check_name(got.name) then
			return nil, what .. ": the orchestrator's answer names no service"
				.. (derr and (": " .. derr) or "")
		end
		services[i] = { name = got.name, short = line.short, type = line.type,
			mountpoint = type(got.mountpoint) == "string" and got.mountpoint or "",
			status = got.status }
		M.log("info", job_id, got.name, "job-scoped service reserved (" .. tostring(got.status) .. ")")
	end
	return M.write_cache(cfg, job_id, { version = M.CACHE_VERSION, kind = "job",
		job_id = job_id, uid = uid, services = json.array(services) })
end

-- One look at the services of a wfm_job job: true once every one is up (ALLOCATED:
-- its service job runs on its datanodes; the cache then holds each service's servers
-- for paths), false and the statuses while one is not (a full cluster keeps it
-- QUEUED in the orchestrator's order), nil and why when one ended or is gone.
function M.job_services_once(cfg, job_id, rec)
	local uid = tostring(rec.uid)
	local waiting = {}
	for _, svc in ipairs(rec.services) do
		if svc.status ~= "ALLOCATED" or not svc.servers then
			local st, err, refused = M.service_status(cfg, svc.name, uid)
			if st then
				if M.UP_STATUS[st.status] then
					svc.status, svc.servers = st.status, json.array(st.servers or {})
				elseif M.ENDED_STATUS[st.status] then
					return nil, "service " .. svc.name .. " cannot start: it is " .. with_detail(st)
				else
					waiting[#waiting + 1] = svc.name .. " " .. with_detail(st)
				end
			elseif refused then
				return nil, "service " .. svc.name .. " is gone: " .. err
			else
				waiting[#waiting + 1] = svc.name .. " " .. err
			end
		end
	end
	if #waiting > 0 then
		return false, "job-scoped services not up (ALLOCATED)", table.concat(waiting, "; ")
	end
	local ok, werr = M.write_cache(cfg, job_id, rec)
	if not ok then
		return nil, werr
	end
	M.log("info", job_id, nil, "job-scoped services up: " .. #rec.services)
	return true
end

-- Teardown of a wfm_job job: release its services (DELETE server/jobservice, which
-- releases every job-scoped service of job_id and nothing else; none left is
-- success), unless the job will run again. A requeued job is torn down while
-- scontrol still prints it COMPLETING (Slurm 22.05 and 24.11 run stage-out and
-- teardown from job_completion_logger at the requeue): that state is read again,
-- every cfg.poll s for at most cfg.wait s, until it says where the job goes.
function M.teardown_job(cfg, job_id)
	local state, serr = M.job_state(cfg, job_id)
	local polls = math.ceil(cfg.wait / cfg.poll)
	while state == "COMPLETING" and polls > 0 do
		M.run({ "sleep", tostring(cfg.poll) })
		polls = polls - 1
		state, serr = M.job_state(cfg, job_id)
	end
	if not state then
		return nil, serr
	end
	if state == "COMPLETING" then
		return nil, "job " .. job_id .. " is still COMPLETING after " .. cfg.wait
			.. " s: cannot tell a requeue from its end yet (Slurm retries the teardown)"
	end
	if M.WILL_RERUN_STATES[state] then
		M.log("info", job_id, nil, "job is " .. state .. " and will run again: its job-scoped services are kept")
		return true
	end
	local status, body = M.http(cfg, "DELETE", M.jobservice_path(job_id))
	if not status then
		return nil, body
	end
	if status ~= 200 then
		return nil, "DELETE " .. M.API_JOBSERVICE .. ": unexpected HTTP status " .. status
			.. M.error_text(body)
	end
	local got = json.decode(body)
	local names = type(got) == "table" and type(got.released) == "table" and got.released or {}
	M.log("info", job_id, nil, "job " .. state .. ": job-scoped services released: "
		.. (#names > 0 and table.concat(names, ",") or "none left"))
	return M.remove_cache(cfg, job_id)
end

-- Slurm 22.05's slurmscriptd runs each hook in a child fork()ed from a threaded
-- process, its output pipe made without close-on-exec: a hook forked while another
-- hook's pipe is being set up inherits both ends of that pipe, and the other hook's
-- caller waits for EOF until the inheritor exits. A data_in that waits (create,
-- destroy, wfm_job) lives up to `wait` seconds: a service job whose data_in started
-- at the same instant then stayed in stage-in that long (seen in CI: the Session
-- Manager's create job and its service's job are set up together). So on 22.05 such
-- a data_in first closes every pipe it holds both ends of (M.drop_inherited_pipes;
-- its own output pipe's read end was closed at fork). Without luaposix it cannot:
-- its setup then ends a second later, so that its data_in usually starts after the
-- hooks that started with it are done. 24.05+ waits in test_data_in (a short hook).
M.WAITS_IN_DATA_IN = { create = true, destroy = true, job = true }

local SETUP = {
	service = function(cfg, job_id, uid, spec) return M.setup_service(cfg, job_id, uid, spec.name) end,
	job = function(...) return M.setup_job(...) end,
	create = function(...) return M.setup_create(...) end,
	destroy = function(...) return M.setup_destroy(...) end,
}

function M.setup(cfg, job_id, uid, spec)
	local setup = SETUP[spec.kind]
	if not setup then
		return M.setup_step(cfg, job_id, uid, spec.services)
	end
	local ok, err = setup(cfg, job_id, uid, spec)
	if ok and M.WAITS_IN_DATA_IN[spec.kind] and not M.polls_stage_in() and not M.posix() then
		M.run({ "sleep", "1" })
	end
	return ok, err
end

-- luaposix's modules this plugin uses (Debian: lua-posix), or nil and why. Loaded
-- only by a 22.05 waiting hook's setup and data_in; tests replace M.posix.
function M.load_posix()
	local px = {}
	for key, name in pairs({ unistd = "posix.unistd", stat = "posix.sys.stat",
		dirent = "posix.dirent" }) do
		local ok, mod = pcall(require, name)
		if not ok then
			return nil, tostring(mod):match("^[^\n]*")
		end
		px[key] = mod
	end
	return px
end

M.posix = M.load_posix

-- Closes both ends of every pipe this process holds both ends of: on 22.05 those
-- are another hook's output pipe when inherited at fork (above), whose caller waits
-- for our exit otherwise, and slurmscriptd's own wake-up pipe (every hook has it;
-- only slurmscriptd uses it, its copy stays open). Our own output pipe's read end
-- was closed in the child before the script ran; io.popen keeps one end. Returns
-- how many descriptors were closed.
function M.drop_inherited_pipes(px)
	local ends = {}
	for name in px.dirent.files("/proc/self/fd") do
		local fd = tonumber(name)
		local st = fd and px.stat.stat("/proc/self/fd/" .. name)
		if st and px.stat.S_ISFIFO(st.st_mode) ~= 0 then
			local key = st.st_dev .. ":" .. st.st_ino
			ends[key] = ends[key] or {}
			table.insert(ends[key], fd)
		end
	end
	local closed = 0
	for _, fds in pairs(ends) do
		if #fds > 1 then
			for _, fd in ipairs(fds) do
				if px.unistd.close(fd) then
					closed = closed + 1
				end
			end
		end
	end
	return closed
end

-- data_in's first act on 22.05 when it will wait (M.WAITS_IN_DATA_IN).
function M.leave_others_pipes(job_id)
	local px, why = M.posix()
	if not px then
		M.log("error", job_id, nil, "data_in: luaposix is not loadable (" .. tostring(why)
			.. "): a hook forked with this one may wait for it to end (Slurm 22.05;"
			.. " install lua-posix, docs/slurm.md)")
		return
	end
	-- debug: slurmscriptd's wake-up pipe makes it 2 on every such data_in
	M.log("debug", job_id, nil, "data_in: closed " .. M.drop_inherited_pipes(px)
		.. " descriptor(s) of pipes inherited from slurmscriptd (Slurm 22.05: another"
		.. " hook's caller may wait for their end)")
end

-- One look at what the stage-in of job_id waits for: a wfm_job job's services up, a
-- create_persistent job's service up (ALLOCATED), a destroy_persistent job's
-- STOPPED (its datanodes free); other jobs wait for nothing. true when done (the
-- cache then records the status paths exports), false, what is awaited and the
-- last status while waiting, nil and why on failure.
function M.stage_in_once(cfg, job_id, rec)
	if rec.kind == "job" then
		return M.job_services_once(cfg, job_id, rec)
	end
	if rec.kind ~= "create" and rec.kind ~= "destroy" then
		return true
	end
	local name = rec.name
	local st, err, refused = M.service_status(cfg, name, tostring(rec.uid))
	if not st then
		if refused and rec.kind == "destroy" then
			return true -- forgotten after released_retention: long stopped
		elseif refused then
			return nil, "service " .. name .. " is gone: " .. err
		end
		return false, M.not_yet(rec), err
	end
	local last = with_detail(st)
	if rec.kind == "create" and M.UP_STATUS[st.status]
		or rec.kind == "destroy" and st.status == "STOPPED" then
		rec.status = st.status
		local ok, werr = M.write_cache(cfg, job_id, rec)
		if not ok then
			return nil, werr
		end
		M.log("info", job_id, name, rec.kind .. "_persistent: service " .. st.status)
		return true
	end
	if rec.kind == "create" and M.ENDED_STATUS[st.status] then
		return M.cannot_start(cfg, job_id, rec, last)
	end
	return false, M.not_yet(rec), last
end

function M.not_yet(rec)
	return "service " .. rec.name .. " is not "
		.. (rec.kind == "create" and "up (ALLOCATED)" or "STOPPED")
end

-- Slurm 24.05 and newer poll slurm_bb_test_data_in after data_in (every
-- PollInterval, for at most StageInTimeout in all) and say so by defining
-- slurm.SLURM_BB_BUSY; 22.05 has neither.
function M.polls_stage_in()
	return slurm.SLURM_BB_BUSY ~= nil
end

-- data_in: with a Slurm that polls, one look (a failure shows at once) and the rest
-- is test_data_in's; otherwise wait here, looking every cfg.poll seconds for at most
-- cfg.wait seconds, holding this slurmscriptd process meanwhile.
function M.wait(cfg, job_id)
	local rec, cerr = M.read_cache(cfg, job_id)
	if not rec then
		return cerr == nil or nil, cerr
	end
	if M.WAITS_IN_DATA_IN[rec.kind] and not M.polls_stage_in() then
		M.leave_others_pipes(job_id)
	end
	local done, what, last = M.stage_in_once(cfg, job_id, rec)
	if done ~= false then
		return done, what
	elseif M.polls_stage_in() then
		return true
	end
	local polls = math.max(1, math.ceil(cfg.wait / cfg.poll))
	for _ = 1, polls do
		M.run({ "sleep", tostring(cfg.poll) })
		done, what, last = M.stage_in_once(cfg, job_id, rec)
		if done ~= false then
			return done, what
		end
	end
	return nil, what .. " after " .. cfg.wait .. " s (the plugin's wait): " .. last
end

-- test_data_in (Slurm 24.05+): one look; "busy" while waiting.
function M.test_stage_in(cfg, job_id)
	local rec, cerr = M.read_cache(cfg, job_id)
	if not rec then
		return cerr == nil or nil, cerr
	end
	local done, what = M.stage_in_once(cfg, job_id, rec)
	if done == false then
		return "busy"
	end
	return done, what
end

-- Slurm's version as {major, minor} from `scontrol --version`, or nil.
function M.slurm_version(cfg)
	local _, out = M.run({ cfg.scontrol, "--version" })
	local major, minor = tostring(out or ""):match("(%d+)%.(%d+)")
	if not major then
		return nil
	end
	return { tonumber(major), tonumber(minor) }
end

-- `scontrol show bbstat` with no job: the Session Manager's line for each live
-- service, "FA: BB Type=SBB bbid=3 Name=<svc> State=staged-in CreateTime=<t>".
-- uid (Slurm 23.02+ says who asks): only that uid's user's services, every
-- service for root; nil (22.05 does not say): every service.
function M.bbstat(cfg, uid)
	if uid == "0" then
		uid = nil
	end
	local status, body = M.http(cfg, "GET", M.statuses_path(uid))
	if not status then
		return nil, body
	end
	if status ~= 200 then
		return nil, "GET " .. M.API_STATUSES .. ": unexpected HTTP status " .. status
			.. M.error_text(body)
	end
	local list, derr = json.decode(body)
	if type(list) ~= "table" then
		return nil, "status list is not JSON: " .. tostring(derr)
	end
	local lines = {}
	for _, st in ipairs(list) do
		local state = type(st) == "table" and M.BBSTAT_STATE[st.status]
		if state and M.check_name(st.name) then
			local stype = type(st.type) == "string" and st.type:match("^%u+$") or "WFM"
			local id = is_count(st.id) and int_str(st.id) or "0"
			local created = type(st.created) == "string"
				and st.created:match("^(%d%d%d%d%-%d%d%-%d%dT%d%d:%d%d:%d%d)") or "Unknown"
			lines[#lines + 1] = "FA: BB Type=" .. stype .. " bbid=" .. id .. " Name=" .. st.name
				.. " State=" .. state .. " CreateTime=" .. created
		end
	end
	return lines
end

-- Release what the job holds. Idempotent: a missing cache or a reservation
-- already gone (502) is success.
--
-- Which reservation job_id may release is the orchestrator's record, not
-- ours: the DELETE names the job and the orchestrator releases only a
-- reservation this job bound. The name comes from the cache or, without
-- one, from the job script, which any job may fill with any name: that
-- proves nothing, and a 403 (job_id did not bind it) means nothing of
-- this job's is held there.
function M.teardown(cfg, job_id, job_script, hurry)
	local rec, cerr = M.read_cache(cfg, job_id)
	if cerr then
		M.log("error", job_id, nil, cerr .. " (ignored)")
	end
	local kind, name
	if rec then
		kind, name = rec.kind, rec.name
	else
		local spec = M.read_spec(job_script)
		if spec then
			kind, name = spec.kind, spec.name
		end
	end
	if kind == "job" then
		return M.teardown_job(cfg, job_id)
	end
	if kind == "create" and rec and rec.failed then
		-- Its service cannot start (cannot_start): end the held job. Not an
		-- error if that fails: it stays held with its reason.
		local state = M.job_state(cfg, job_id)
		if state == "PENDING" then
			local ok, out = M.run({ cfg.scancel, job_id })
			M.log("info", job_id, name, ok and ("job cancelled: " .. rec.failed)
				or ("scancel failed: " .. printable(out, 200)))
		end
	end
	if kind ~= "service" then
		local ok, err = M.remove_cache(cfg, job_id)
		if ok then
			M.log("info", job_id, nil, "teardown done (hurry=" .. tostring(hurry) .. ")")
		end
		return ok, err
	end
	local okname, nerr = M.check_name(name)
	if not okname then
		return nil, nerr
	end
	-- Slurm tears down the buffer of a pending job when it restarts (and
	-- after a failed pre_run) and then stages it in again: such a job keeps
	-- its reservation and its cache.
	local state, serr = M.job_state(cfg, job_id)
	if not state then
		return nil, serr
	end
	if M.WILL_RERUN_STATES[state] then
		M.log("info", job_id, name, "job is " .. state .. " and will be staged in again: reservation kept")
		return true
	end
	local status, body = M.http(cfg, "DELETE", M.allocation_path(name, job_id))
	if not status then
		return nil, body
	end
	if status == 200 or status == 502 then
		M.log("info", job_id, name, status == 200 and "reservation released"
			or "reservation already released (502)")
		return M.remove_cache(cfg, job_id)
	elseif status == 403 and M.error_field(body) == "job_id" then
		-- Final: retrying would get the same answer, and failing would only
		-- make Slurm retry. Nothing of this job's is held, so teardown is done.
		-- Any other 403 (the token lost its role) is an error: Slurm retries.
		M.log("info", job_id, name, "nothing released: the orchestrator says this job did not"
			.. " bind the reservation (" .. (M.error_description(body) or "HTTP 403") .. ")")
		return M.remove_cache(cfg, job_id)
	end
	return nil, "DELETE " .. M.API_ALLOCATION .. name .. ": unexpected HTTP status "
		.. status .. M.error_text(body)
end

-- Lines for the path_file, from the cache only (runs inside slurmctld).
function M.paths(cfg, job_id)
	local rec, err = M.read_cache(cfg, job_id)
	if not rec then
		return nil, err or ("no cached allocation for job " .. job_id
			.. " in " .. cfg.cache_dir .. " (did slurm_bb_setup run?)")
	end
	local ok, lines, eerr = pcall(M.env_from_cache, rec, job_id)
	if not ok then
		return nil, tostring(lines)
	end
	if not lines then
		return nil, eerr
	end
	return lines
end

function M.write_path_file(path_file, lines)
	local f, err = io.open(path_file, "wb")
	if not f then
		return nil, "cannot open path file " .. tostring(path_file) .. ": " .. tostring(err)
	end
	local ok, werr = f:write(table.concat(lines, "\n"), "\n")
	f:close()
	if not ok then
		return nil, "cannot write path file: " .. tostring(werr)
	end
	return true
end

---------------------------------------------------------------------------
-- Entry points. Each converts ok, err into slurm.SUCCESS or
-- slurm.ERROR, "<message>"; a Lua error inside becomes slurm.ERROR too.
---------------------------------------------------------------------------

local function entry(hook, job_id, fn)
	local ok, res, err = pcall(fn)
	if not ok then
		M.log("error", job_id, nil, hook .. ": internal error: " .. tostring(res))
		return slurm.ERROR, hook .. ": internal error: " .. printable(res, 200)
	end
	if res then
		return slurm.SUCCESS
	end
	err = printable(err or "failed", 900)
	M.log("error", job_id, nil, hook .. ": " .. err)
	return slurm.ERROR, err
end

-- entry() for a hook of one job that reads the configuration: fn(cfg, id), id checked.
local function job_entry(hook, job_id, fn)
	return entry(hook, job_id, function()
		local id, err = M.check_job_id(job_id)
		if not id then
			return nil, err
		end
		local cfg, cerr = M.load_config()
		if not cfg then
			return nil, cerr
		end
		return fn(cfg, id)
	end)
end

-- At submission (job_process, inside slurmctld: local files only): can each wfm_job
-- line ever fit? Without a readable configuration or limits file only the syntax is
-- checked (logged); setup's answer then says the rest.
function M.check_job_spec(spec)
	local cfg, cerr = M.load_config()
	local limits, lerr
	if cfg then
		limits, lerr = M.read_limits(cfg)
	end
	if not limits then
		M.log("info", nil, nil, "wfm_job: what can fit is not checked at submission: "
			.. tostring(cerr or lerr))
		return true
	end
	for i, line in ipairs(spec.services) do
		local ok, err = M.check_job_fits(line, limits)
		if not ok then
			return nil, (#spec.services > 1 and ("wfm_job line " .. i .. ": ") or "") .. err
		end
	end
	return true
end

--[[ slurm_bb_job_process(job_script [, uid, gid, job_info])
Runs INSIDE slurmctld at submission, job lock held; must be fast; never
killed. Validates the directives; an error rejects the job and the message
is printed by sbatch/salloc/srun. Reads the script only.
Ownership is not checked here, though 24.11 passes the uid: asking the
orchestrator is a network call, and burst_buffer_lua.c calls job_process
(like paths) directly in slurmctld, not through slurmscriptd, so a slow
answer would stall the controller. setup checks it instead, and a refused
job is held. ]]
function slurm_bb_job_process(job_script, ...)
	local job_id = M.job_id_from_script(job_script)
	return entry("job_process", job_id, function()
		local spec, err = M.read_spec(job_script)
		if not spec then
			return nil, err
		end
		if spec.kind == "job" then
			local ok, ferr = M.check_job_spec(spec)
			if not ok then
				return nil, ferr
			end
		end
		M.log("debug", job_id, nil, "directives accepted: " .. M.describe_spec(spec))
		return true
	end)
end

--[[ slurm_bb_pools()
Runs INSIDE slurmctld at startup and periodically. The second value must be
JSON: the orchestrator, not Slurm, accounts datanode resources, so there are
no pools. ]]
function slurm_bb_pools(...)
	local text = json.encode({ pools = json.array({}) })
	return slurm.SUCCESS, text
end

--[[ slurm_bb_job_teardown(job_id, job_script, hurry [, uid, gid, job_info])
slurmscriptd, OtherTimeout. After the job ends or is cancelled; run again
after a failure and after a slurmctld restart. Service job: DELETE
server/allocation/<name>?job_id=<id> (200 or 502 = released; 403 = this
job did not bind it, nothing to release: success), remove the cache; a
job still pending (restart, requeue) keeps both. Step job: remove the
cache. ]]
function slurm_bb_job_teardown(job_id, job_script, hurry, ...)
	return job_entry("teardown", job_id, function(cfg, id)
		return M.teardown(cfg, id, job_script, hurry)
	end)
end

--[[ slurm_bb_setup(job_id, uid, gid, pool, bb_size, job_script [, job_info])
slurmscriptd, OtherTimeout; while the job is pending. uid is the job's
user, from Slurm in 22.05 and 24.11. Service job:
GET server/allocation/<name>?job_id=<id>&uid=<uid> (reservation ->
ALLOCATED), cache the answer. Step job: GET status/<name>?uid=<uid> for
each used service, which must be ALLOCATED or STAGEDIN; cache them.
A failure, the orchestrator's refusal (403) included, holds the job
(FAIL_BURST_BUFFER_OP) with the message. ]]
function slurm_bb_setup(job_id, uid, gid, pool, bb_size, job_script, ...)
	return entry("setup", job_id, function()
		local id, err = M.check_job_id(job_id)
		if not id then
			return nil, err
		end
		local user, uerr = M.check_uid(uid)
		if not user then
			return nil, uerr
		end
		local spec, perr = M.read_spec(job_script)
		if not spec then
			return nil, perr
		end
		local cfg, cerr = M.load_config()
		if not cfg then
			return nil, cerr
		end
		return M.setup(cfg, id, user, spec)
	end)
end

--[[ slurm_bb_data_in(job_id, job_script [, uid, gid, job_info])
slurmscriptd, StageInTimeout. Nothing to stage: data movers are separate
jobs started by the orchestrator. A wfm_job job waits until its services are
up, a Session Manager create_persistent job until its service is up, a
destroy_persistent job until its service is STOPPED. On 22.05 that wait is
here (at most `wait` seconds, below StageInTimeout); on 24.05+ here is one
look and slurm_bb_test_data_in does the rest. A failure holds the job with
the reason. Other jobs: SUCCESS at once. ]]
function slurm_bb_data_in(job_id, job_script, ...)
	return job_entry("data_in", job_id, function(cfg, id)
		return M.wait(cfg, id)
	end)
end

--[[ slurm_bb_test_data_in(job_id, job_script, uid, gid, job_info)
Slurm 24.05+ only: slurmscriptd, called every PollInterval after data_in
while it answers BUSY, for at most StageInTimeout in all (then Slurm holds
the job: "Poll exceeded time limit"). One look at what data_in waits for:
BUSY while the services are not up, so a waiting job holds no process. ]]
function slurm_bb_test_data_in(job_id, job_script, ...)
	local busy = false
	local rc, msg = job_entry("test_data_in", job_id, function(cfg, id)
		local done, last = M.test_stage_in(cfg, id)
		busy = done == "busy"
		return done, last
	end)
	if busy then
		return slurm.SUCCESS, slurm.SLURM_BB_BUSY or "BUSY"
	elseif msg == nil then
		return rc -- 24.11 refuses a second value that is not a string, nil included
	end
	return rc, msg
end

--[[ slurm_bb_real_size(job_id [, uid, gid, job_info])
slurmscriptd. Only called for jobs that request a pool; there are none. ]]
function slurm_bb_real_size(job_id, ...)
	return slurm.SUCCESS
end

--[[ slurm_bb_paths(job_id, job_script, path_file [, uid, gid, job_info])
Runs INSIDE slurmctld when the job is about to start; must be fast. Reads
the cache written by setup and writes KEY=VALUE lines to path_file; Slurm
adds them to the job's environment. No network. ]]
function slurm_bb_paths(job_id, job_script, path_file, ...)
	return job_entry("paths", job_id, function(cfg, id)
		local lines, perr = M.paths(cfg, id)
		if not lines then
			return nil, perr
		end
		return M.write_path_file(path_file, lines)
	end)
end

--[[ slurm_bb_pre_run(job_id, job_script [, uid, gid, job_info])
slurmscriptd, OtherTimeout; nodes allocated, job configuring. Nothing to do. ]]
function slurm_bb_pre_run(job_id, job_script, ...)
	return slurm.SUCCESS
end

--[[ slurm_bb_post_run(job_id, job_script [, uid, gid, job_info])
slurmscriptd, OtherTimeout; after the job ran. Nothing to do. ]]
function slurm_bb_post_run(job_id, job_script, ...)
	return slurm.SUCCESS
end

--[[ slurm_bb_data_out(job_id, job_script [, uid, gid, job_info])
slurmscriptd, StageOutTimeout. Nothing to stage out here. ]]
function slurm_bb_data_out(job_id, job_script, ...)
	return slurm.SUCCESS
end

--[[ slurm_bb_test_data_out(job_id, job_script, uid, gid, job_info)
Slurm 24.05+ only (polls stage-out). Complete at once. ]]
function slurm_bb_test_data_out(job_id, job_script, ...)
	return slurm.SUCCESS
end

--[[ slurm_bb_get_status(...)   (22.05: the words after bbstat; 23.02+: uid,
gid, then those words)
slurmscriptd; `scontrol show bbstat job <id>` shows what the plugin cached for
a job (the environment it exports). `scontrol show bbstat` alone lists the
live services in the Session Manager's format: under 23.02+ (the version is
asked of scontrol: a 22.05 user could type two numbers) only the asking uid's
services, every service for root; under 22.05, which does not say who asks,
every service. ]]
function slurm_bb_get_status(...)
	local args = { ... }
	local usage = "usage: scontrol show bbstat [job <job id>]\n"
	local job_id
	for i = 1, select("#", ...) do
		if args[i] == "job" then
			job_id = args[i + 1]
			break
		end
	end
	if not job_id then
		local ok, res = pcall(function()
			local cfg, cerr = M.load_config()
			if not cfg then
				return cerr .. "\n"
			end
			local uid
			local v = M.slurm_version(cfg)
			if not v then
				return "cannot tell Slurm's version (scontrol --version): nothing listed\n"
			end
			if v[1] * 100 + v[2] >= 2302 then
				uid = M.check_uid(args[1])
				if not uid then
					return "Slurm did not say who asks: nothing listed\n"
				end
			end
			local lines, err = M.bbstat(cfg, uid)
			if not lines then
				return err .. "\n"
			end
			return #lines > 0 and (table.concat(lines, "\n") .. "\n") or ""
		end)
		if not ok then
			return slurm.ERROR, printable(res, 300)
		end
		return slurm.SUCCESS, res
	end
	local ok, res = pcall(function()
		local id, err = M.check_job_id(job_id)
		if not id then
			return err .. "\n" .. usage
		end
		local cfg, cerr = M.load_config()
		if not cfg then
			return cerr .. "\n"
		end
		local lines, perr = M.paths(cfg, id)
		if not lines then
			return perr .. "\n"
		end
		return "job " .. id .. ":\n" .. table.concat(lines, "\n") .. "\n"
	end)
	if not ok then
		return slurm.ERROR, printable(res, 300)
	end
	return slurm.SUCCESS, res
end
