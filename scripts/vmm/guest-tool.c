/*
 * guest-tool: the checks the VMM test guest's /init (scripts/vmm/init.sh) cannot do with busybox.
 * Built with `gcc -static` by scripts/vmm/build-guest.sh and run inside the QEMU guest only.
 *
 *   guest-tool loopback WAIT_S [VID:PID]
 *     Waits up to WAIT_S seconds for the USB device VID:PID (default 1209:0001, usbvirt's emulated
 *     loopback, src/devices/emulated/loopback.ts: vendor class 0xff, configuration 1 echoes each bulk OUT
 *     transfer on 0x01 back on bulk IN 0x81), opens its /dev/bus/usb/BBB/DDD node (devtmpfs), selects
 *     configuration 1 if another is active, takes the first bulk OUT and bulk IN endpoints of interface 0
 *     from sysfs, detaches a bound kernel driver from interface 0 (USBDEVFS_DISCONNECT), claims it and runs
 *     several rounds of bulk writes of patterned data (1, 64, 512, 4096 and 16384 bytes), each followed by
 *     a bulk read of the same length, comparing each echo. Linux's f_loopback gadget function behaves the
 *     same way, which is how the gadget-loopback check tests this code without usbvirt.
 *   guest-tool key DEV TIMEOUT_S
 *     Opens the evdev node DEV, then prints `STEP keyboard-ready ok DEV` (so the host types only once the
 *     node is open: evdev delivers events to open readers only), and prints the code of the first EV_KEY
 *     press (value 1) within TIMEOUT_S seconds.
 *   guest-tool vhci-attach WAIT_S BUSID
 *     Imports the USB/IP device BUSID into Linux's vhci-hcd through the virtio-serial port named
 *     `usbip.BUSID` (waited for up to WAIT_S seconds), whose host side reaches a USB/IP server: sends
 *     OP_REQ_IMPORT on the port and checks the OP_REP_IMPORT (Linux Documentation/usb/usbip_protocol.rst),
 *     picks a free vhci port of the device's speed from /sys/devices/platform/vhci_hcd.0/status, makes an
 *     AF_UNIX stream socketpair, leaves two relay processes copying bytes between the port and one end (one
 *     per direction: a plain blocking loop each, so neither can stall the other), and writes
 *     "PORT SOCKFD DEVID SPEED" with the other end to vhci's `attach` file (vhci takes any connected
 *     stream socket; a virtio port is a character device, not a socket, hence the relay). Prints
 *     `STEP vhci-BUSID ok|fail` with the device's ids, the speed the server announced and the vhci port.
 *
 * Output: one `STEP <name> ok|fail <detail>` line per result on stdout (the serial console), unbuffered.
 * Exit status 0 when every step passed.
 */
#define _GNU_SOURCE
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <linux/input.h>
#include <linux/usbdevice_fs.h>
#include <poll.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#define LOOPBACK_VID 0x1209
#define LOOPBACK_PID 0x0001
#define TRANSFER_TIMEOUT_MS 5000
#define ROUNDS 3
#define MAX_LEN 16384

static const unsigned int kSizes[] = {1, 64, 512, 4096, 16384};

static void step(const char *name, int ok, const char *fmt, ...) __attribute__((format(printf, 3, 4)));
static void step(const char *name, int ok, const char *fmt, ...) {
  char detail[512];
  va_list ap;
  va_start(ap, fmt);
  vsnprintf(detail, sizeof detail, fmt, ap);
  va_end(ap);
  printf("STEP %s %s %s\n", name, ok ? "ok" : "fail", detail);
}

