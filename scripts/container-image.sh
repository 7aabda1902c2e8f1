#!/usr/bin/env bash
# Builds the image localhost/ghostwire-backup:dev from the project's Containerfile with podman.
#
#   scripts/container-image.sh            # build (cached: seconds when nothing changed)
#   GWB_IMAGE=NAME scripts/container-image.sh
#
# On a fresh machine it installs podman, buildah, runc and mmdebstrap (Debian), then:
#  1. Base images: each FROM of the Containerfile that is neither present nor pullable (no
#     image registry is reachable from these machines) is replaced by a stand-in made from
#     Debian packages with mmdebstrap and tagged with the very same name, so the Containerfile
#     stays unchanged and builds against the real images wherever they can be pulled:
#       rust:*-bookworm        bookworm minbase + gcc, libc6-dev, make, perl, pkg-config + this
#                              machine's Rust toolchain (copied, no docs) at /usr/local/{rustup,cargo}
#       distroless/cc-debian12 base-files, netbase, tzdata, libc6, libgcc-s1, the CA bundle and
#                              distroless' passwd; no shell, no package manager, no executables
#  2. Crates: `cargo fetch --locked` on the host, then the build mounts the host's registry
#     (CARGO_NET_OFFLINE=true, --network none: the build needs no network) and a persistent
#     target dir (/var/cache/ghostwire-backup/container-target, outside the checkout, so a
#     fresh clone on the same machine reuses it), so a rebuild recompiles only this crate.
#  3. Prints the build time and the image size.
set -euo pipefail
cd "$(dirname "$0")/.."

IMAGE=${GWB_IMAGE:-localhost/ghostwire-backup:dev}
# Outside the checkout, so a fresh clone on the same machine (CI) reuses it.
TARGET_CACHE=${GWB_CONTAINER_TARGET_CACHE:-/var/cache/ghostwire-backup/container-target}
# shellcheck source=scripts/container-lib.sh
source scripts/container-lib.sh

# The FROM images of the Containerfile, with ARG defaults substituted.
base_images() {
  local rust_version
  rust_version=$(sed -n 's/^ARG RUST_VERSION=//p' Containerfile)
  sed -n 's/^FROM \([^ ]*\).*/\1/p' Containerfile | sed "s/\${RUST_VERSION}/$rust_version/g"
}

# The builder stand-in: what the Containerfile's RUN steps use of rust:*-bookworm (gcc, make
# and perl for the vendored SQLCipher and OpenSSL) plus this machine's Rust toolchain, where
# the real image has it (RUSTUP_HOME=/usr/local/rustup, CARGO_HOME=/usr/local/cargo).
make_rust_standin() {
  local name=$1 version sysroot
  version=${name##*:}          # 1.95-bookworm
  version=${version%-bookworm} # 1.95
  command -v rustc >/dev/null || die "no Rust toolchain on this machine to put into the $name stand-in"
  rustc --version | grep -q "^rustc $version\." \
    || die "$name needs Rust $version, this machine has $(rustc --version): change ARG RUST_VERSION or the toolchain"
  sysroot=$(rustc --print sysroot)
  log "making a stand-in for $name: Debian bookworm + gcc, make, perl + Rust from $sysroot"
  debian_rootfs minbase ca-certificates,gcc,libc6-dev,make,perl,pkg-config
  local toolchain=$rootfs/root/usr/local/rustup/toolchains/$version
  mkdir -p "$toolchain" "$rootfs/root/usr/local/cargo/bin"
  tar -C "$sysroot" --exclude=./share/doc -cf - . | tar -C "$toolchain" -xf -
  for tool in cargo rustc rustdoc; do
    ln -s "../../rustup/toolchains/$version/bin/$tool" "$rootfs/root/usr/local/cargo/bin/$tool"
  done
  import_rootfs "$name" \
    --change 'ENV RUSTUP_HOME=/usr/local/rustup' \
    --change 'ENV CARGO_HOME=/usr/local/cargo' \
    --change 'ENV PATH=/usr/local/cargo/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin'
}

# The runtime stand-in: what distroless' cc-debian12 holds (glibc, libgcc, libssl, the CA
# bundle, tzdata, netbase, a passwd with root/nobody/nonroot) and nothing executable: the
# programs that came along as dependencies (openssl, mawk, debconf), the package database and
# the docs are removed, as distroless does.
make_distroless_standin() {
  local name=$1
  log "making a stand-in for $name from Debian bookworm packages"
  debian_rootfs extract base-files,netbase,tzdata,libc6,libgcc-s1,ca-certificates
  local root=$rootfs/root
  cat "$root"/usr/share/ca-certificates/mozilla/*.crt >"$root/etc/ssl/certs/ca-certificates.crt"
  printf '%s\n' root:x:0:0:root:/root:/sbin/nologin nobody:x:65534:65534:nobody:/nonexistent:/sbin/nologin \
    nonroot:x:65532:65532:nonroot:/home/nonroot:/sbin/nologin >"$root/etc/passwd"
  printf '%s\n' root:x:0: nobody:x:65534: nonroot:x:65532: >"$root/etc/group"
  install -d -m 0700 -o 65532 -g 65532 "$root/home/nonroot"
  find "$root/usr/bin" "$root/usr/sbin" -mindepth 1 -delete 2>/dev/null || true
  rm -rf "$root"/usr/share/{doc,man,info,locale,lintian,debconf,perl5} "$root"/var/cache/debconf \
    "$root"/etc/apt "$root"/var/lib/dpkg "$root"/var/lib/apt "$root"/var/cache/apt
  import_rootfs "$name" \
    --change 'USER 65532:65532' \
    --change 'WORKDIR /home/nonroot' \
    --change 'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
    --change 'ENV SSL_CERT_FILE=/etc/ssl/certs/ca-certificates.crt'
}

ensure_base_image() {
  local name=$1
  if podman image exists "$name"; then
    return
  fi
  log "pulling $name"
  if timeout 60 podman pull --quiet "$name" >/dev/null 2>&1; then
    return
  fi
  log "$name cannot be pulled here"
  case $name in
    */library/rust:*-bookworm) make_rust_standin "$name" ;;
    gcr.io/distroless/cc-debian12:*) make_distroless_standin "$name" ;;
    *) die "$name can neither be pulled nor made here: add a stand-in recipe to $0" ;;
  esac
}

install_tools
for base in $(base_images); do
  ensure_base_image "$base"
done

log "fetching crates on the host (cargo fetch --locked)"
cargo fetch --locked --quiet
registry=${CARGO_HOME:-$HOME/.cargo}/registry
mkdir -p "$TARGET_CACHE"

log "building $IMAGE from Containerfile"
started=$SECONDS
podman build --quiet --pull=never --network=none --layers \
  --file Containerfile --tag "$IMAGE" \
  --build-arg CARGO_NET_OFFLINE=true \
  --volume "$registry:/usr/local/cargo/registry" \
  --volume "$TARGET_CACHE:/src/target" \
  . >/dev/null
elapsed=$((SECONDS - started))

size=$(podman image inspect --format '{{.Size}}' "$IMAGE")
runtime_base=$(base_images | tail -1)
base_size=$(podman image inspect --format '{{.Size}}' "$runtime_base")
standin=""
[ "$(podman image inspect --format "{{index .Labels \"$STANDIN_LABEL\"}}" "$runtime_base")" = true ] && standin=" (stand-in)"
echo "== $IMAGE built in $elapsed s: $(mb "$size") MB (its base $runtime_base$standin: $(mb "$base_size") MB)"
