-- burst_buffer_wfm.conf
local H = require("helper")
local test, eq, ok, contains = H.test, H.eq, H.ok, H.contains

test("parse_config reads key = value lines, comments and defaults", function()
	local _, M = H.load()
	local cfg = assert(M.parse_config("# c\norchestrator_url = https://orch:8443/api/ # trailing\n\n token_file=/etc/slurm/t\ncache_dir = /var/x/\n", "f"))
	H.list_eq(cfg.orchestrator_url, { "https://orch:8443/api" })
	eq(cfg.retry_for, 0, "no failover budget unless asked")
	eq(cfg.token_file, "/etc/slurm/t")
	eq(cfg.cache_dir, "/var/x")
	eq(cfg.timeout, 10)
	eq(cfg.retries, 2)
	eq(cfg.curl, "curl")
end)

test("parse_config names file and line of unknown keys and bad values", function()
	local _, M = H.load()
	local cases = {
		{ "foo = 1\n", "f:1: unknown key 'foo'" },
		{ "\ntimeout = 0\n", "f:2: timeout must be a whole number of seconds" },
		{ "timeout = 5s\n", "f:1: timeout" },
		{ "retries = 11\n", "f:1: retries" },
		{ "orchestrator_url = ftp://x\n", "f:1: orchestrator_url must be http(s)" },
		{ "orchestrator_url = http://x/'$(id)'\n", "f:1: orchestrator_url" },
		{ "orchestrator_url = http://x/a b\n", "f:1: orchestrator_url" },
		{ "orchestrator_url = http://x?a=1\n", "f:1: orchestrator_url" },
		{ "cache_dir = relative/dir\n", "f:1: cache_dir must be an absolute path" },
		{ "cache_dir = /tmp/a;b\n", "f:1: cache_dir" },
		{ "token_file = /a b\n", "f:1: token_file" },
		{ "curl = -o/etc/passwd\n", "f:1: curl" },
		{ "timeout = 5\ntimeout = 6\n", "f:2: 'timeout' is set twice" },
		{ "just words\n", "f:1: expected 'key = value'" },
	}
	for _, c in ipairs(cases) do
		local cfg, err = M.parse_config(c[1], "f")
		eq(cfg, nil, c[1])
		contains(err, c[2], c[1])
	end
end)

test("the shipped burst_buffer_wfm.conf.example parses", function()
	local _, M = H.load()
	local text = assert(H.read(H.plugin_dir .. "/burst_buffer_wfm.conf.example"))
	local cfg = assert(M.parse_config(text, "example"))
	H.list_eq(cfg.orchestrator_url, { "http://127.0.0.1:8080" })
end)

test("orchestrator_url may name a pair (or more) of orchestrators, each checked", function()
	local _, M = H.load()
	local cfg = assert(M.parse_config("orchestrator_url = http://a:8080/, https://b.example:8443\nretry_for = 60\n", "f"))
	H.list_eq(cfg.orchestrator_url, { "http://a:8080", "https://b.example:8443" })
	eq(cfg.retry_for, 60)
	local bad, err = M.parse_config("orchestrator_url = http://a:8080, ftp://b\n", "f")
	eq(bad, nil); contains(err, "f:1: orchestrator_url must be http(s)")
	bad, err = M.parse_config("orchestrator_url = http://a:8080,,http://b\n", "f")
	eq(bad, nil); contains(err, "several: separated by commas")
	bad, err = M.parse_config("retry_for = 3601\n", "f")
	eq(bad, nil); contains(err, "f:1: retry_for")
end)

test("the configuration file is looked for beside the script", function()
	local _, M = H.load()
	local path = M.config_path()
	contains(path, "/burst_buffer_wfm.conf")
	eq(path, M.script_dir() .. "/burst_buffer_wfm.conf")
	eq(H.exists(M.script_dir() .. "/burst_buffer.lua"), true)
end)

test("WFM_BB_CONF overrides the configuration path", function()
	local p = io.popen("WFM_BB_CONF=/tmp/other.conf lua5.1 -e " .. H.q(
		"slurm={}; dofile(" .. string.format("%q", H.script) .. "); io.write(wfm_bb.config_path())"))
	local out = p:read("*a")
	p:close()
	eq(out, "/tmp/other.conf")
end)

test("setup fails with a clear message when the configuration file is missing or wrong", function()
	local ctx = H.setup_env({})
	local script = ctx.script(H.SERVICE_SCRIPT)
	ctx.M.config_file = ctx.dir .. "/none.conf"
	local rc, msg = ctx.env.slurm_bb_setup("5", "1000", "1000", "", "0", script)
	eq(rc, ctx.slurm.ERROR)
	contains(msg, "cannot read configuration file " .. ctx.dir .. "/none.conf")
	ctx.M.config_file = H.write(ctx.dir .. "/bad.conf", "orchestrator = x\n")
	rc, msg = ctx.env.slurm_bb_setup("5", "1000", "1000", "", "0", script)
	eq(rc, ctx.slurm.ERROR)
	contains(msg, "bad.conf:1: unknown key 'orchestrator'")
	ctx.M.config_file = H.write(ctx.dir .. "/nourl.conf", "cache_dir = " .. ctx.cache_dir .. "\n")
	rc, msg = ctx.env.slurm_bb_setup("5", "1000", "1000", "", "0", script)
	eq(rc, ctx.slurm.ERROR)
	contains(msg, "orchestrator_url is not set")
	eq(#ctx.calls, 0)
end)