static double now_s(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

/* Reads a small sysfs attribute as a number in the given base; -1 when absent or malformed. */
static long read_attr(const char *dir, const char *attr, int base) {
  char path[1024], buf[64];
  snprintf(path, sizeof path, "/sys/bus/usb/devices/%s/%s", dir, attr);
  FILE *f = fopen(path, "r");
  if (f == NULL) return -1;
  char *got = fgets(buf, sizeof buf, f);
  fclose(f);
  if (got == NULL) return -1;
  char *end;
  errno = 0;
  long v = strtol(buf, &end, base);
  if (errno != 0 || end == buf) return -1;
  return v;
}

/* Reads a small sysfs attribute as a string without its line ending; 0 when absent. */
static int read_str(const char *dir, const char *attr, char *buf, size_t len) {
  char path[1024];
  snprintf(path, sizeof path, "/sys/bus/usb/devices/%s/%s", dir, attr);
  FILE *f = fopen(path, "r");
  if (f == NULL) return 0;
  char *got = fgets(buf, (int)len, f);
  fclose(f);
  if (got == NULL) return 0;
  buf[strcspn(buf, "\n")] = '\0';
  return 1;
}

/* The first bulk OUT and bulk IN endpoint addresses of interface 0 of configuration `config`. */
static int find_bulk_endpoints(const char *name, long config, unsigned int *out, unsigned int *in) {
  char ifdir[300];
  snprintf(ifdir, sizeof ifdir, "/sys/bus/usb/devices/%s:%ld.0", name, config);
  DIR *d = opendir(ifdir);
  if (d == NULL) return 0;
  *out = *in = 0;
  struct dirent *e;
  while ((e = readdir(d)) != NULL) {
    if (strncmp(e->d_name, "ep_", 3) != 0) continue;
    char rel[600], type[32];
    snprintf(rel, sizeof rel, "%s:%ld.0/%s/type", name, config, e->d_name);
    if (!read_str(".", rel, type, sizeof type) || strcmp(type, "Bulk") != 0) continue;
    snprintf(rel, sizeof rel, "%s:%ld.0/%s/bEndpointAddress", name, config, e->d_name);
    long addr = read_attr(".", rel, 16);
    if (addr < 0) continue;
    if ((addr & 0x80) != 0 && *in == 0) *in = (unsigned int)addr;
    if ((addr & 0x80) == 0 && *out == 0) *out = (unsigned int)addr;
  }
  closedir(d);
  return *out != 0 && *in != 0;
}

/* Finds the loopback device in sysfs: fills its sysfs name, bus and device numbers. */
static int find_loopback(long vid, long pid, char *name, size_t name_len, long *bus, long *dev) {
  DIR *d = opendir("/sys/bus/usb/devices");
  if (d == NULL) return 0;
  struct dirent *e;
  int found = 0;
  while (!found && (e = readdir(d)) != NULL) {
    if (e->d_name[0] == '.' || strchr(e->d_name, ':') != NULL) continue; /* interfaces have a ':' */
    if (read_attr(e->d_name, "idVendor", 16) != vid) continue;
    if (read_attr(e->d_name, "idProduct", 16) != pid) continue;
    *bus = read_attr(e->d_name, "busnum", 10);
    *dev = read_attr(e->d_name, "devnum", 10);
    snprintf(name, name_len, "%s", e->d_name);
    found = *bus > 0 && *dev > 0;
  }
  closedir(d);
  return found;
}

static void fill_pattern(unsigned char *buf, unsigned int len, unsigned int round) {
  for (unsigned int i = 0; i < len; i++) buf[i] = (unsigned char)((i * 7u + round * 13u + len) & 0xffu);
}

static int cmd_loopback(const char *check, int wait_s, long vid, long pid) {
  char name[256];
  long bus = -1, dev = -1;
  double deadline = now_s() + wait_s;
  while (!find_loopback(vid, pid, name, sizeof name, &bus, &dev)) {
    if (now_s() > deadline) {
      step(check, 0, "no USB device %04lx:%04lx after %d s", vid, pid, wait_s);
      return 1;
    }
    usleep(200 * 1000);
  }
  char node[64];
  snprintf(node, sizeof node, "/dev/bus/usb/%03ld/%03ld", bus, dev);
  int fd = -1;
  for (int tries = 0; fd < 0 && tries < 50; tries++) { /* devtmpfs may lag sysfs by a moment */
    fd = open(node, O_RDWR);
    if (fd < 0) usleep(100 * 1000);
  }
  if (fd < 0) {
    step(check, 0, "open %s: %s", node, strerror(errno));
    return 1;
  }
  long config = read_attr(name, "bConfigurationValue", 10);
  if (config != 1) {
    unsigned int one = 1;
    if (ioctl(fd, USBDEVFS_SETCONFIGURATION, &one) < 0) {
      step(check, 0, "%s: set configuration 1 (was %ld): %s", node, config, strerror(errno));
      return 1;
    }
  }
  unsigned int ep_out = 0, ep_in = 0;
  for (int tries = 0; !find_bulk_endpoints(name, 1, &ep_out, &ep_in); tries++) {
    if (tries == 50) {
      step(check, 0, "%s: no bulk OUT and bulk IN endpoint on interface 0 of configuration 1", name);
      return 1;
    }
    usleep(100 * 1000);
  }
  struct usbdevfs_getdriver gd = {.interface = 0};
  if (ioctl(fd, USBDEVFS_GETDRIVER, &gd) == 0) {
    struct usbdevfs_ioctl cmd = {.ifno = 0, .ioctl_code = USBDEVFS_DISCONNECT, .data = NULL};
    if (ioctl(fd, USBDEVFS_IOCTL, &cmd) < 0) {
      step(check, 0, "%s: detach driver %s from interface 0: %s", node, gd.driver, strerror(errno));
      return 1;
    }
  }
  unsigned int ifno = 0;
  if (ioctl(fd, USBDEVFS_CLAIMINTERFACE, &ifno) < 0) {
    step(check, 0, "%s: claim interface 0: %s", node, strerror(errno));
    return 1;
  }
  static unsigned char out[MAX_LEN], in[MAX_LEN];
  unsigned int transfers = 0;
  unsigned long bytes = 0;
  for (unsigned int round = 0; round < ROUNDS; round++) {
    for (size_t s = 0; s < sizeof kSizes / sizeof kSizes[0]; s++) {
      unsigned int len = kSizes[s];
      fill_pattern(out, len, round);
      memset(in, 0xee, len);
      struct usbdevfs_bulktransfer w = {.ep = ep_out, .len = len, .timeout = TRANSFER_TIMEOUT_MS, .data = out};
      int n = ioctl(fd, USBDEVFS_BULK, &w);
      if (n != (int)len) {
        step(check, 0, "round %u: bulk OUT %u bytes on 0x%02x returned %d (%s)", round, len, ep_out, n,
             n < 0 ? strerror(errno) : "short");
        return 1;
      }
      struct usbdevfs_bulktransfer r = {.ep = ep_in, .len = len, .timeout = TRANSFER_TIMEOUT_MS, .data = in};
      n = ioctl(fd, USBDEVFS_BULK, &r);
      if (n != (int)len) {
        step(check, 0, "round %u: bulk IN %u bytes on 0x%02x returned %d (%s)", round, len, ep_in, n,
             n < 0 ? strerror(errno) : "short");
        return 1;
      }
      if (memcmp(in, out, len) != 0) {
        unsigned int at = 0;
        while (at < len && in[at] == out[at]) at++;
        step(check, 0, "round %u: %u-byte echo differs at byte %u (sent 0x%02x, got 0x%02x)", round, len, at,
             out[at], in[at]);
        return 1;
      }
      transfers++;
      bytes += len;
    }
  }
  ioctl(fd, USBDEVFS_RELEASEINTERFACE, &ifno);
  close(fd);
  step(check, 1, "%04lx:%04lx %s %s: %u bulk transfers 0x%02x -> 0x%02x echoed intact (%lu bytes; sizes 1..16384, %d rounds)",
       vid, pid, name, node, transfers, ep_out, ep_in, bytes, ROUNDS);
  return 0;
}

static int cmd_key(const char *devpath, int timeout_s) {
  int fd = open(devpath, O_RDONLY);
  if (fd < 0) {
    step("keyboard-ready", 0, "open %s: %s", devpath, strerror(errno));
    return 1;
  }
  step("keyboard-ready", 1, "%s", devpath);
  double deadline = now_s() + timeout_s;
  for (;;) {
    double left = deadline - now_s();
    if (left <= 0) break;
    struct pollfd p = {.fd = fd, .events = POLLIN};
    int r = poll(&p, 1, (int)(left * 1000) + 1);
    if (r < 0 && errno == EINTR) continue;
    if (r <= 0) break;
    struct input_event ev[16];
    ssize_t n = read(fd, ev, sizeof ev);
    if (n < 0) {
      if (errno == EINTR || errno == EAGAIN) continue;
      step("key", 0, "read %s: %s", devpath, strerror(errno));
      return 1;
    }
    for (size_t i = 0; i < (size_t)n / sizeof ev[0]; i++) {
      if (ev[i].type == EV_KEY && ev[i].value == 1) {
        step("key", 1, "code=%u", ev[i].code);
        return 0;
      }
    }
  }
  step("key", 0, "no key press on %s within %d s", devpath, timeout_s);
  return 1;
}

/* USB/IP management phase (Linux Documentation/usb/usbip_protocol.rst); every field is big-endian. */
#define USBIP_VERSION 0x0111
#define OP_REQ_IMPORT 0x8003
#define OP_REP_IMPORT 0x0003
#define OP_HEADER_BYTES 8
#define BUSID_BYTES 32
/* struct usbip_usb_device: path[256], busid[32], busnum, devnum, speed (u32 each), idVendor, idProduct,
 * bcdDevice (u16 each), six u8 fields. */
#define USB_DEVICE_BYTES 312
#define DEV_BUSID_AT 256
#define DEV_BUSNUM_AT 288
#define DEV_DEVNUM_AT 292
#define DEV_SPEED_AT 296
#define DEV_VENDOR_AT 300
#define DEV_PRODUCT_AT 302
/* enum usb_device_speed */
#define SPEED_SUPER 5
#define VHCI_DIR "/sys/devices/platform/vhci_hcd.0"
#define RELAY_CHUNK 65536

static unsigned int be16_at(const unsigned char *p) { return (unsigned int)p[0] << 8 | p[1]; }
static unsigned long be32_at(const unsigned char *p) {
  return (unsigned long)p[0] << 24 | (unsigned long)p[1] << 16 | (unsigned long)p[2] << 8 | p[3];
}

static const char *speed_name(unsigned long speed) {
  static const char *const names[] = {"unknown", "low", "full", "high", "wireless", "super", "super-plus"};
  return speed < sizeof names / sizeof names[0] ? names[speed] : "invalid";
}

/* Writes all of buf; 0 on success, -1 with errno set. */
static int write_all(int fd, const unsigned char *buf, size_t len) {
  while (len > 0) {
    ssize_t n = write(fd, buf, len);
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) return -1;
    buf += n;
    len -= (size_t)n;
  }
  return 0;
}

