-- Directive parsing (pure) and slurm_bb_job_process.
local H = require("helper")
local test, eq, ok, contains = H.test, H.eq, H.ok, H.contains

local function parse(text)
	local _, M = H.load()
	return M.parse_directives(text)
end

test("wfm_service name=<name> makes a service job", function()
	local spec = assert(parse("#!/bin/bash\n#BB_LUA wfm_service name=alice_s1_nfs\nhostname\n"))
	eq(spec.kind, "service")
	eq(spec.name, "alice_s1_nfs")
end)

test("wfm_use lines make a step job; hint defaults to RW; RO, RW, WO accepted", function()
	local spec = assert(parse("#!/bin/sh\n#BB_LUA wfm_use name=a\n#BB_LUA wfm_use name=b hint=RO\n"
		.. "#BB_LUA wfm_use  hint=WO   name=c.d-e\n#BB_LUA wfm_use name=f hint=RW\n"))
	eq(spec.kind, "step")
	eq(#spec.services, 4)
	eq(spec.services[1].name, "a"); eq(spec.services[1].hint, "RW")
	eq(spec.services[2].name, "b"); eq(spec.services[2].hint, "RO")
	eq(spec.services[3].name, "c.d-e"); eq(spec.services[3].hint, "WO")
	eq(spec.services[4].hint, "RW")
end)

test("directives are read in the leading comment block only, mixed with #SBATCH and blank lines", function()
	local spec = assert(parse("#!/bin/bash\r\n\n#SBATCH -N 1\n   # a comment\n\n#BB_LUA wfm_use name=a\r\n"
		.. "srun hostname\n#BB_LUA wfm_service name=late\n#BB_LUA bogus\n"))
	eq(spec.kind, "step")
	eq(#spec.services, 1)
end)

local INVALID = {
	{ "#BB_LUA wfm_service\n", "line 1: wfm_service: missing name=<service name>" },
	{ "#BB_LUA wfm_service name=\n", "service name is empty" },
	{ "#BB_LUA wfm_service name=a name=b\n", "key 'name' given twice" },
	{ "#BB_LUA wfm_service name=a size=3\n", "unknown key 'size'" },
	{ "#BB_LUA wfm_service name=a hint=RO\n", "unknown key 'hint'" },
	{ "#BB_LUA wfm_use name=a hint=rw\n", "hint 'rw' must be RO, RW or WO" },
	{ "#BB_LUA wfm_use name=a hint=\n", "must be RO, RW or WO" },
	{ "#BB_LUA wfm_use name=a mode=RO\n", "unknown key 'mode'" },
	{ "#SBATCH -N1\n#BB_LUA wfm_service name=a\n#BB_LUA wfm_service name=b\n", "line 3: a job may carry only one wfm_service" },
	{ "#BB_LUA wfm_service name=a\n#BB_LUA wfm_use name=b\n", "cannot both be a service (wfm_service) and use services" },
	{ "#BB_LUA wfm_use name=b\n#BB_LUA wfm_service name=a\n", "cannot both be a service" },
	{ "#BB_LUA wfm_use name=a\n#BB_LUA wfm_use name=a hint=RO\n", "service 'a' is named twice" },
	{ "#BB_LUA create_persistent name=x capacity=1G\n", "is not handled by this burst buffer plugin" },
	{ "#BB_LUA XYZ use_persistent Name=x\n", "only wfm_service, wfm_use, wfm_job and the Session Manager's" },
	{ "#BB_LUA SBB make_persistent Name=x\n", "SBB: unknown operation 'make_persistent'" },
	{ "#BB_LUA SBB use_persistent name=x\n", "use_persistent: unknown key 'name'" },
	{ "#BB_LUA SBB use_persistent Flavor=small\n", "use_persistent: unknown key 'Flavor'" },
	{ "#BB_LUA SBB create_persistent Flavor=small\n", "create_persistent: missing Name=<service name>" },
	{ "#BB_LUA SBB create_persistent Name=x Name=y\n", "key 'Name' given twice" },
	{ "#BB_LUA SBB create_persistent Name=a;id\n", "may only contain letters" },
	{ "#BB_LUA SBB create_persistent Name=x Targets=\n", "Targets has an empty value" },
	{ "#BB_LUA SBB create_persistent Name=x\n#BB_LUA SBB destroy_persistent Name=x\n", "line 2: a job may carry only one create_persistent or destroy_persistent" },
	{ "#BB_LUA SBB create_persistent Name=x\n#BB_LUA wfm_use name=y\n", "line 2: a create_persistent job carries no other directive" },
	{ "#BB_LUA wfm_service name=y\n#BB_LUA GBF destroy_persistent Name=x\n", "line 2: a destroy_persistent job carries no other directive" },
	{ "#BB_LUA wfm_start name=x\n", "unknown directive 'wfm_start'" },
	{ "#BB_LUA\n", "empty #BB_LUA directive" },
	{ "#BB_LUA   \n", "empty #BB_LUA directive" },
	{ "#BB_LUAwfm_service name=x\n", "malformed directive" },
	{ "#BB_LUA wfm_service name=a \\\n#BB_LUA x\n", "line continuation is not supported" },
	{ "#!/bin/sh\n#SBATCH -N 1\nhostname\n", "no '#BB_LUA wfm_service', '#BB_LUA wfm_use', '#BB_LUA wfm_job' or Session Manager" },
	{ "#BB_LUA wfm_service name=-abc\n", "must not start with '-' or '.'" },
	{ "#BB_LUA wfm_service name=.abc\n", "must not start with '-' or '.'" },
	{ "#BB_LUA wfm_service name=a..b\n", "must not contain '..'" },
	{ "#BB_LUA wfm_service name=" .. string.rep("a", 129) .. "\n", "longer than 128 characters" },
	{ "#BB_LUA wfm_service name\n", "unexpected word 'name'" },
}

test("invalid directives are rejected with a message naming the line and the fault", function()
	for _, case in ipairs(INVALID) do
		local spec, err = parse(case[1])
		eq(spec, nil, case[1])
		contains(err, case[2], case[1])
	end
end)

test("a 128-character name is accepted, digits and '_' may start a name", function()
	ok(parse("#BB_LUA wfm_service name=" .. string.rep("x", 128) .. "\n"))
	ok(parse("#BB_LUA wfm_service name=0abc\n"))
	ok(parse("#BB_LUA wfm_service name=_abc\n"))
end)

test("injection attempts in names are rejected: quotes, ';', '$()', backticks, spaces, pipes, slashes", function()
	local hostile = {
		"a'b", 'a"b', "a;id", "$(id)", "a$(id)", "`id`", "a|b", "a&b", "a>b", "a<b",
		"a/b", "../etc", "a%s", "a\\b", "a*", "a?", "a{b}", "a=b", "é",
	}
	local _, M = H.load()
	for _, name in ipairs(hostile) do
		local spec, err = M.parse_directives("#BB_LUA wfm_service name=" .. name .. "\n")
		eq(spec, nil, name)
		ok(err, name)
		spec = M.parse_directives("#BB_LUA wfm_use name=" .. name .. " hint=RO\n")
		eq(spec, nil, name)
	end
	-- a space splits the value: the rest is an unexpected word
	local spec, err = M.parse_directives("#BB_LUA wfm_service name=my service\n")
	eq(spec, nil)
	contains(err, "unexpected word 'service'")
	-- names that can never come from one line are refused by check_name too
	for _, name in ipairs({ "a\nb", "a\rb", "a b", "a\tb", "a\0b" }) do
		eq((M.check_name(name)), nil, name)
	end
	-- a newline ends the directive line; what follows is the script body
	spec = assert(M.parse_directives("#BB_LUA wfm_service name=ok\n; rm -rf /\n"))
	eq(spec.name, "ok")
end)

test("slurm_bb_job_process returns SUCCESS for valid directives", function()
	local ctx = H.setup_env({})
	local rc = ctx.env.slurm_bb_job_process(ctx.script(H.SERVICE_SCRIPT))
	eq(rc, ctx.slurm.SUCCESS)
end)

test("slurm_bb_job_process rejects a bad directive with slurm.ERROR and a clear message", function()
	local ctx = H.setup_env({})
	local rc, msg = ctx.env.slurm_bb_job_process(ctx.script("#!/bin/sh\n#BB_LUA wfm_use name=x hint=RX\n"))
	eq(rc, ctx.slurm.ERROR)
	eq(msg, "line 2: wfm_use: hint 'RX' must be RO, RW or WO")
	contains(table.concat(ctx.slurm.logs, "\n"), "hint 'RX'")
end)

test("slurm_bb_job_process rejects an unreadable job script", function()
	local ctx = H.setup_env({})
	local rc, msg = ctx.env.slurm_bb_job_process(ctx.dir .. "/hash.3/job.13/script")
	eq(rc, ctx.slurm.ERROR)
	contains(msg, "cannot read the job script")
	contains(table.concat(ctx.slurm.logs, "\n"), "job 13")
end)

test("slurm_bb_job_process works without a configuration file", function()
	local ctx = H.setup_env({})
	ctx.M.config_file = ctx.dir .. "/missing.conf"
	eq(ctx.env.slurm_bb_job_process(ctx.script(H.SERVICE_SCRIPT)), ctx.slurm.SUCCESS)
end)
