-- Fuzz driver: flake.nix input rewriting. Setting an input gives the new text and the
-- URL it replaced, or nil and a message; setting it again changes nothing.
local nixos = require "hrun.nixos"

local URL = "github:NixOS/nixpkgs/nixos-24.11"

return function(data)
  for _, input in ipairs({ "nixpkgs", "home-manager" }) do
    local ok, new, old = pcall(nixos._set_input_text, data, input, URL, "flake.nix")
    assert(ok, new)
    if new ~= nil then
      assert(type(new) == "string" and type(old) == "string", "set_input_text: a result without its old URL")
      local again, was = nixos._set_input_text(new, input, URL, "flake.nix")
      assert(again == new and was == URL, "set_input_text: setting the same URL twice changed the text")
    else
      assert(type(old) == "string", "set_input_text: no text and no message")
    end
  end
end
