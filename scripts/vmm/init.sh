#!/bin/sh
# /init of the VMM test guest (built into the initramfs by scripts/vmm/build-guest.sh; busybox ash).
# Loads the USB, storage and input modules, runs the checks named on the kernel command line
# (usbvirt.checks=storage,keyboard,loopback,gadget-loopback,vhci,storage-read; usbvirt.wait=S, 1..3600,
# bounds each wait for a device, default 30; usbvirt.usbip=BUSID,... names the USB/IP devices the vhci check
# imports; storage-read's own parameters are described at check_storage_read) and prints one marker line per
# step on the serial console, which test/vmm/qemu-guest.ts parses:
#   STEP <name> ok|fail <detail>      then     DONE      then the guest powers off.
# Kernel messages are kept off the console while the checks run (so they cannot split a marker line);
# after a failed step the kernel log follows as `LOG` lines.
/bin/busybox --install -s /bin
export PATH=/bin
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev
mkdir -p /tmp
echo 1 >/proc/sys/kernel/printk

failed=0
step() { # step NAME ok|fail DETAIL...
  name=$1 verdict=$2
  shift 2
  echo "STEP $name $verdict $*"
  [ "$verdict" = ok ] || failed=1
}

# Kernel command line: usbvirt.checks=a,b,c and usbvirt.wait=S.
checks=""
wait_s=30
read_disks=""
read_rounds=5
read_mib=32
for arg in $(cat /proc/cmdline); do
  case "$arg" in
    usbvirt.checks=*) checks=$(echo "${arg#usbvirt.checks=}" | tr ',' ' ') ;;
    usbvirt.wait=*) wait_s=${arg#usbvirt.wait=} ;;
    usbvirt.usbip=*) usbip_busids=$(echo "${arg#usbvirt.usbip=}" | tr ',' ' ') ;;
    usbvirt.read-disks=*) read_disks=$(echo "${arg#usbvirt.read-disks=}" | tr ',' ' ') ;;
    usbvirt.read-rounds=*) read_rounds=${arg#usbvirt.read-rounds=} ;;
    usbvirt.read-mib=*) read_mib=${arg#usbvirt.read-mib=} ;;
  esac
done
case "$wait_s" in '' | *[!0-9]*) wait_s=30 ;; esac
[ "$wait_s" -ge 1 ] || wait_s=1
[ "$wait_s" -le 3600 ] || wait_s=3600

# load_modules SET: the set's modules, in the load order build-guest.sh found with modprobe --show-depends.
load_modules() {
  loaded=0
  while read -r mod; do
    if insmod "/lib/modules/$mod" 2>/tmp/insmod.err; then
      loaded=$((loaded + 1))
    else
      step "insmod-${mod%.ko}" fail "$(cat /tmp/insmod.err)"
    fi
  done <"/lib/modules/$1.order"
}
load_modules boot
step modules ok "$loaded loaded"

# wait_for DESCRIPTION COMMAND...: retries COMMAND every 0.2 s for up to $wait_s seconds; on failure
# $why says what was missing. Runs in this shell, so COMMAND's variables survive.
wait_for() {
  what=$1
  shift
  tries=$((wait_s * 5))
  while ! "$@"; do
    tries=$((tries - 1))
    if [ "$tries" -le 0 ]; then
      why="no $what after ${wait_s} s"
      return 1
    fi
    sleep 0.2
  done
  return 0
}

# A whole disk (sdX) whose sysfs path runs through the USB bus.
find_usb_disk() {
  for b in /sys/block/sd*; do
    [ -e "$b" ] || continue
    case "$(readlink -f "$b")" in */usb*) disk=${b##*/} && return 0 ;; esac
  done
  return 1
}

check_storage() {
  if ! wait_for "USB disk" find_usb_disk; then
    step storage fail "$why"
    return
  fi
  dev=/dev/$disk
  if ! wait_for "$dev node" test -b "$dev"; then
    step storage fail "$why"
    return
  fi
  sectors=$(cat "/sys/block/$disk/size")
  # 4 KiB at 1 MiB when the disk is big enough, else at 0 (bs=4096 blocks).
  blk=256
  [ "$sectors" -ge 4096 ] || blk=0
  where="4096 bytes at block $blk of $dev ($sectors sectors)"
  if ! dd if="$dev" of=/tmp/orig bs=4096 count=1 skip=$blk iflag=direct 2>/tmp/dd.err; then
    step storage fail "read $where: $(cat /tmp/dd.err)"
    return
  fi
  dd if=/dev/urandom of=/tmp/pattern bs=4096 count=1 2>/dev/null
  if ! dd if=/tmp/pattern of="$dev" bs=4096 count=1 seek=$blk oflag=direct 2>/tmp/dd.err; then
    step storage fail "write $where: $(cat /tmp/dd.err)"
    return
  fi
  dd if="$dev" of=/tmp/back bs=4096 count=1 skip=$blk iflag=direct 2>/dev/null
  if ! cmp -s /tmp/pattern /tmp/back; then
    step storage fail "read back of $where differs from what was written"
    return
  fi
  dd if=/tmp/orig of="$dev" bs=4096 count=1 seek=$blk oflag=direct 2>/dev/null
  dd if="$dev" of=/tmp/back bs=4096 count=1 skip=$blk iflag=direct 2>/dev/null
  if ! cmp -s /tmp/orig /tmp/back; then
    step storage fail "restore of $where did not read back"
    return
  fi
  step storage ok "$where written, read back intact and restored (O_DIRECT)"
}

