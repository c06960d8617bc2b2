#!/usr/bin/env bash
# Builds Kiln's image from the Dockerfile without a Docker daemon (buildah, chroot isolation,
# vfs storage) and loads it into the containerd of the node started by hack/node.sh. Its last
# line on stdout is the image reference (repository:tag); the size goes to stderr.
#
#   hack/image.sh [NODE_DIR]     NODE_DIR: the DIR given to hack/node.sh start
#                                (default $KILN_NODE_DIR, else the node that runs now, if any)
#
# No registry can be reached here, so the Dockerfile's base images are build arguments and
# this script builds equivalent local bases, once, from Debian packages (docs/operations.md):
#   RUST_IMAGE     Debian bookworm (mmdebstrap: gcc, libc6-dev, ca-certificates) with the Rust
#                  toolchain of this machine (`rustc --print sysroot`), laid out as in rust:*;
#   RUNTIME_IMAGE  what the runtime stage uses from distroless/cc: glibc and libgcc_s from
#                  this machine's libc6 and libgcc-s1 packages, the CA bundle, /etc/passwd
#                  with uid 65532 (nonroot), /tmp. No shell, no package manager.
# The e2e suite's client image (Debian bookworm with curl) comes from the same root file system.
#
# Environment:
#   KILN_IMAGE        the reference to build (default localhost/kiln:dev)
#   KILN_CACHE        cache root (default ~/.cache/kiln): buildah's storage, base rootfs
#   KILN_IMAGE_BASES  "upstream" to build with the Dockerfile's default bases (needs a registry)
#   KILN_IMAGE_ARCHIVE  also write the image to this file, a docker-archive tar, for a cluster
#                     other than hack/node.sh's: `kind load image-archive`, `minikube image
#                     load`, `docker load`, `skopeo copy` to a registry (docs/install.md)
#
# The commit that `kiln version` reports in the image is this checkout's HEAD (a build
# argument: .git is not in the build context).
set -euo pipefail
# Before the cd below: a relative KILN_IMAGE_ARCHIVE is relative to the caller's directory.
archive=
[ -z "${KILN_IMAGE_ARCHIVE:-}" ] || archive=$(realpath -m -- "$KILN_IMAGE_ARCHIVE")
cd "$(dirname "$0")/.."
repo=$(pwd)

log() { echo "image: $*" >&2; }
die() { log "$*"; exit 1; }

image=${KILN_IMAGE:-localhost/kiln:dev}
cache=${KILN_CACHE:-$HOME/.cache/kiln}
store=$cache/buildah
mkdir -p "$store"

for c in buildah mmdebstrap; do
  command -v "$c" >/dev/null || die "$c is required: apt-get install buildah mmdebstrap"
done
bah() { buildah --root "$store/storage" --runroot "$store/run" --storage-driver vfs "$@"; }
exists() { bah inspect --type image "$1" >/dev/null 2>&1; }

# The bases are built once; concurrent callers wait for each other here (buildah's storage
# has locks of its own for everything else).
exec 8>"$store/.lock"

# --- base root file system (Debian bookworm) ------------------------------------------------
# The host's own apt sources name the mirror: nothing here names a host.
sources=
for f in /etc/apt/sources.list.d/debian.sources /etc/apt/sources.list; do
  [ -s "$f" ] && grep -q '^[^#]' "$f" && { sources=$f; break; }
done
rootfs_tar=$cache/rootfs/bookworm-build-1.tar
ensure_rootfs() {
  [ -s "$rootfs_tar" ] && return 0
  [ -n "$sources" ] || die "no apt sources on this machine (/etc/apt/sources.list.d/debian.sources)"
  mkdir -p "$cache/rootfs"
  log "building a Debian bookworm root file system with mmdebstrap (once; ~1-2 min)"
  local t0=$SECONDS
  mmdebstrap --quiet --variant=minbase --include=gcc,libc6-dev,ca-certificates,curl \
    --dpkgopt='path-exclude=/usr/share/doc/*' --dpkgopt='path-exclude=/usr/share/man/*' \
    --dpkgopt='path-exclude=/usr/share/locale/*' \
    bookworm "$cache/rootfs/partial.tar" "$sources" >&2
  mv "$cache/rootfs/partial.tar" "$rootfs_tar"
  log "root file system in $((SECONDS - t0))s: $(du -h "$rootfs_tar" | cut -f1)"
}

