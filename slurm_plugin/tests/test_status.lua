-- slurm_bb_get_status (scontrol show bbstat)
local H = require("helper")
local test, eq, ok, contains = H.test, H.eq, H.ok, H.contains


test("get_status 'job <id>' shows the environment cached for the job (22.05 and 23.02 argument forms)", function()
	local ctx = H.setup_env({ ["GET /v2.0.0/server/allocation/u_s_nfs"] = { code = 200, body = H.ALLOC_OK } })
	eq(ctx.env.slurm_bb_setup("42", "1000", "1000", "", "0", ctx.script(H.SERVICE_SCRIPT)), 0)
	local rc, text = ctx.env.slurm_bb_get_status("job", "42")
	eq(rc, ctx.slurm.SUCCESS)
	contains(text, "job 42:\nWFM_SERVICE_NAME=u_s_nfs\n")
	local rc2, text2 = ctx.env.slurm_bb_get_status("1000", "1000", "job", "42")
	eq(rc2, 0); eq(text2, text)
	local _, text3 = ctx.env.slurm_bb_get_status("job", "43")
	contains(text3, "no cached allocation for job 43")
	local _, text4 = ctx.env.slurm_bb_get_status("job", "4;2")
	contains(text4, "invalid job id")
end)