# An evdev node on the USB bus that can autorepeat (EV_REP, bit 20): a keyboard, not a mouse.
find_usb_keyboard() {
  for e in /sys/class/input/event*; do
    [ -e "$e" ] || continue
    case "$(readlink -f "$e")" in */usb*) ;; *) continue ;; esac
    ev=$(cat "$e/device/capabilities/ev")
    if [ $((0x$ev & 0x100000)) -ne 0 ]; then
      kbd=${e##*/}
      return 0
    fi
  done
  return 1
}

check_keyboard() {
  if ! wait_for "USB keyboard input device" find_usb_keyboard; then
    step keyboard-ready fail "$why"
    return
  fi
  if ! wait_for "/dev/input/$kbd node" test -c "/dev/input/$kbd"; then
    step keyboard-ready fail "$why"
    return
  fi
  echo "STEP keyboard-name ok /dev/input/$kbd $(cat "/sys/class/input/$kbd/device/name")"
  # guest-tool prints keyboard-ready once the node is open, then key ok|fail.
  /bin/guest-tool key "/dev/input/$kbd" 30 || failed=1
}

check_loopback() {
  /bin/guest-tool loopback "$wait_s" || failed=1
}

# guest-tool's loopback code against Linux's own f_loopback (a configfs gadget on dummy_hcd, Gadget Zero's
# ids 0525:a4a0): proves the guest side of the loopback check without usbvirt.
check_gadget_loopback() {
  load_modules gadget
  mkdir -p /sys/kernel/config
  mount -t configfs none /sys/kernel/config
  g=/sys/kernel/config/usb_gadget/lb
  if ! mkdir "$g" "$g/strings/0x409" "$g/configs/c.1" "$g/functions/Loopback.0" 2>/tmp/gadget.err; then
    step gadget-loopback fail "configfs: $(cat /tmp/gadget.err)"
    return
  fi
  echo 0x0525 >"$g/idVendor"
  echo 0xa4a0 >"$g/idProduct"
  echo usbvirt-test >"$g/strings/0x409/product"
  # f_loopback completes an OUT request only when it is full or ends short: with 512-byte requests (one
  # high-speed packet) every transfer the test sends is echoed whole, as usbvirt's loopback echoes it.
  echo 512 >"$g/functions/Loopback.0/bulk_buflen"
  ln -s "$g/functions/Loopback.0" "$g/configs/c.1/"
  if ! ls /sys/class/udc | head -n 1 >"$g/UDC" 2>/tmp/gadget.err; then
    step gadget-loopback fail "bind to a UDC ($(ls /sys/class/udc)): $(cat /tmp/gadget.err)"
    return
  fi
  /bin/guest-tool loopback "$wait_s" 0525:a4a0 || failed=1
}

# Linux's own USB/IP client: vhci-hcd imports each device of usbvirt.usbip through the virtio-serial port
# named usbip.BUSID (its host side reaches the USB/IP server); guest-tool does the import and the attach.
# The storage, keyboard and loopback checks that follow then find the devices on vhci's bus.
check_vhci() {
  load_modules vhci
  if [ -z "$usbip_busids" ]; then
    step vhci fail "no usbvirt.usbip=BUSID,... on the kernel command line"
    return
  fi
  for busid in $usbip_busids; do
    /bin/guest-tool vhci-attach "$wait_s" "$busid" || failed=1
  done
}

# The whole disk (sdX) of the USB device whose serial number is $1.
find_disk_by_serial() {
  for s in /sys/bus/usb/devices/*/serial; do
    [ -e "$s" ] && [ "$(cat "$s")" = "$1" ] || continue
    for b in "${s%/serial}"/*:*/host*/target*/*/block/sd*; do
      [ -e "$b" ] || continue
      disk=${b##*/}
      return 0
    done
  done
  return 1
}

# The guest's monotonic clock in nanoseconds (busybox date has no %N).
now_ns() {
  awk '/^now at/ { print $3; exit }' /proc/timer_list
}