# --- RUST_IMAGE ---------------------------------------------------------------------------
sysroot=$(rustc --print sysroot 2>/dev/null) || die "rustc is required (https://rustup.rs)"
rust_version=$(rustc --version | awk '{print $2}')
rust_image=localhost/kiln-base/rust:${rust_version}-bookworm
build_rust_image() {
  exists "$rust_image" && return 0
  ensure_rootfs
  log "building $rust_image (Debian bookworm + this machine's Rust $rust_version)"
  local ctr mnt
  ctr=$(bah from --quiet scratch)
  mnt=$(bah mount "$ctr")
  tar -C "$mnt" -xf "$rootfs_tar"
  # rust:* puts the toolchain under /usr/local/rustup and cargo's home at /usr/local/cargo.
  # Only what builds for the host: rustc, cargo and the standard library; no docs, no sources.
  local tc=$mnt/usr/local/rustup/toolchains/$rust_version-x86_64-unknown-linux-gnu
  mkdir -p "$tc/bin" "$mnt/usr/local/cargo/bin"
  cp -a "$sysroot/bin/rustc" "$sysroot/bin/cargo" "$tc/bin/"
  cp -a "$sysroot/lib" "$tc/"
  ln -s "../../rustup/toolchains/$rust_version-x86_64-unknown-linux-gnu/bin/cargo" "$mnt/usr/local/cargo/bin/cargo"
  ln -s "../../rustup/toolchains/$rust_version-x86_64-unknown-linux-gnu/bin/rustc" "$mnt/usr/local/cargo/bin/rustc"
  # This machine's trust store (it may hold a CA that its network path to the crate registry
  # needs), as a base image built in-house would carry.
  cp -L /etc/ssl/certs/ca-certificates.crt "$mnt/etc/ssl/certs/ca-certificates.crt"
  bah umount "$ctr" >/dev/null
  bah config --env CARGO_HOME=/usr/local/cargo --env RUSTUP_HOME=/usr/local/rustup \
    --env PATH=/usr/local/cargo/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin \
    --cmd /bin/bash "$ctr"
  bah commit --quiet --rm "$ctr" "$rust_image" >/dev/null
}

