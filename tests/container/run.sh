#!/usr/bin/env bash
# The container tests: the image built by scripts/container-image.sh, run the way deploy/ runs
# it (rendered manifests: user, read-only root, no capabilities, only the mounted volumes),
# against a real S3 server (moto on 127.0.0.1, reached with --network host).
#
#   tests/container/run.sh                      # both tests, small profile (CI)
#   tests/container/run.sh lifecycle --size 256M
#   tests/container/run.sh hardened
#
# hardened   backup (CronJob's container) of a live profile while Signal's driver writes, then
#            restore (restore Job's container) into a fresh volume; uid 1000 owns it and
#            Signal's driver opens it with every committed row.
# lifecycle  the blue/green switch with the sidecar (StatefulSet patch), driven in the
#            kubelet's order; prints the switch downtime.
set -euo pipefail
cd "$(dirname "$0")/../.."
# shellcheck source=scripts/container-lib.sh
source scripts/container-lib.sh

IMAGE=${GWB_IMAGE:-localhost/ghostwire-backup:dev}
SIGNAL_IMAGE=localhost/ghostwire-signal-stand-in:test

install_tools
scripts/install-test-deps.sh
podman image exists "$IMAGE" || die "$IMAGE is missing: build it with scripts/container-image.sh"

# Signal stand-in: node and Signal's own SQLite driver (tests/node), nothing else. Remade when
# node or tests/node change (the label holds a hash of both).
signal_inputs=$( (node --version; cd tests/node && cat package-lock.json ./*.mjs) | sha256sum | cut -c1-16)
if [ "$(podman image inspect --format '{{index .Labels "inputs"}}' "$SIGNAL_IMAGE" 2>/dev/null)" != "$signal_inputs" ]; then
  log "making $SIGNAL_IMAGE: node $(node --version) + tests/node on Debian's libc and libstdc++"
  debian_rootfs extract libc6,libstdc++6,libgcc-s1
  install -D -m 0755 "$(command -v node)" "$rootfs/root/usr/local/bin/node"
  mkdir -p "$rootfs/root/opt/signal"
  cp -rL tests/node/. "$rootfs/root/opt/signal/" # -L: node_modules may be a symlink
  install -d -m 1777 "$rootfs/root/tmp"
  import_rootfs "$SIGNAL_IMAGE" \
    --change 'USER 1000:0' \
    --change 'WORKDIR /opt/signal' \
    --change 'ENTRYPOINT ["/usr/local/bin/node"]' \
    --change "LABEL inputs=$signal_inputs"
fi

tests=("$@")
[ ${#tests[@]} -eq 0 ] && tests=(hardened lifecycle --size "${GWB_CONTAINER_PROFILE_SIZE:-16M}")
GWB_IMAGE=$IMAGE GWB_SIGNAL_IMAGE=$SIGNAL_IMAGE .venv-s3/bin/python tests/container/pods.py "${tests[@]}"