/* Reads exactly len bytes before the deadline; 0 on success, -1 with `why` filled. */
static int read_exact(int fd, unsigned char *buf, size_t len, double deadline, char *why, size_t why_len) {
  size_t got = 0;
  while (got < len) {
    double left = deadline - now_s();
    if (left <= 0) {
      snprintf(why, why_len, "timed out after %zu of %zu bytes", got, len);
      return -1;
    }
    struct pollfd p = {.fd = fd, .events = POLLIN};
    int r = poll(&p, 1, (int)(left * 1000) + 1);
    if (r < 0 && errno == EINTR) continue;
    if (r < 0) {
      snprintf(why, why_len, "poll: %s", strerror(errno));
      return -1;
    }
    if (r == 0) continue;
    ssize_t n = read(fd, buf + got, len - got);
    if (n < 0 && (errno == EINTR || errno == EAGAIN)) continue;
    if (n <= 0) {
      snprintf(why, why_len, "%s after %zu of %zu bytes", n == 0 ? "end of stream" : strerror(errno), got, len);
      return -1;
    }
    got += (size_t)n;
  }
  return 0;
}

/* The /dev node of the virtio-serial port named `want` (/sys/class/virtio-ports/vportNpM/name). */
static int find_virtio_port(const char *want, char *node, size_t node_len) {
  DIR *d = opendir("/sys/class/virtio-ports");
  if (d == NULL) return 0;
  struct dirent *e;
  int found = 0;
  while (!found && (e = readdir(d)) != NULL) {
    if (e->d_name[0] == '.') continue;
    char path[600], name[128];
    snprintf(path, sizeof path, "/sys/class/virtio-ports/%s/name", e->d_name);
    FILE *f = fopen(path, "r");
    if (f == NULL) continue;
    char *got = fgets(name, sizeof name, f);
    fclose(f);
    if (got == NULL) continue;
    name[strcspn(name, "\n")] = '\0';
    if (strcmp(name, want) != 0) continue;
    snprintf(node, node_len, "/dev/%s", e->d_name);
    found = 1;
  }
  closedir(d);
  return found;
}

