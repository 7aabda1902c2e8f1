# Shared by scripts/container-image.sh and tests/container/run.sh (sourced, from the
# repository root): podman's configuration for these machines, installing the tools, and
# images made from Debian packages where no image registry is reachable.

export CONTAINERS_CONF=$PWD/scripts/containers.conf
MIRROR=${GWB_DEBIAN_MIRROR:-http://deb.debian.org/debian}
# Every image made here instead of pulled carries this label.
STANDIN_LABEL=org.ghostwire-backup.stand-in

log() { echo "== $*" >&2; }
mb() { awk -v b="$1" 'BEGIN { printf "%.1f", b / 1e6 }'; }
die() { echo "$(basename "$0"): $*" >&2; exit 1; }

install_tools() {
  local missing=()
  for tool in podman buildah runc mmdebstrap; do
    command -v "$tool" >/dev/null || missing+=("$tool")
  done
  [ ${#missing[@]} -eq 0 ] && return
  log "installing ${missing[*]} (Debian)"
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq podman buildah runc mmdebstrap >/dev/null
}

# An image from Debian packages, in two steps so the caller can trim the tree in between:
#   debian_rootfs VARIANT PACKAGES     mmdebstrap into the directory $rootfs/root
#   import_rootfs NAME [--change ...]  podman import of that tree as NAME (labelled a stand-in)
# A failure in between leaves no image behind, never a half-made one.
debian_rootfs() {
  local variant=$1 packages=$2
  rootfs=$(mktemp -d /var/tmp/gwb-standin.XXXXXX)
  trap 'rm -rf "$rootfs"' EXIT
  mkdir "$rootfs/root"
  mmdebstrap --quiet --variant="$variant" --include="$packages" bookworm "$rootfs/root" "$MIRROR"
}
import_rootfs() {
  local name=$1; shift
  tar -C "$rootfs/root" -cf "$rootfs/root.tar" .
  podman import --quiet "$@" --change "LABEL $STANDIN_LABEL=true" "$rootfs/root.tar" "$name" >/dev/null
  rm -rf "$rootfs"
  trap - EXIT
}

