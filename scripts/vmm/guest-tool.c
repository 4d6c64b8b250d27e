/*
 * guest-tool: the checks the VMM test guest's /init (scripts/vmm/init.sh) cannot do with busybox.
 * Built with `gcc -static` by scripts/vmm/build-guest.sh and run inside the QEMU guest only.
 *
 *   guest-tool loopback WAIT_S
 *     Waits up to WAIT_S seconds for the USB device 1209:0001 (usbvirt's emulated loopback,
 *     src/devices/emulated/loopback.ts: vendor class 0xff, configuration 1 echoes each bulk OUT
 *     transfer on 0x01 back on bulk IN 0x81), opens its /dev/bus/usb/BBB/DDD node (devtmpfs), selects
 *     configuration 1 if another is active, detaches a bound kernel driver from interface 0
 *     (USBDEVFS_DISCONNECT), claims interface 0 and runs several rounds of bulk writes of patterned data
 *     (1, 64, 512, 4096 and 16384 bytes) followed by a bulk read of the same length, comparing each echo.
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
#define EP_OUT 0x01
#define EP_IN 0x81
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
  char path[512], buf[64];
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

/* Finds the loopback device in sysfs: fills its sysfs name, bus and device numbers. */
static int find_loopback(char *name, size_t name_len, long *bus, long *dev) {
  DIR *d = opendir("/sys/bus/usb/devices");
  if (d == NULL) return 0;
  struct dirent *e;
  int found = 0;
  while (!found && (e = readdir(d)) != NULL) {
    if (e->d_name[0] == '.' || strchr(e->d_name, ':') != NULL) continue; /* interfaces have a ':' */
    if (read_attr(e->d_name, "idVendor", 16) != LOOPBACK_VID) continue;
    if (read_attr(e->d_name, "idProduct", 16) != LOOPBACK_PID) continue;
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

static int cmd_loopback(int wait_s) {
  char name[256];
  long bus = -1, dev = -1;
  double deadline = now_s() + wait_s;
  while (!find_loopback(name, sizeof name, &bus, &dev)) {
    if (now_s() > deadline) {
      step("loopback", 0, "no USB device %04x:%04x after %d s", LOOPBACK_VID, LOOPBACK_PID, wait_s);
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
    step("loopback", 0, "open %s: %s", node, strerror(errno));
    return 1;
  }
  long config = read_attr(name, "bConfigurationValue", 10);
  if (config != 1) {
    unsigned int one = 1;
    if (ioctl(fd, USBDEVFS_SETCONFIGURATION, &one) < 0) {
      step("loopback", 0, "%s: set configuration 1 (was %ld): %s", node, config, strerror(errno));
      return 1;
    }
  }
  struct usbdevfs_getdriver gd = {.interface = 0};
  if (ioctl(fd, USBDEVFS_GETDRIVER, &gd) == 0) {
    struct usbdevfs_ioctl cmd = {.ifno = 0, .ioctl_code = USBDEVFS_DISCONNECT, .data = NULL};
    if (ioctl(fd, USBDEVFS_IOCTL, &cmd) < 0) {
      step("loopback", 0, "%s: detach driver %s from interface 0: %s", node, gd.driver, strerror(errno));
      return 1;
    }
  }
  unsigned int ifno = 0;
  if (ioctl(fd, USBDEVFS_CLAIMINTERFACE, &ifno) < 0) {
    step("loopback", 0, "%s: claim interface 0: %s", node, strerror(errno));
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
      struct usbdevfs_bulktransfer w = {.ep = EP_OUT, .len = len, .timeout = TRANSFER_TIMEOUT_MS, .data = out};
      int n = ioctl(fd, USBDEVFS_BULK, &w);
      if (n != (int)len) {
        step("loopback", 0, "round %u: bulk OUT %u bytes on 0x%02x returned %d (%s)", round, len, EP_OUT, n,
             n < 0 ? strerror(errno) : "short");
        return 1;
      }
      struct usbdevfs_bulktransfer r = {.ep = EP_IN, .len = len, .timeout = TRANSFER_TIMEOUT_MS, .data = in};
      n = ioctl(fd, USBDEVFS_BULK, &r);
      if (n != (int)len) {
        step("loopback", 0, "round %u: bulk IN %u bytes on 0x%02x returned %d (%s)", round, len, EP_IN, n,
             n < 0 ? strerror(errno) : "short");
        return 1;
      }
      if (memcmp(in, out, len) != 0) {
        unsigned int at = 0;
        while (at < len && in[at] == out[at]) at++;
        step("loopback", 0, "round %u: %u-byte echo differs at byte %u (sent 0x%02x, got 0x%02x)", round, len, at,
             out[at], in[at]);
        return 1;
      }
      transfers++;
      bytes += len;
    }
  }
  ioctl(fd, USBDEVFS_RELEASEINTERFACE, &ifno);
  close(fd);
  step("loopback", 1, "%s %s: %u bulk transfers echoed intact (%lu bytes; sizes 1..16384, %d rounds)", name, node,
       transfers, bytes, ROUNDS);
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
  if (argc == 3 && strcmp(argv[1], "loopback") == 0) return cmd_loopback(seconds(argv[2]));
  if (argc == 4 && strcmp(argv[1], "key") == 0) return cmd_key(argv[2], seconds(argv[3]));
  fprintf(stderr, "usage: guest-tool loopback WAIT_S | guest-tool key /dev/input/eventN TIMEOUT_S\n");
  return 2;
}