# --- RUNTIME_IMAGE ------------------------------------------------------------------------
libc_version=$(dpkg-query -W -f='${Version}' libc6 2>/dev/null) || die "dpkg-query found no libc6 (Debian is required)"
runtime_image=localhost/kiln-base/cc-debian12:nonroot-${libc_version//[^A-Za-z0-9_.-]/_}
build_runtime_image() {
  exists "$runtime_image" && return 0
  log "building $runtime_image (glibc $libc_version and libgcc_s from this machine's packages)"
  local root
  root=$(mktemp -d)
  # merged /usr, as in Debian 12
  mkdir -p "$root"/usr/{bin,lib/x86_64-linux-gnu,lib64} "$root"/etc/ssl/certs "$root"/tmp "$root"/home/nonroot
  ln -s usr/bin "$root/bin"; ln -s usr/lib "$root/lib"; ln -s usr/lib64 "$root/lib64"
  chmod 1777 "$root/tmp"
  chown 65532:65532 "$root/home/nonroot"
  local p d
  # Shared libraries only: no gconv modules, no tools, no docs.
  while read -r p; do
    [ -f "$p" ] || [ -L "$p" ] || continue
    case $p in
      */gconv/* | /usr/share/* | */bin/* | */sbin/* | /etc/*) continue ;;
      *.so | *.so.*) ;;
      *) continue ;;
    esac
    d=$(readlink -f "$(dirname "$p")")
    mkdir -p "$root$d"
    cp -a "$p" "$root$d/"
  done < <(dpkg -L libc6 libgcc-s1)
  cp -L /etc/ssl/certs/ca-certificates.crt "$root/etc/ssl/certs/ca-certificates.crt"
  printf 'root:x:0:0:root:/root:/sbin/nologin\nnobody:x:65534:65534:nobody:/nonexistent:/sbin/nologin\nnonroot:x:65532:65532:nonroot:/home/nonroot:/sbin/nologin\n' >"$root/etc/passwd"
  printf 'root:x:0:\nnobody:x:65534:\nnonroot:x:65532:\n' >"$root/etc/group"
  printf 'passwd: files\ngroup: files\nhosts: files dns\n' >"$root/etc/nsswitch.conf"
  cp /etc/os-release "$root/etc/os-release"
  local ctr
  ctr=$(bah from --quiet scratch)
  tar -C "$root" -cf "$root.tar" .
  bah add --quiet "$ctr" "$root.tar" / >/dev/null
  rm -rf "$root" "$root.tar"
  bah config --user 65532:65532 --workingdir /home/nonroot \
    --env PATH=/usr/local/bin:/usr/bin:/bin --env SSL_CERT_FILE=/etc/ssl/certs/ca-certificates.crt "$ctr"
  bah commit --quiet --rm "$ctr" "$runtime_image" >/dev/null
}

# --- e2e client image: bookworm + curl ------------------------------------------------------
client_image=localhost/kiln-e2e/client:bookworm
build_client_image() {
  exists "$client_image" && return 0
  ensure_rootfs
  log "building $client_image (Debian bookworm with curl)"
  local ctr
  ctr=$(bah from --quiet scratch)
  bah add --quiet "$ctr" "$rootfs_tar" / >/dev/null
  bah config --cmd '["sleep","infinity"]' "$ctr"
  bah commit --quiet --rm "$ctr" "$client_image" >/dev/null
}

# --- load into the node's containerd ---------------------------------------------------------
node_dir=${1:-${KILN_NODE_DIR:-}}
if [ -z "$node_dir" ] && [ -s "$cache/node.current" ]; then
  node_dir=$(cat "$cache/node.current")
fi
load() { # image
  local sock=$node_dir/node/run/containerd/containerd.sock arch
  [ -n "$node_dir" ] || { log "no node runs (hack/node.sh start DIR): $1 is built, not loaded"; return 0; }
  [ -S "$sock" ] || die "no containerd socket at $sock: is the node of $node_dir running (hack/node.sh start $node_dir)?"
  local ctr_bin=${KILN_NODE_BIN:-$(hack/node-binaries.sh 2>/dev/null)}/ctr
  arch=$(mktemp -u "$store/push.XXXXXX.tar")
  bah push --quiet "$1" "oci-archive:$arch:$1" >/dev/null
  "$ctr_bin" --address "$sock" -n k8s.io images import --base-name "${1%:*}" "$arch" >/dev/null
  rm -f "$arch"
  log "loaded $1 into the node's containerd"
}

t0=$SECONDS
flock 8
if [ "${KILN_IMAGE_BASES:-local}" = upstream ]; then
  build_args=()
else
  build_rust_image
  build_runtime_image
  build_args=(--build-arg "RUST_IMAGE=$rust_image" --build-arg "RUNTIME_IMAGE=$runtime_image")
fi
build_client_image
flock -u 8

commit=unknown
if [ "$(git rev-parse --show-toplevel 2>/dev/null)" = "$(pwd -P)" ]; then
  commit=$(git rev-parse --short HEAD)
fi
build_args+=(--build-arg "KILN_GIT_COMMIT=$commit")

log "building $image from Dockerfile at commit $commit (buildah, chroot isolation, vfs storage)"
bah bud --quiet --isolation chroot --layers=false "${build_args[@]}" \
  -f "$repo/Dockerfile" -t "$image" "$repo" >&2
log "built in $((SECONDS - t0))s"

# buildah reports the uncompressed size of the image's layers in SI units ("30.5 MB").
size=$(bah images --noheading --format '{{.Size}}' "$image" | head -n1)
size="$size ($(numfmt --from=si "$(tr -d ' B' <<<"$size")") bytes)"
log "size of $image: $size"

if [ -n "$archive" ]; then
  rm -f "$archive"
  bah push --quiet "$image" "docker-archive:$archive:$image" >/dev/null
  log "wrote $image to $archive (docker-archive, $(du -h "$archive" | cut -f1))"
fi

load "$client_image"
load "$image"
echo "$image"