/*
 * A free vhci port for a device of `speed`: vhci's status file lists every port as
 * `hub port sta spd dev sockfd local_busid` (hub hs or ss; sta 4 is VDEV_ST_NULL, free). SuperSpeed
 * devices need an ss port, all others an hs one. -1 when none is free.
 */
static long free_vhci_port(unsigned long speed) {
  FILE *f = fopen(VHCI_DIR "/status", "r");
  if (f == NULL) return -1;
  const char *hub = speed >= SPEED_SUPER ? "ss" : "hs";
  char line[256];
  long port = -1;
  while (port < 0 && fgets(line, sizeof line, f) != NULL) {
    char h[8];
    unsigned int p, sta;
    if (sscanf(line, "%7s %u %u", h, &p, &sta) != 3) continue; /* the header line */
    if (strcmp(h, hub) == 0 && sta == 4) port = (long)p;
  }
  fclose(f);
  return port;
}

/* Copies bytes from `from` to `to` until either ends, then shuts `to`'s write side (when a socket). */
static void relay(int from, int to) {
  static unsigned char buf[RELAY_CHUNK];
  for (;;) {
    ssize_t n = read(from, buf, sizeof buf);
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0 || write_all(to, buf, (size_t)n) < 0) break;
  }
  shutdown(to, SHUT_WR);
}

