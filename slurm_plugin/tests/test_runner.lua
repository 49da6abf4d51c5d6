-- The one command runner and its quoting.
local H = require("helper")
local test, eq, ok, contains = H.test, H.eq, H.ok, H.contains

test("default_run passes hostile arguments to the program unchanged (single quoting)", function()
	local _, M = H.load()
	local hostile = { "a'b", "''", "$(id)", "`id`", "; echo pwned", "a\"b", "\\", "$HOME", "*", "a b  c", "-n", "%s%d" }
	for _, s in ipairs(hostile) do
		local okr, out, code = M.default_run({ "printf", "%s", s })
		ok(okr, s)
		eq(code, 0, s)
		eq(out, s, s)
	end
end)

test("default_run reports the exit status and captures stderr", function()
	local _, M = H.load()
	local okr, out, code = M.default_run({ "sh", "-c", "echo oops >&2; exit 3" })
	eq(okr, false); eq(code, 3); eq(out, "oops\n")
end)

test("command_line refuses empty arguments and arguments with line breaks", function()
	local _, M = H.load()
	for _, argv in ipairs({ {}, { "echo", "" }, { "echo", "a\nb" }, { "echo", "a\rb" }, { "echo", 3 } }) do
		local cmd, err = M.command_line(argv)
		eq(cmd, nil)
		ok(err)
	end
	local okr, out = M.default_run({ "echo", "a\nb" })
	eq(okr, false); contains(out, "refusing to run")
end)

test("curl is called with -q, -sS, --max-time, -o file, -w code, -X method and the URL last", function()
	local ctx = H.setup_env({ ["GET /v2.0.0/server/allocation/u_s_nfs"] = { code = 200, body = H.ALLOC_OK } })
	eq(ctx.env.slurm_bb_setup("5", "1000", "1000", "", "0", ctx.script(H.SERVICE_SCRIPT)), 0)
	local argv = ctx.calls[1].argv
	eq(argv[1], "curl"); eq(argv[2], "-q"); eq(argv[3], "-sS")
	eq(argv[4], "--max-time"); eq(argv[5], "5")
	eq(argv[6], "-o")
	eq(argv[8], "-w"); eq(argv[9], "__WFM_HTTP=%{http_code}")
	eq(argv[10], "-X"); eq(argv[11], "GET")
	eq(argv[#argv], "http://orch.example:8080/v2.0.0/server/allocation/u_s_nfs?job_id=5&uid=1000")
	ok(ctx.M.command_line(argv))
	eq(H.exists(argv[7]), false, "body temp file removed")
end)

test("the token is sent from a header file, never in argv or in logs", function()
	local ctx = H.setup_env({ ["GET /v2.0.0/server/allocation/u_s_nfs"] = { code = 200, body = H.ALLOC_OK } },
		{ token = "s3cr3t-token\n" })
	eq(ctx.env.slurm_bb_setup("5", "1000", "1000", "", "0", ctx.script(H.SERVICE_SCRIPT)), 0)
	local call = ctx.calls[1]
	eq(call.header, "Authorization: Bearer s3cr3t-token\n")
	for _, a in ipairs(call.argv) do
		H.not_contains(a, "s3cr3t", "argv")
	end
	H.not_contains(table.concat(ctx.slurm.logs, "\n"), "s3cr3t", "logs")
	local hdr
	for i, a in ipairs(call.argv) do
		if a:sub(1, 1) == "@" then hdr = a:sub(2) end
	end
	eq(H.exists(hdr), false, "header temp file removed")
end)

test("no Authorization header without a token file, or with an empty one", function()
	for _, token in ipairs({ false, "  \n" }) do
		local ctx = H.setup_env({ ["GET /v2.0.0/server/allocation/u_s_nfs"] = { code = 200, body = H.ALLOC_OK } },
			{ token = token or nil })
		eq(ctx.env.slurm_bb_setup("5", "1000", "1000", "", "0", ctx.script(H.SERVICE_SCRIPT)), 0)
		eq(ctx.calls[1].header, nil)
	end
end)

test("a token with a line break is refused and not shown", function()
	local ctx = H.setup_env({}, { token = "abc\nX-Evil: 1" })
	local rc, msg = ctx.env.slurm_bb_setup("5", "1000", "1000", "", "0", ctx.script(H.SERVICE_SCRIPT))
	eq(rc, ctx.slurm.ERROR)
	contains(msg, "contains a line break")
	H.not_contains(msg, "abc")
	eq(#ctx.calls, 0)
end)
