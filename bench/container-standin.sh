#!/usr/bin/env bash
# Local stand-ins for the Dockerfile's two base images, for a machine whose
# container engine works but reaches no image registry (as in this
# project's sandbox): `debian:bookworm-slim` from debootstrap, and
# `rust:1-slim-bookworm` as that plus gcc and this machine's own Rust
# toolchain (and the host's CA bundle, for a network behind an intercepting
# proxy). Then `.ci/container-check` can build and run the real Dockerfile:
#
#   sudo apt-get install docker.io debootstrap
#   sudo dockerd --storage-driver=vfs --iptables=false &   # where no overlay/NAT
#   sudo bash bench/container-standin.sh
#   sudo CONTAINER_BUILD_NETWORK=host bash .ci/container-check
#
# Needs root, debootstrap, docker, and deb.debian.org.
set -euo pipefail
engine=${CONTAINER_ENGINE:-docker}
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
debootstrap --variant=minbase bookworm "$work/rootfs" http://deb.debian.org/debian >/dev/null
tar -C "$work/rootfs" -c . | "$engine" import - debian:bookworm-slim
sysroot=$(rustc --print sysroot)
mkdir -p "$work/rust/rust"
cp -a "$sysroot/bin" "$sysroot/lib" "$work/rust/rust/"
[ -d "$sysroot/libexec" ] && cp -a "$sysroot/libexec" "$work/rust/rust/"
cp /etc/ssl/certs/ca-certificates.crt "$work/rust/host-ca.crt"
cat > "$work/rust/Dockerfile" <<'EOF'
FROM debian:bookworm-slim
RUN apt-get update && apt-get install -y --no-install-recommends gcc libc6-dev ca-certificates && rm -rf /var/lib/apt/lists/*
COPY rust /usr/local/rust
COPY host-ca.crt /etc/ssl/certs/ca-certificates.crt
ENV PATH=/usr/local/cargo/bin:/usr/local/rust/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin CARGO_HOME=/usr/local/cargo
RUN cargo --version && rustc --version
EOF
"$engine" build --network host -t rust:1-slim-bookworm "$work/rust"
echo "stand-ins ready: debian:bookworm-slim, rust:1-slim-bookworm"
