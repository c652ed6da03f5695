/*
 * Writes into a shared file mapping, for small writes to a file's existing bytes:
 *
 *   mapFile(fd, length) -> External | number
 *     mmap(MAP_SHARED, read-write) of the file's first `length` bytes: a handle, or -errno. The
 *     mapping is the file's page cache itself, so what is copied into it is what pread sees at once,
 *     and what fdatasync on any descriptor of the file makes durable.
 *   unmapFile(map) -> undefined
 *     munmap now (later calls on the handle answer -EBADF); also done when the handle is collected.
 *   mappedWrite(map, offset, buf[, checkResident = true]) -> number
 *     0: buf copied at `offset` of the mapping. 1: not done, because a page of the range is not in
 *     the page cache (a fault would read it from the disk, stalling the caller) or the range is
 *     outside the mapping: write it another way. -errno: the copy faulted (SIGBUS: an I/O error
 *     reading the page, no space for a hole's blocks, the file cut short under the mapping); part of
 *     it may have landed: write it another way, which reports the real error. checkResident false
 *     skips the page cache check (tests: it makes a fault on a page past the file's end reachable).
 *
 * Why: a 4 KiB pwrite into a file read in by a large read (ext4 caches it in large folios, up to
 * 2 MiB) walks every buffer head of the folio twice, ~20 us; the same bytes copied into a mapping
 * of the file take ~2 us (the first write to a clean folio takes a fault, the later ones none).
 *
 * SIGBUS is caught only while this thread is inside a guarded copy (a thread-local jump buffer);
 * any other SIGBUS restores the previous disposition and faults again, as if no handler were set.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <setjmp.h>
#include <signal.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>
#include <node_api.h>

typedef struct {
  uint8_t *base;
  size_t length;
} mapping_t;

/* volatile: the handler reads it; without, the store before the memcpy is dead to the compiler */
static __thread __attribute__((tls_model("initial-exec"))) sigjmp_buf *volatile guard_jmp;
static struct sigaction previous_bus;
static long page_size;

static void on_sigbus(int sig, siginfo_t *info, void *uctx) {
  (void)info;
  (void)uctx;
  sigjmp_buf *j = guard_jmp;
  if (j) siglongjmp(*j, 1);
  /* not ours: as if this handler were not there (the faulting access runs again) */
  sigaction(sig, &previous_bus, NULL);
}

/* memcpy that returns -EFAULT instead of dying when the mapping faults (SIGBUS) */
static int guarded_copy(uint8_t *dst, const uint8_t *src, size_t n) {
  sigjmp_buf j;
  /* SA_NODEFER: the handler leaves the signal mask alone, so the jump need not restore it */
  if (sigsetjmp(j, 0)) {
    guard_jmp = NULL;
    return -EFAULT;
  }
  guard_jmp = &j;
  memcpy(dst, src, n);
  guard_jmp = NULL;
  return 0;
}

/* 1 when every page of [p, p+n) is in the page cache */
static int resident(uint8_t *p, size_t n) {
  uintptr_t start = (uintptr_t)p & ~((uintptr_t)page_size - 1);
  size_t pages = ((uintptr_t)p + n - start + (size_t)page_size - 1) / (size_t)page_size;
  unsigned char vec[64];
  if (pages > sizeof vec) return 0;
  if (mincore((void *)start, pages * (size_t)page_size, vec) != 0) return 0;
  for (size_t i = 0; i < pages; i++)
    if (!(vec[i] & 1)) return 0;
  return 1;
}

static void finalize(napi_env env, void *data, void *hint) {
  (void)env;
  (void)hint;
  mapping_t *m = data;
  if (m->base) munmap(m->base, m->length);
  free(m);
}

static napi_value int_value(napi_env env, int32_t v) {
  napi_value out;
  napi_create_int32(env, v, &out);
  return out;
}

