/*
 * File-to-file copies for convert and commit, on libuv's thread pool (napi async work):
 *
 *   copyRange(inFd, inOff, outFd, outOff, length) -> Promise<void>
 *     copy_file_range(2): the kernel copies page cache to page cache, once, where read + write
 *     through a buffer copy every byte twice. Where it cannot (another file system, an old
 *     kernel: EXDEV, EINVAL, ENOSYS, EOPNOTSUPP) pread/pwrite through a 1 MiB buffer. Bytes past
 *     the end of the input file are written as zeros (they read as zeros).
 *
 *   zeroBlocks(fd, off, length, first, block, flags) -> Promise<void>
 *     flags[i] = 1 when block i of [off, off+length) reads as all zeros, else 0. Block 0 is
 *     `first` bytes long, the others `block` bytes (the last may be shorter). A block's first
 *     PROBE bytes are read first: data that does not start with zeros costs that read only, so
 *     data copied after with copyRange is read from the cache about once.
 *
 *   copyData(fd, off, length, first, block, flags, outFd, outOff) -> Promise<void>
 *     zeroBlocks, then each run of blocks that are not all zero copied as copyRange copies, to
 *     the same place relative to outOff: one job for a file whose bytes lie at fixed offsets.
 *
 * Rejections are Errors with `code` (ENOSPC, EIO, ...) and `errno` set, as Node's fs errors.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <node_api.h>
#include <uv.h>

#define BUF_BYTES (1 << 20)
#define PROBE 4096

typedef struct {
  napi_async_work work;
  napi_deferred deferred;
  int in_fd, out_fd;
  int64_t in_off, out_off, length, first, block;
  napi_ref flags_ref;
  uint8_t *flags;
  size_t nflags;
  int err; /* errno of the failure, 0 on success */
} job_t;

static int all_zero(const uint8_t *p, size_t n) {
  return n == 0 || (p[0] == 0 && memcmp(p, p + 1, n - 1) == 0);
}

/* pread until n bytes or end of file; the bytes past the end are zeroed. -1 with errno on error. */
static int read_full(int fd, uint8_t *buf, size_t n, int64_t off) {
  size_t done = 0;
  while (done < n) {
    ssize_t r = pread(fd, buf + done, n - done, off + (int64_t)done);
    if (r < 0 && errno == EINTR) continue;
    if (r < 0) return -1;
    if (r == 0) {
      memset(buf + done, 0, n - done);
      break;
    }
    done += (size_t)r;
  }
  return 0;
}

static int write_full(int fd, const uint8_t *buf, size_t n, int64_t off) {
  size_t done = 0;
  while (done < n) {
    ssize_t w = pwrite(fd, buf + done, n - done, off + (int64_t)done);
    if (w < 0 && errno == EINTR) continue;
    if (w < 0) return -1;
    done += (size_t)w;
  }
  return 0;
}

/* pread/pwrite through a buffer: what copy_file_range cannot do. 0 or the errno. */
static int copy_buffered(int in_fd, int64_t in_off, int out_fd, int64_t out_off, int64_t length) {
  uint8_t *buf = malloc(BUF_BYTES);
  if (!buf) return ENOMEM;
  int err = 0;
  while (length > 0) {
    size_t n = length < BUF_BYTES ? (size_t)length : BUF_BYTES;
    if (read_full(in_fd, buf, n, in_off) != 0 || write_full(out_fd, buf, n, out_off) != 0) {
      err = errno;
      break;
    }
    in_off += (int64_t)n;
    out_off += (int64_t)n;
    length -= (int64_t)n;
  }
  free(buf);
  return err;
}

/* Copies [in_off, in_off+length) to out_off: copy_file_range, the rest buffered. 0 or the errno. */
static int copy_span(int in_fd, int64_t in_off, int out_fd, int64_t out_off, int64_t length) {
  while (length > 0) {
    loff_t in = in_off, out = out_off;
    size_t n = length > (1 << 30) ? (size_t)1 << 30 : (size_t)length;
    ssize_t r = copy_file_range(in_fd, &in, out_fd, &out, n, 0);
    if (r < 0 && errno == EINTR) continue;
    if (r < 0 && (errno == EXDEV || errno == EINVAL || errno == ENOSYS || errno == EOPNOTSUPP)) break;
    if (r < 0) return errno;
    if (r == 0) break; /* end of the input file: the buffered copy writes zeros */
    in_off += r;
    out_off += r;
    length -= r;
  }
  return length > 0 ? copy_buffered(in_fd, in_off, out_fd, out_off, length) : 0;
}

