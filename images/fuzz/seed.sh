#!/usr/bin/env bash
# Build a seed corpus for the fuzz targets: small real bundles signed with the
# committed fuzz-only key, and their manifests.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
cd "$here/../.."
cargo build -q --release -p bulwark-image
bin=target/release/bulwark-image
work=$(mktemp -d); trap 'rm -rf "$work"' EXIT
mkdir -p "$here/corpus/bundle" "$here/corpus/manifest"
head -c 3000 /dev/urandom >"$work/kernel"
head -c 8192 /dev/urandom >"$work/rootfs"
echo '{"workload":"seed"}' >"$work/config"
i=0
for extra in "" "--rootfs $work/rootfs" "--cmdline console=ttyS0 --config $work/config --rootfs $work/rootfs"; do
  i=$((i + 1))
  # shellcheck disable=SC2086
  "$bin" build --name "seed$i" --version $i --kernel "$work/kernel" $extra --out "$work/b$i" >/dev/null
  cp "$here/seed-key.key" "$work/key" && chmod 600 "$work/key"
  "$bin" sign --key "$work/key" "$work/b$i" >/dev/null
  cp "$work/b$i" "$here/corpus/bundle/seed$i"
  len=$(od -An -t u8 -j 16 -N 8 "$work/b$i" | tr -d ' ')
  dd if="$work/b$i" of="$here/corpus/manifest/seed$i" bs=1 skip=8192 count="$len" status=none
done
echo "seeded $i bundles into $here/corpus"
