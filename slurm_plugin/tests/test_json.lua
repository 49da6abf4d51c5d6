-- The embedded JSON decoder and encoder.
local H = require("helper")
local test, eq, ok, contains = H.test, H.eq, H.ok, H.contains

test("json.decode reads objects, arrays, numbers, strings, literals", function()
	local _, M = H.load()
	local j = M.json
	local v = assert(j.decode(' { "a" : [1, -2, 3.5, 1e3, -0.25E-2, 0], "b": {"c": true, "d": false, "e": null}, "s": "x" } '))
	eq(v.a[1], 1); eq(v.a[2], -2); eq(v.a[3], 3.5); eq(v.a[4], 1000); eq(v.a[5], -0.0025); eq(v.a[6], 0)
	ok(j.is_array(v.a))
	eq(v.b.c, true); eq(v.b.d, false); eq(v.b.e, j.null)
	eq(v.s, "x")
	eq(#assert(j.decode("[]")), 0)
	ok(j.is_array(j.decode("[]")))
	eq(next(assert(j.decode("{}"))), nil)
	eq(j.decode('"plain"'), "plain")
	eq(j.decode("42"), 42)
end)

test("json.decode handles escapes, \\u escapes and surrogate pairs as UTF-8", function()
	local _, M = H.load()
	eq(M.json.decode([["a\"b\\c\/d\b\f\n\r\t"]]), "a\"b\\c/d\b\f\n\r\t")
	eq(M.json.decode([["\u0041\u00e9\u20ac"]]), "A\195\169\226\130\172")
	eq(M.json.decode([["\ud83d\ude00"]]), "\240\159\152\128")
	eq(M.json.decode('"caf\195\169"'), "caf\195\169")
end)

test("json.decode rejects malformed input with the byte position", function()
	local _, M = H.load()
	local bad = {
		"", " ", "[1,]", "{\"a\":1,}", "[1 2]", "{\"a\" 1}", "{a:1}", "'x'", "\"abc",
		"01", "-", "1.", ".5", "1e", "+1", "NaN", "Infinity", "tru", "nul",
		"\"a\nb\"", "\"\\x\"", "\"\\u12\"", "\"\\ud800\"", "\"\\udc00\"", "[1]]", "{} x",
		string.rep("[", 100) .. string.rep("]", 100),
	}
	for _, text in ipairs(bad) do
		local v, err = M.json.decode(text)
		eq(v, nil, text)
		contains(err, "invalid JSON at byte", text)
	end
	local _, err = M.json.decode("[1,]")
	contains(err, "byte 4")
end)

test("json.encode escapes strings, keeps empty arrays, sorts keys, writes integers", function()
	local _, M = H.load()
	local j = M.json
	eq(j.encode({ pools = j.array({}) }), '{"pools":[]}')
	eq(j.encode({}), "{}")
	eq(j.encode({ b = 1, a = { 1, 2, 3 }, c = "x\"\n\1" }), '{"a":[1,2,3],"b":1,"c":"x\\"\\n\\u0001"}')
	eq(j.encode(3), "3")
	eq(j.encode(2.5), "2.5")
	eq(j.encode(j.null), "null")
	eq(j.encode(true), "true")
	local v, err = j.encode({ [1] = 1, x = 2 })
	eq(v, nil); contains(err, "keys must be strings")
	v, err = j.encode(0 / 0)
	eq(v, nil); contains(err, "non-finite")
end)

test("json round trip preserves an allocation answer", function()
	local _, M = H.load()
	local v = assert(M.json.decode(H.ALLOC_OK))
	local again = assert(M.json.decode(assert(M.json.encode(v))))
	eq(M.json.encode(again), M.json.encode(v))
	ok(M.json.is_array(again.properties[2].core_list))
end)