static int cmd_vhci_attach(int wait_s, const char *busid) {
  char check[64], want[64], node[300];
  snprintf(check, sizeof check, "vhci-%s", busid);
  snprintf(want, sizeof want, "usbip.%s", busid);
  double deadline = now_s() + wait_s;
  int fd = -1;
  while (fd < 0) {
    if (find_virtio_port(want, node, sizeof node)) fd = open(node, O_RDWR);
    if (fd >= 0) break;
    if (now_s() > deadline) {
      step(check, 0, "no virtio-serial port named %s after %d s", want, wait_s);
      return 1;
    }
    usleep(200 * 1000);
  }
  unsigned char req[OP_HEADER_BYTES + BUSID_BYTES] = {0};
  req[0] = USBIP_VERSION >> 8;
  req[1] = USBIP_VERSION & 0xff;
  req[2] = OP_REQ_IMPORT >> 8;
  req[3] = OP_REQ_IMPORT & 0xff;
  snprintf((char *)req + OP_HEADER_BYTES, BUSID_BYTES, "%s", busid);
  if (write_all(fd, req, sizeof req) < 0) {
    step(check, 0, "%s: write OP_REQ_IMPORT: %s", node, strerror(errno));
    return 1;
  }
  unsigned char rep[OP_HEADER_BYTES + USB_DEVICE_BYTES];
  char why[128];
  if (read_exact(fd, rep, OP_HEADER_BYTES, deadline, why, sizeof why) < 0) {
    step(check, 0, "%s: OP_REP_IMPORT header: %s", node, why);
    return 1;
  }
  unsigned int version = be16_at(rep), code = be16_at(rep + 2);
  unsigned long status = be32_at(rep + 4);
  if (version != USBIP_VERSION || code != OP_REP_IMPORT || status != 0) {
    step(check, 0, "%s: reply version 0x%04x code 0x%04x status %lu (want 0x%04x 0x%04x 0)", node, version,
         code, status, USBIP_VERSION, OP_REP_IMPORT);
    return 1;
  }
  if (read_exact(fd, rep + OP_HEADER_BYTES, USB_DEVICE_BYTES, deadline, why, sizeof why) < 0) {
    step(check, 0, "%s: OP_REP_IMPORT device record: %s", node, why);
    return 1;
  }
  const unsigned char *dev = rep + OP_HEADER_BYTES;
  char got_busid[BUSID_BYTES + 1];
  memcpy(got_busid, dev + DEV_BUSID_AT, BUSID_BYTES);
  got_busid[BUSID_BYTES] = '\0';
  unsigned long busnum = be32_at(dev + DEV_BUSNUM_AT), devnum = be32_at(dev + DEV_DEVNUM_AT);
  unsigned long speed = be32_at(dev + DEV_SPEED_AT);
  unsigned int vid = be16_at(dev + DEV_VENDOR_AT), pid = be16_at(dev + DEV_PRODUCT_AT);
  if (strcmp(got_busid, busid) != 0 || busnum > 0xffff || devnum > 0xffff || speed < 1 || speed > 6) {
    step(check, 0, "%s: bad device record: busid \"%.32s\" busnum %lu devnum %lu speed %lu", node, got_busid,
         busnum, devnum, speed);
    return 1;
  }
  long port = free_vhci_port(speed);
  if (port < 0) {
    step(check, 0, "no free vhci port for a %s-speed device (%s/status)", speed_name(speed), VHCI_DIR);
    return 1;
  }
  int sv[2];
  if (socketpair(AF_UNIX, SOCK_STREAM, 0, sv) < 0) {
    step(check, 0, "socketpair: %s", strerror(errno));
    return 1;
  }
  for (int dir = 0; dir < 2; dir++) {
    pid_t child = fork();
    if (child < 0) {
      step(check, 0, "fork: %s", strerror(errno));
      return 1;
    }
    if (child == 0) {
      close(sv[0]);
      if (dir == 0) relay(fd, sv[1]);
      else relay(sv[1], fd);
      _exit(0);
    }
  }
  close(sv[1]);
  close(fd);
  unsigned long devid = busnum << 16 | devnum;
  char attach[128];
  int len = snprintf(attach, sizeof attach, "%ld %d %lu %lu", port, sv[0], devid, speed);
  int afd = open(VHCI_DIR "/attach", O_WRONLY);
  if (afd < 0 || write(afd, attach, (size_t)len) != len) {
    step(check, 0, "write \"%s\" to %s/attach: %s", attach, VHCI_DIR, strerror(errno));
    return 1;
  }
  close(afd);
  close(sv[0]); /* vhci holds its own reference to the socket */
  step(check, 1, "%04x:%04x imported through %s, %s speed (%lu), devid 0x%05lx, vhci port %ld", vid, pid, node,
       speed_name(speed), speed, devid, port);
  return 0;
}

