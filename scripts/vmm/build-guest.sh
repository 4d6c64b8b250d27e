#!/usr/bin/env bash
# Builds the QEMU test guest that test/vmm/ boots: Debian's current kernel (the package the
# linux-image-amd64 metapackage depends on, fetched with `apt-get download` and unpacked with `dpkg-deb -x`,
# never installed) and a small gzip'd newc initramfs holding busybox-static, the kernel modules the checks
# need (decompressed, in the load order `modprobe --show-depends` gives against the unpacked tree),
# scripts/vmm/init.sh as /init and scripts/vmm/guest-tool.c compiled with `gcc -static`.
#
# Usage: scripts/vmm/build-guest.sh [OUTDIR]     (default <repo>/.cache/vmm-guest)
# Writes OUTDIR/vmlinuz, OUTDIR/initrd.img, OUTDIR/kernel (package=version) and OUTDIR/modules/ (kept so
# a change to /init or guest-tool rebuilds the initramfs without downloading the kernel again).
# Skips the download when OUTDIR already has the same kernel package version, and the initramfs when its
# inputs have not changed. Needs apt (after apt-get update), dpkg-deb, kmod (depmod, modprobe),
# busybox-static and gcc with static glibc (libc6-dev).
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
root="$(cd "$here/../.." && pwd)"
out="${1:-$root/.cache/vmm-guest}"
say() { echo "build-guest: $*"; }
die() { echo "build-guest: $*" >&2; exit 1; }

# depmod and modprobe live in /usr/sbin, which a non-login root shell may not have on its PATH.
export PATH="$PATH:/usr/sbin:/sbin"
for tool in apt-get apt-cache dpkg-deb depmod modprobe gcc gzip; do
  command -v "$tool" >/dev/null || die "$tool is not installed (apt-get install kmod gcc libc6-dev)"
done
busybox=/bin/busybox
[[ -x "$busybox" ]] && "$busybox" --list | grep -x cpio >/dev/null || die "busybox-static is not installed (apt-get install busybox-static)"
# The guest has no libc: a dynamically linked busybox (Debian's `busybox` package) cannot run there.
if readelf -l "$busybox" 2>/dev/null | grep "program interpreter" >/dev/null; then
  die "$busybox is dynamically linked (apt-get install busybox-static)"
fi

# The modules the checks need, in three sets: `boot` is loaded by /init at start; `gadget` (dummy_hcd and
# the configfs loopback function) only by the gadget-loopback check, which tests guest-tool's loopback
# code against Linux's own f_loopback; `vhci` (Linux's USB/IP client and the virtio-serial ports its
# connections travel through) only by the vhci check. Which of them are built into this kernel is found below.
boot_modules=(xhci-pci xhci-hcd usb-storage sd_mod usbhid hid hid-generic evdev)
gadget_modules=(configfs dummy_hcd usb_f_ss_lb)
vhci_modules=(virtio_pci virtio_console usbip-core vhci-hcd)

# 1. The kernel package: what linux-image-amd64 depends on today, and its candidate version.
pkg="$(apt-cache depends linux-image-amd64 2>/dev/null | awk '$1 == "Depends:" && $2 ~ /^linux-image-/ { print $2; exit }')"
[[ -n "$pkg" ]] || die "cannot resolve linux-image-amd64's kernel package (run apt-get update first?)"
version="$(apt-cache policy "$pkg" | awk '$1 == "Candidate:" { print $2; exit }')"
[[ -n "$version" && "$version" != "(none)" ]] || die "no candidate version for $pkg"
kernel_id="$pkg=$version"
# What OUTDIR/kernel records: the package and the module sets taken from it.
kernel_key="$kernel_id boot: ${boot_modules[*]} gadget: ${gadget_modules[*]} vhci: ${vhci_modules[*]}"
mkdir -p "$out"

scratch="$(mktemp -d)"
trap 'rm -rf "$scratch"' EXIT

if [[ -f "$out/kernel" && "$(cat "$out/kernel")" == "$kernel_key" && -f "$out/vmlinuz" && -f "$out/modules/gadget.order" && -f "$out/modules/vhci.order" ]]; then
  say "kernel $kernel_id already in $out (no download)"
