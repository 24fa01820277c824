{ inputs.nixpkgs.url = "github:NixOS/nixpkgs/nixos-24.05"; inputs.home-manager.url = 'x'; outputs = _: { }; }
