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
  fprintf(stderr, "usage: guest-tool loopback WAIT_S [VID:PID] | guest-tool key /dev/input/eventN TIMEOUT_S\n");
  return 2;
}
