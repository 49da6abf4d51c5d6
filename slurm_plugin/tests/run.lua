-- Single entry point of the burst-buffer plugin tests:
--   lua5.1 slurm_plugin/tests/run.lua [pattern]
-- Runs every test (or those whose statement contains `pattern`), prints one
-- line per test and a summary, exits non-zero on any failure.

local here = debug.getinfo(1, "S").source:sub(2):match("^(.*)/[^/]*$") or "."
package.path = here .. "/?.lua;" .. package.path

local H = require("helper")

for _, file in ipairs({ "test_load", "test_directives", "test_json",
	"test_runner", "test_config", "test_service", "test_step",
	"test_teardown", "test_status", "test_shapes", "test_session_manager", "test_job",
	"test_failover" }) do
	dofile(here .. "/" .. file .. ".lua")
end

local filter = arg and arg[1]
local passed, failed, failures = 0, 0, {}
for _, t in ipairs(H.tests) do
	if not filter or t.name:find(filter, 1, true) then
		local ok, err = xpcall(t.fn, debug.traceback)
		H.cleanup()
		if ok then
			passed = passed + 1
			print("ok     " .. t.name)
		else
			failed = failed + 1
			failures[#failures + 1] = t.name .. "\n    " .. tostring(err):gsub("\n", "\n    ")
			print("FAIL   " .. t.name)
		end
	end
end

for _, f in ipairs(failures) do
	print("\n--- FAILED: " .. f)
end
print(string.format("\n%d passed, %d failed, %d total", passed, failed, passed + failed))
os.exit(failed == 0 and passed > 0 and 0 or 1)