# storage-read: sequential O_DIRECT reads of $read_mib MiB in 64 KiB reads from each disk in $read_disks
# (usbvirt.read-disks=LABEL:SERIAL,...; the USB serial number names the disk), $read_rounds rounds
# (usbvirt.read-rounds=N, 1..50), the disks taken in the given order in odd rounds and in reverse order in
# even ones. First the same random pattern is written to each disk (O_DIRECT); after the rounds each disk
# is read once more and compared with it. One line per read, timed by the guest's clock:
#   STEP read-LABEL-ROUND ok bytes=B ns=T mibps=M
# (after `STEP read-written ok`, once the pattern is on every disk), then read-verify-LABEL ok|fail, and
# storage-read ok|fail.
check_storage_read() {
  case "$read_rounds" in '' | *[!0-9]*) read_rounds=5 ;; esac
  case "$read_mib" in '' | *[!0-9]*) read_mib=32 ;; esac
  [ "$read_rounds" -ge 1 ] && [ "$read_rounds" -le 50 ] || read_rounds=5
  [ "$read_mib" -ge 1 ] && [ "$read_mib" -le 256 ] || read_mib=32
  if [ -z "$read_disks" ]; then
    step storage-read fail "no disks named (usbvirt.read-disks=LABEL:SERIAL,...)"
    return
  fi
  if [ -z "$(now_ns)" ]; then
    step storage-read fail "no clock: /proc/timer_list has no 'now at' line"
    return
  fi
  count=$((read_mib * 16))
  bytes=$((read_mib * 1048576))
  labels=""
  for d in $read_disks; do
    label=${d%%:*} serial=${d#*:}
    if ! wait_for "USB disk with serial $serial" find_disk_by_serial "$serial"; then
      step storage-read fail "$label: $why"
      return
    fi
    if ! wait_for "/dev/$disk node" test -b "/dev/$disk"; then
      step storage-read fail "$label: $why"
      return
    fi
    eval "dev_$label=/dev/$disk"
    labels="$labels $label"
  done
  if ! dd if=/dev/urandom of=/tmp/pattern bs=65536 count=$count 2>/tmp/dd.err; then
    step storage-read fail "pattern: $(cat /tmp/dd.err)"
    return
  fi
  for label in $labels; do
    eval "dev=\$dev_$label"
    if ! dd if=/tmp/pattern of="$dev" bs=65536 count=$count oflag=direct 2>/tmp/dd.err; then
      step storage-read fail "$label: write the pattern to $dev: $(cat /tmp/dd.err)"
      return
    fi
  done
  step read-written ok "$read_mib MiB of random bytes written to$labels (O_DIRECT)"
  reversed=""
  for label in $labels; do reversed="$label $reversed"; done
  round=1
  while [ "$round" -le "$read_rounds" ]; do
    order=$labels
    [ $((round % 2)) -eq 0 ] && order=$reversed
    for label in $order; do
      eval "dev=\$dev_$label"
      t0=$(now_ns)
      if ! dd if="$dev" of=/dev/null bs=65536 count=$count iflag=direct 2>/tmp/dd.err; then
        step "read-$label-$round" fail "$dev: $(cat /tmp/dd.err)"
        return
      fi
      t1=$(now_ns)
      ns=$((t1 - t0))
      centi=$((bytes * 1000000000 / ns * 100 / 1048576))
      step "read-$label-$round" ok "bytes=$bytes ns=$ns mibps=$((centi / 100)).$((centi / 10 % 10))$((centi % 10)) dev=$dev"
    done
    round=$((round + 1))
  done
  all=ok
  for label in $labels; do
    eval "dev=\$dev_$label"
    if dd if="$dev" bs=65536 count=$count iflag=direct 2>/tmp/dd.err | cmp -s - /tmp/pattern; then
      step "read-verify-$label" ok "$dev returned the $read_mib MiB pattern written to it"
    else
      step "read-verify-$label" fail "$dev did not return the pattern written to it $(cat /tmp/dd.err)"
      all=fail
    fi
  done
  step storage-read "$all" "$read_rounds rounds of $read_mib MiB over$labels"
}

usb_ids() {
  ids=""
  for d in /sys/bus/usb/devices/*; do
    [ -e "$d/idVendor" ] || continue
    ids="$ids $(cat "$d/idVendor"):$(cat "$d/idProduct")@${d##*/}/$(cat "$d/speed")"
  done
  step usb-ids ok "${ids# }"
}

for c in $checks; do
  case "$c" in
    storage) check_storage ;;
    keyboard) check_keyboard ;;
    loopback) check_loopback ;;
    gadget-loopback) check_gadget_loopback ;;
    vhci) check_vhci ;;
    storage-read) check_storage_read ;;
    *) step "$c" fail "unknown check (known: storage keyboard loopback gadget-loopback vhci storage-read)" ;;
  esac
done
usb_ids
if [ "$failed" -ne 0 ]; then
  dmesg | sed 's/^/LOG /'
fi
echo DONE
sync
poweroff -f