else
  say "downloading $kernel_id"
  rm -rf "$out/modules" "$out/vmlinuz" "$out/kernel" "$out/initrd.img" "$out/initrd.stamp"
  # apt-get download writes to the current directory; _apt cannot write to a mktemp dir, which only warns.
  (cd "$scratch" && apt-get download -q "$pkg=$version" 2>&1 | grep -v "^W: Download is performed unsandboxed" || true)
  deb="$(ls "$scratch"/*.deb 2>/dev/null | head -1)"
  [[ -n "$deb" ]] || die "apt-get download $pkg=$version produced no .deb"
  say "unpacking $(basename "$deb") (dpkg-deb -x, no install)"
  dpkg-deb -x "$deb" "$scratch/x"
  kver="$(ls "$scratch/x/lib/modules")"
  [[ -n "$kver" && -f "$scratch/x/boot/vmlinuz-$kver" ]] || die "no vmlinuz in $deb"
  depmod -b "$scratch/x" "$kver"
  mkdir -p "$out/modules"
  # resolve SET MODULE...: writes modules/SET.order, the load order of MODULE... and their dependencies
  # (softdeps too) minus what an earlier set loads, and copies each module in decompressed.
  resolve() {
    local set="$1" mod deps kind path base name
    shift
    : >"$out/modules/$set.order"
    for mod in "$@"; do
      # modprobe prints `insmod PATH` per module in load order, `builtin NAME` for built-ins.
      deps="$(modprobe -d "$scratch/x" -S "$kver" --show-depends "$mod")" || die "modprobe --show-depends $mod failed"
      while read -r kind path _; do
        case "$kind" in
          builtin) say "  $mod: built in" ;;
          insmod)
            base="$(basename "$path")"
            name="${base%%.ko*}.ko"
            grep -qx "$name" "$out/modules/"*.order && continue
            case "$base" in
              *.ko) cp "$path" "$out/modules/$name" ;;
              *.ko.xz) xz -dc "$path" >"$out/modules/$name" ;;
              *.ko.zst) zstd -qdc "$path" >"$out/modules/$name" ;;
              *.ko.gz) gzip -dc "$path" >"$out/modules/$name" ;;
              *) die "unknown module file $base" ;;
            esac
            echo "$name" >>"$out/modules/$set.order"
            ;;
        esac
      done <<<"$deps"
    done
    say "$set modules in load order: $(tr '\n' ' ' <"$out/modules/$set.order")"
  }
  resolve boot "${boot_modules[@]}"
  resolve gadget "${gadget_modules[@]}"
  resolve vhci "${vhci_modules[@]}"
  cp "$scratch/x/boot/vmlinuz-$kver" "$out/vmlinuz"
  echo "$kernel_key" >"$out/kernel"
  rm -rf "$scratch/x" "$deb"
fi

# 2. The initramfs, rebuilt when the kernel or any input changed.
stamp="$( (echo "$kernel_key"; cat "$here/init.sh" "$here/guest-tool.c" "$0"; sha256sum "$busybox") | sha256sum | cut -d' ' -f1)"
if [[ -f "$out/initrd.img" && -f "$out/initrd.stamp" && "$(cat "$out/initrd.stamp")" == "$stamp" ]]; then
  say "initramfs in $out is up to date"
else
  say "building the initramfs"
  r="$scratch/root"
  mkdir -p "$r"/{bin,dev,proc,sys,tmp,lib/modules}
  cp "$busybox" "$r/bin/busybox"
  ln -s busybox "$r/bin/sh"
  gcc -static -O2 -s -Wall -Wextra -Werror -o "$r/bin/guest-tool" "$here/guest-tool.c"
  install -m 0755 "$here/init.sh" "$r/init"
  cp "$out/modules/"* "$r/lib/modules/"
  (cd "$r" && find . -mindepth 1 | LC_ALL=C sort | "$busybox" cpio -o -H newc 2>/dev/null | gzip -9 >"$out/initrd.img.tmp")
  mv "$out/initrd.img.tmp" "$out/initrd.img"
  echo "$stamp" >"$out/initrd.stamp"
fi
say "kernel $kernel_id: $out/vmlinuz ($(du -h "$out/vmlinuz" | cut -f1)), $out/initrd.img ($(du -h "$out/initrd.img" | cut -f1))"