static void copy_execute(napi_env env, void *data) {
  job_t *j = data;
  j->err = copy_span(j->in_fd, j->in_off, j->out_fd, j->out_off, j->length);
}

/* Byte length of block i of the job's range (0 past its end). */
static int64_t block_len(const job_t *j, size_t i, int64_t *start) {
  int64_t s = i == 0 ? 0 : j->first + (int64_t)(i - 1) * j->block;
  int64_t len = i == 0 ? j->first : j->block;
  if (s >= j->length) return 0;
  if (len > j->length - s) len = j->length - s;
  *start = s;
  return len;
}

/* Fills the job's flags (zeroBlocks). 0 or the errno. */
static int scan(job_t *j) {
  size_t cap = j->block > j->first ? (size_t)j->block : (size_t)j->first;
  if (cap > BUF_BYTES) cap = BUF_BYTES;
  uint8_t *buf = malloc(cap);
  if (!buf) return ENOMEM;
  int64_t rel = 0;
  for (size_t i = 0; i < j->nflags; i++) {
    int64_t len = block_len(j, i, &rel);
    if (len == 0) break;
    int64_t pos = j->in_off + rel;
    int zero = 1;
    int64_t at = pos;
    size_t step = PROBE; /* the probe, then whole buffers */
    while (zero && at < pos + len) {
      size_t n = (size_t)(pos + len - at) < step ? (size_t)(pos + len - at) : step;
      if (read_full(j->in_fd, buf, n, at) != 0) {
        int e = errno;
        free(buf);
        return e;
      }
      zero = all_zero(buf, n);
      at += (int64_t)n;
      step = cap;
    }
    j->flags[i] = (uint8_t)zero;
  }
  free(buf);
  return 0;
}

static void zero_execute(napi_env env, void *data) {
  job_t *j = data;
  j->err = scan(j);
}

/* copyData: scan, then copy each run of blocks that are not all zero. */
static void data_execute(napi_env env, void *data) {
  job_t *j = data;
  if ((j->err = scan(j)) != 0) return;
  int64_t run = -1, end = 0, rel = 0;
  for (size_t i = 0; i <= j->nflags; i++) {
    int64_t len = i < j->nflags ? block_len(j, i, &rel) : 0;
    if (len > 0 && !j->flags[i]) {
      if (run < 0) run = rel;
      end = rel + len;
      continue;
    }
    if (run >= 0 && (j->err = copy_span(j->in_fd, j->in_off + run, j->out_fd, j->out_off + run, end - run)) != 0) return;
    run = -1;
    if (len == 0) break;
  }
}

static void complete(napi_env env, napi_status status, void *data) {
  job_t *j = data;
  if (j->flags_ref) napi_delete_reference(env, j->flags_ref);
  if (status == napi_ok && j->err == 0) {
    napi_value undef;
    napi_get_undefined(env, &undef);
    napi_resolve_deferred(env, j->deferred, undef);
  } else {
    int e = j->err ? j->err : EIO;
    napi_value msg, code, err, no;
    napi_create_string_utf8(env, strerror(e), NAPI_AUTO_LENGTH, &msg);
    napi_create_string_utf8(env, uv_err_name(-e), NAPI_AUTO_LENGTH, &code);
    napi_create_error(env, code, msg, &err);
    napi_set_named_property(env, err, "code", code);
    napi_create_int32(env, -e, &no);
    napi_set_named_property(env, err, "errno", no);
    napi_reject_deferred(env, j->deferred, err);
  }
  napi_delete_async_work(env, j->work);
  free(j);
}

