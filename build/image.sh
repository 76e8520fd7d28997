#!/usr/bin/env bash
# Builds the DaemonSet image without a container daemon or registry: the plugin build (dist/pycni)
# and the agent build (dist/pycni-agent), nft with its libraries, glibc, and busybox for `kubectl exec`
# are gathered into a root filesystem, which `podman build` turns into the image of build/Containerfile
# (FROM scratch, offline; podman keeps its storage under build/.work/podman, not the machine's).
#   bash build/image.sh            -> dist/pycni-image.oci.tar, image localhost/pycni:<version>
#   kind load image-archive dist/pycni-image.oci.tar
set -euo pipefail
cd "$(dirname "$0")/.."
VERSION=$(.venv/bin/python -c 'from cni.spec.version import PYCNI; print(PYCNI)')
IMAGE=${PYCNI_IMAGE:-localhost/pycni:$VERSION}
bash build/build.sh
.venv/bin/python -c "import prometheus_client, grpc, grpc_tools" 2>/dev/null ||
  bash scripts/pip.sh -e '.[agent,build]'
.venv/bin/python build/cri_stubs.py        # the agent's CRI stubs (its GC asks the runtime)
rm -rf dist/pycni-agent
.venv/bin/pyinstaller --noconfirm --log-level WARN --distpath dist --workpath build/.work build/pycni-agent.spec

ROOTFS=build/.work/image-root
rm -rf "$ROOTFS"
mkdir -p "$ROOTFS"/{opt/pycni,bin,usr/sbin,tmp,run,var/run,etc,proc,sys,dev}
chmod 1777 "$ROOTFS/tmp"
cp -a dist/pycni "$ROOTFS/opt/pycni/plugin"
cp -a dist/pycni-agent "$ROOTFS/opt/pycni/agent"
NFT=$(command -v nft)
cp "$NFT" "$ROOTFS/usr/sbin/nft"
cp /bin/busybox "$ROOTFS/bin/busybox"
for applet in sh ls cat ip ps; do ln -sf busybox "$ROOTFS/bin/$applet"; done
printf 'root:x:0:0:root:/:/bin/sh\n' > "$ROOTFS/etc/passwd"
printf 'root:x:0:\n' > "$ROOTFS/etc/group"
# shared libraries from this machine: what nft and the two bootloaders link, and what the bundled
# libraries need that the bundles do not carry (glibc, zlib)
{
  ldd "$NFT" dist/pycni/pycni dist/pycni-agent/pycni-agent
  find dist/pycni/_internal dist/pycni-agent/_internal -name '*.so*' -exec ldd {} \; 2>/dev/null
} | awk '/=> \// {print $3} /^\t\/lib/ {print $1}' | sort -u | while read -r lib; do
  base=$(basename "$lib")
  if [ -e "dist/pycni/_internal/$base" ] && [ "$lib" != /lib/x86_64-linux-gnu/libz.so.1 ]; then continue; fi
  mkdir -p "$ROOTFS$(dirname "$lib")"
  cp -L "$lib" "$ROOTFS$lib"
done
# the dynamic loader's canonical path
if [ -e /lib64/ld-linux-x86-64.so.2 ] && [ ! -e "$ROOTFS/lib64/ld-linux-x86-64.so.2" ]; then
  mkdir -p "$ROOTFS/lib64" && cp -L /lib64/ld-linux-x86-64.so.2 "$ROOTFS/lib64/"
fi
STORE=build/.work/podman
PODMAN=(podman --root "$PWD/$STORE/root" --runroot "$PWD/$STORE/run" --tmpdir "$PWD/$STORE/tmp" \
        --network-config-dir "$PWD/$STORE/networks" --events-backend none --storage-driver vfs)
"${PODMAN[@]}" build --quiet -f build/Containerfile -t "$IMAGE" "$ROOTFS" >/dev/null
rm -f dist/pycni-image.oci.tar
"${PODMAN[@]}" save --quiet --format oci-archive -o dist/pycni-image.oci.tar "$IMAGE"
"${PODMAN[@]}" rmi --force "$IMAGE" >/dev/null
echo "image $IMAGE in dist/pycni-image.oci.tar ($(du -h dist/pycni-image.oci.tar | cut -f1))"
