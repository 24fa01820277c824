{
  inputs = { nixpkgs = { url = ''github:NixOS/nixpkgs/nixos-24.05''; flake = true; }; /* "url" */ };
  outputs = { ... }: { s = "${"inputs.nixpkgs.url"}"; };
}
