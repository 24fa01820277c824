{
  description = "hwc-server";

  inputs = {
    nixpkgs.url = "github:NixOS/nixpkgs/nixos-24.05";
    home-manager = {
      url = "github:nix-community/home-manager/release-24.05";
      # inputs.nixpkgs.follows = "nixpkgs";
      inputs.nixpkgs.follows = "nixpkgs";
    };
  };
  inputs.agenix.url = "github:ryantm/agenix/0.15.0";

  outputs = { self, nixpkgs, home-manager, agenix, ... }: {
    nixosConfigurations.hwc-server = nixpkgs.lib.nixosSystem { modules = [ ./configuration.nix ]; };
  };
}
