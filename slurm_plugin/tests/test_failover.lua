-- A highly available pair of orchestrators (issue #20): orchestrator_url names
-- several, each request goes to the first that answers as the leader, and a
-- request is retried for retry_for seconds (longer than a failover).
local H = require("helper")
local test, eq, contains = H.test, H.eq, H.contains

local A, B = "http://a.example:8080", "http://b.example:8080"
local ALLOC = "/v2.0.0/server/allocation/u_s_nfs"
local STANDBY = { code = 503, body = '{"title": "Not the leader", "leader": "' .. B .. '"}' }

local function pair(routes, extra)
	local ctx = H.setup_env(routes, { conf = "orchestrator_url = " .. A .. ", " .. B .. "\n"
		.. "cache_dir = " .. os.tmpname() .. ".d\nretries = 0\n" .. (extra or "") })
	-- A clock that moves only when the plugin sleeps: retry_for is counted on it.
	local now = 1000
	ctx.env.os = setmetatable({ time = function() return now end }, { __index = os })
	local run = ctx.M.run
	ctx.M.run = function(argv)
		if argv[1] == "sleep" then
			now = now + tonumber(argv[2])
		end
		return run(argv)
	end
	return ctx
end

local function urls(ctx)
	local out = {}
	for _, c in ipairs(ctx.calls) do
		if c.prog == "curl" then
			out[#out + 1] = c.url:match("^(https?://[^/]+)")
		end
	end
	return out
end

local function setup(ctx)
	return ctx.env.slurm_bb_setup("42", "1000", "1000", "", "0", ctx.script(H.SERVICE_SCRIPT))
end

test("a pair: an orchestrator that cannot be reached sends the request to the next one", function()
	local ctx = pair({ ["GET " .. A .. ALLOC] = { transport = true },
		["GET " .. B .. ALLOC] = { code = 200, body = H.ALLOC_OK } })
	eq(setup(ctx), 0)
	H.list_eq(urls(ctx), { A, B })
	eq(H.count(ctx.calls, "sleep"), 0, "no wait when the next one answers")
end)

test("a pair: a standby's 503 sends the request to the next one; the leader's answer is used", function()
	local ctx = pair({ ["GET " .. A .. ALLOC] = STANDBY,
		["GET " .. B .. ALLOC] = { code = 200, body = H.ALLOC_OK } })
	eq(setup(ctx), 0)
	H.list_eq(urls(ctx), { A, B })
end)

test("a pair during a failover: rounds a second apart for retry_for seconds, until a leader answers", function()
	local ctx = pair({
		["GET " .. A .. ALLOC] = { { transport = true }, { transport = true }, { transport = true },
			{ transport = true } },
		["GET " .. B .. ALLOC] = { STANDBY, STANDBY, STANDBY, { code = 200, body = H.ALLOC_OK } },
	}, "retry_for = 30\n")
	eq(setup(ctx), 0)
	H.list_eq(urls(ctx), { A, B, A, B, A, B, A, B })
	eq(H.count(ctx.calls, "sleep"), 3)
end)

test("a pair that never answers as leader: the hook fails after retry_for, naming the last answer", function()
	local ctx = pair({ ["GET " .. A .. ALLOC] = { transport = true }, ["GET " .. B .. ALLOC] = STANDBY },
		"retry_for = 5\n")
	local rc, msg = setup(ctx)
	eq(rc, -1)
	contains(msg, B .. " answered 503 (Not the leader)")
	eq(H.count(ctx.calls, "sleep"), 5, "a round a second for 5 s")
end)

local READING = { code = 503, body = '{"title": "State being read again", "description": '
	.. '"the orchestrator is reading its state again; nothing was done: send the request again"}' }

test("one orchestrator reading its state again (a database failover): its 503 is asked again a second later", function()
	local ctx = H.setup_env({ ["GET " .. ALLOC] = { READING, { code = 200, body = H.ALLOC_OK } } },
		{ retries = 2 })
	eq(setup(ctx), 0)
	eq(H.count(ctx.calls, "curl"), 2)
	eq(H.count(ctx.calls, "sleep"), 1)
end)

test("one orchestrator that answers 503 through every retry: the hook fails naming its words", function()
	local ctx = H.setup_env({ ["GET " .. ALLOC] = READING }, { retries = 2 })
	local rc, msg = setup(ctx)
	eq(rc, -1)
	contains(msg, "answered 503 (the orchestrator is reading its state again; nothing was done")
	eq(H.count(ctx.calls, "curl"), 3, "the first round and its 2 retries (retries = 2)")
end)
