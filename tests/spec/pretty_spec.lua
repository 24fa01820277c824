-- hrun.pretty, the REPL's printer.
local pretty = require "hrun.pretty"

describe("pretty.format", function()
  it("quotes strings with escapes, keeps valid UTF-8", function()
    eq(pretty.format("a\n\t\"é\xff\0"), '"a\\n\\t\\"é\\xff\\x00"')
  end)

  it("makes any bytes valid UTF-8 for JSON and terminals", function()
    eq(pretty.utf8("ok é"), "ok é")
    eq(pretty.utf8("a\xffb\xc3"), "a\\xffb\\xc3")
  end)

  it("prints numbers exactly", function()
    eq(pretty.format(3), "3")
    eq(pretty.format(0.1), "0.10000000000000001")
    eq(pretty.format(json.null), "json.null")
  end)

  it("prints arrays, then sorted keys, inline when short", function()
    eq(pretty.format({ 1, 2, z = 1, a = "x", [true] = 1, ["not id"] = 2, ["end"] = 3 }),
      '{ 1, 2, a = "x", ["end"] = 3, ["not id"] = 2, z = 1, [true] = 1 }')
  end)

  it("breaks long tables over lines, indented", function()
    local t = { name = string.rep("n", 50), list = { string.rep("a", 40), string.rep("b", 40) } }
    eq(pretty.format(t), '{\n  list = {\n    "' .. string.rep("a", 40) .. '",\n    "' .. string.rep("b", 40)
      .. '"\n  },\n  name = "' .. string.rep("n", 50) .. '"\n}')
  end)

  it("marks cycles and cuts deep or long tables", function()
    local t = { }
    t.me = t
    eq(pretty.format(t), "{ me = <cycle> }")
    eq(pretty.format({ { { { { { {} } } } } } }, { depth = 3 }), "{ { { {…} } } }")
    local long = {}
    for i = 1, 300 do
      long[i] = i
    end
    local s = pretty.format(long)
    has(s, "… (100 more)")
  end)
end)