/* Parses a small positive number of seconds; exits with a usage line on anything else. */
static int seconds(const char *s) {
  char *end;
  long v = strtol(s, &end, 10);
  if (*s == '\0' || *end != '\0' || v < 1 || v > 3600) {
    fprintf(stderr, "guest-tool: bad number of seconds: %s\n", s);
    exit(2);
  }
  return (int)v;
}

int main(int argc, char **argv) {
  setvbuf(stdout, NULL, _IONBF, 0);
  if ((argc == 3 || argc == 4) && strcmp(argv[1], "loopback") == 0) {
    unsigned int vid = LOOPBACK_VID, pid = LOOPBACK_PID;
    char extra;
    if (argc == 4 && (sscanf(argv[3], "%4x:%4x%c", &vid, &pid, &extra) != 2)) {
      fprintf(stderr, "guest-tool: bad VID:PID: %s\n", argv[3]);
      return 2;
    }
    /* The check's name on the STEP line: loopback for usbvirt's device, gadget-loopback for another. */
    const char *check = argc == 4 ? "gadget-loopback" : "loopback";
    return cmd_loopback(check, seconds(argv[2]), vid, pid);
  }
  if (argc == 4 && strcmp(argv[1], "key") == 0) return cmd_key(argv[2], seconds(argv[3]));
  if (argc == 4 && strcmp(argv[1], "vhci-attach") == 0) {
    if (strlen(argv[3]) >= BUSID_BYTES || strspn(argv[3], "0123456789-.") != strlen(argv[3])) {
      fprintf(stderr, "guest-tool: bad bus id: %s\n", argv[3]);
      return 2;
    }
    return cmd_vhci_attach(seconds(argv[2]), argv[3]);
  }
  fprintf(stderr, "usage: guest-tool loopback WAIT_S [VID:PID] | guest-tool key /dev/input/eventN TIMEOUT_S"
                  " | guest-tool vhci-attach WAIT_S BUSID\n");
  return 2;
}