static napi_value start(napi_env env, job_t *j, const char *name, napi_async_execute_callback exec) {
  napi_value promise, resource;
  napi_create_promise(env, &j->deferred, &promise);
  napi_create_string_utf8(env, name, NAPI_AUTO_LENGTH, &resource);
  napi_create_async_work(env, NULL, resource, exec, complete, j, &j->work);
  napi_queue_async_work(env, j->work);
  return promise;
}

static int get_args(napi_env env, napi_callback_info info, size_t want, napi_value *argv) {
  size_t argc = want;
  return napi_get_cb_info(env, info, &argc, argv, NULL, NULL) == napi_ok && argc == want ? 0 : -1;
}

static int get_i64(napi_env env, napi_value v, int64_t *out) {
  return napi_get_value_int64(env, v, out) == napi_ok && *out >= 0 ? 0 : -1;
}

static napi_value copy_range(napi_env env, napi_callback_info info) {
  napi_value argv[5];
  job_t *j = calloc(1, sizeof *j);
  if (!j || get_args(env, info, 5, argv) != 0 || napi_get_value_int32(env, argv[0], &j->in_fd) != napi_ok ||
      get_i64(env, argv[1], &j->in_off) != 0 || napi_get_value_int32(env, argv[2], &j->out_fd) != napi_ok ||
      get_i64(env, argv[3], &j->out_off) != 0 || get_i64(env, argv[4], &j->length) != 0) {
    free(j);
    napi_throw_type_error(env, NULL, "copyRange(inFd, inOffset, outFd, outOffset, length)");
    return NULL;
  }
  return start(env, j, "tandem.copyRange", copy_execute);
}

/* (fd, offset, length, first, block, flags) from argv[0..5]; with `out`, (.., outFd, outOffset) after them. */
static job_t *block_job(napi_env env, napi_callback_info info, int out) {
  napi_value argv[8];
  size_t want = out ? 8 : 6;
  job_t *j = calloc(1, sizeof *j);
  napi_typedarray_type type;
  void *flags = NULL;
  size_t n = 0;
  if (!j || get_args(env, info, want, argv) != 0 || napi_get_value_int32(env, argv[0], &j->in_fd) != napi_ok ||
      get_i64(env, argv[1], &j->in_off) != 0 || get_i64(env, argv[2], &j->length) != 0 || get_i64(env, argv[3], &j->first) != 0 ||
      get_i64(env, argv[4], &j->block) != 0 || j->first == 0 || j->block == 0 ||
      napi_get_typedarray_info(env, argv[5], &type, &n, &flags, NULL, NULL) != napi_ok || type != napi_uint8_array ||
      (out && (napi_get_value_int32(env, argv[6], &j->out_fd) != napi_ok || get_i64(env, argv[7], &j->out_off) != 0))) {
    free(j);
    return NULL;
  }
  j->flags = flags;
  j->nflags = n;
  napi_create_reference(env, argv[5], 1, &j->flags_ref);
  return j;
}

/* zeroBlocks, or copyData when the function's data is non-NULL. */
static napi_value block_fn(napi_env env, napi_callback_info info) {
  void *copy = NULL;
  napi_get_cb_info(env, info, NULL, NULL, NULL, &copy);
  job_t *j = block_job(env, info, copy != NULL);
  if (!j) {
    napi_throw_type_error(env, NULL, copy ? "copyData(fd, offset, length, first, block, flags: Uint8Array, outFd, outOffset)" : "zeroBlocks(fd, offset, length, first, block, flags: Uint8Array)");
    return NULL;
  }
  return copy ? start(env, j, "tandem.copyData", data_execute) : start(env, j, "tandem.zeroBlocks", zero_execute);
}

void copy_range_register(napi_env env, napi_value exports) {
  napi_property_descriptor props[] = {
    {"copyRange", NULL, copy_range, NULL, NULL, NULL, napi_default, NULL},
    {"zeroBlocks", NULL, block_fn, NULL, NULL, NULL, napi_default, NULL},
    {"copyData", NULL, block_fn, NULL, NULL, NULL, napi_default, (void *)1},
  };
  napi_define_properties(env, exports, sizeof props / sizeof props[0], props);
}