static napi_value map_file(napi_env env, napi_callback_info info) {
  napi_value argv[2];
  size_t argc = 2;
  int32_t fd;
  double len;
  if (napi_get_cb_info(env, info, &argc, argv, NULL, NULL) != napi_ok || argc != 2 || napi_get_value_int32(env, argv[0], &fd) != napi_ok ||
      napi_get_value_double(env, argv[1], &len) != napi_ok || !(len > 0 && len <= 9007199254740991.0)) {
    napi_throw_type_error(env, NULL, "mapFile(fd, length > 0)");
    return NULL;
  }
  void *p = mmap(NULL, (size_t)len, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
  if (p == MAP_FAILED) return int_value(env, -errno);
  mapping_t *m = malloc(sizeof *m);
  if (!m) {
    munmap(p, (size_t)len);
    return int_value(env, -ENOMEM);
  }
  m->base = p;
  m->length = (size_t)len;
  napi_value out;
  if (napi_create_external(env, m, finalize, NULL, &out) != napi_ok) {
    finalize(env, m, NULL);
    return int_value(env, -ENOMEM);
  }
  return out;
}

static mapping_t *mapping_of(napi_env env, napi_value v) {
  napi_valuetype t;
  void *p = NULL;
  if (napi_typeof(env, v, &t) != napi_ok || t != napi_external || napi_get_value_external(env, v, &p) != napi_ok) return NULL;
  return p;
}

static napi_value unmap_file(napi_env env, napi_callback_info info) {
  napi_value argv[1];
  size_t argc = 1;
  mapping_t *m;
  if (napi_get_cb_info(env, info, &argc, argv, NULL, NULL) != napi_ok || argc != 1 || !(m = mapping_of(env, argv[0]))) {
    napi_throw_type_error(env, NULL, "unmapFile(map)");
    return NULL;
  }
  if (m->base) munmap(m->base, m->length);
  m->base = NULL;
  return NULL;
}

static napi_value mapped_write(napi_env env, napi_callback_info info) {
  napi_value argv[4];
  size_t argc = 4;
  mapping_t *m;
  double off;
  bool check = true;
  void *data = NULL;
  size_t n = 0;
  bool is_buf = false;
  if (napi_get_cb_info(env, info, &argc, argv, NULL, NULL) != napi_ok || argc < 3 || !(m = mapping_of(env, argv[0])) ||
      (argc > 3 && napi_get_value_bool(env, argv[3], &check) != napi_ok) ||
      napi_get_value_double(env, argv[1], &off) != napi_ok || napi_is_buffer(env, argv[2], &is_buf) != napi_ok || !is_buf ||
      napi_get_buffer_info(env, argv[2], &data, &n) != napi_ok || !(off >= 0 && off <= 9007199254740991.0)) {
    napi_throw_type_error(env, NULL, "mappedWrite(map, offset >= 0, buf: Buffer[, checkResident: boolean])");
    return NULL;
  }
  if (!m->base) return int_value(env, -EBADF);
  if (n == 0) return int_value(env, 0);
  if ((size_t)off > m->length || n > m->length - (size_t)off) return int_value(env, 1);
  uint8_t *dst = m->base + (size_t)off;
  if (check && !resident(dst, n)) return int_value(env, 1);
  return int_value(env, guarded_copy(dst, data, n));
}

void mapped_write_register(napi_env env, napi_value exports) {
  page_size = sysconf(_SC_PAGESIZE);
  struct sigaction sa;
  memset(&sa, 0, sizeof sa);
  sa.sa_sigaction = on_sigbus;
  sa.sa_flags = SA_SIGINFO | SA_ONSTACK | SA_NODEFER;
  sigemptyset(&sa.sa_mask);
  sigaction(SIGBUS, &sa, &previous_bus);
  napi_property_descriptor props[] = {
    {"mapFile", NULL, map_file, NULL, NULL, NULL, napi_default, NULL},
    {"unmapFile", NULL, unmap_file, NULL, NULL, NULL, napi_default, NULL},
    {"mappedWrite", NULL, mapped_write, NULL, NULL, NULL, napi_default, NULL},
  };
  napi_define_properties(env, exports, sizeof props / sizeof props[0], props);
}
