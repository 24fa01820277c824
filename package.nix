# hrun, built with CMake from nixpkgs' own packages (the flake's packages.default and
# overlay). docs/install.md says what of it is tested where.
{
  lib,
  stdenv,
  cmake,
  pkg-config,
  lua5_4,
  sqlite,
  jansson,
  libedit,
  openssl,
  btrfs-progs,
  xxHash,
  libgit2,
  curl,
  systemd,
  libseccomp,
}:

stdenv.mkDerivation {
  pname = "hrun";
  version = "0.1.0"; # CMakeLists.txt's project(VERSION): tests/spec/nix_spec.lua keeps them equal

  # the tree without what a build or a release leaves in it
  src = lib.cleanSourceWith {
    src = lib.cleanSource ./.;
    filter =
      path: type:
      let
        name = baseNameOf path;
      in
      !(lib.hasPrefix "build" name || name == "dist" || name == "result" || lib.hasPrefix "result-" name);
  };

  nativeBuildInputs = [
    cmake
    pkg-config
  ];
  buildInputs = [
    lua5_4
    sqlite
    jansson
    libedit
    openssl
    btrfs-progs # libbtrfsutil
    xxHash
    libgit2
    curl
    systemd # libsystemd (sd-bus)
    libseccomp
  ];

  cmakeFlags = [
    "-DHRUN_TESTS=OFF"
    # the portable build links -static against Debian's archives; nixpkgs' static
    # libraries are pkgsStatic's: hosts without hrun get it from a Debian build
    "-DHRUN_PORTABLE=OFF"
  ];

  # the binary finds its Lua library at $out/share/hrun/lua, beside itself; the build
  # writes the completions (share/bash-completion, share/zsh, share/fish) and the
  # editor annotations (share/hrun/luals) with the hrun it has just built

  meta = {
    description = "Journaled, reversible server changes in Lua";
    homepage = "https://github.com/hrun/hrun";
    license = lib.licenses.mit;
    platforms = lib.platforms.linux;
    mainProgram = "hrun";
  };
}
