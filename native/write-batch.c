/*
 * Many small writes in one thread-pool job (napi async work):
 *
 *   writeBatch(fds: Int32Array, offsets: Float64Array, bufs: Buffer[], errs: Int32Array) -> Promise<void>
 *     Writes bufs[i] whole at offsets[i] of fds[i], in the order given, then resolves; errs[i] is
 *     0 or the errno of write i (a failed write does not stop the others). The event loop goes on
 *     with the network meanwhile, and the second core does the copying into the page cache: what a
 *     target's writer threads do. One job per batch costs one hand-off where one job per write
 *     cost one each (~40 us).
 *
 *     The fds are the batch's own: duplicates made with dupFd when each write was queued, closed
 *     (each distinct one once) when the batch ends, or when the call is refused. So a file closed,
 *     and its number reused, between a write's queueing and its doing cannot receive another
 *     file's bytes. The buffers are held (a reference to `bufs`) until the job completes.
 *
 *   dupFd(fd) -> number
 *     fcntl(F_DUPFD_CLOEXEC): the duplicate, or -errno (-EBADF for a closed fd or -1).
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <stdint.h>
#include <stdlib.h>
#include <unistd.h>
#include <node_api.h>

typedef struct {
  const uint8_t *data;
  size_t length;
  int64_t offset;
} item_t;

typedef struct {
  napi_async_work work;
  napi_deferred deferred;
  napi_ref fds_ref, bufs_ref, errs_ref;
  const int32_t *fds; /* the batch's own duplicates */
  int32_t *errs;
  size_t n;
  item_t items[];
} batch_t;

static int write_all(int fd, const uint8_t *p, size_t n, int64_t off) {
  size_t done = 0;
  while (done < n) {
    ssize_t w = pwrite(fd, p + done, n - done, off + (int64_t)done);
    if (w < 0 && errno == EINTR) continue;
    if (w < 0) return errno;
    if (w == 0) return EIO;
    done += (size_t)w;
  }
  return 0;
}

static void execute(napi_env env, void *data) {
  (void)env;
  batch_t *b = data;
  for (size_t i = 0; i < b->n; i++) {
    item_t *it = &b->items[i];
    b->errs[i] = b->fds[i] < 0 ? EBADF : write_all(b->fds[i], it->data, it->length, it->offset);
  }
}

/* Closes each distinct fd of `fds` once (writes to one file share its duplicate). */
static void close_all(const int32_t *fds, size_t n) {
  for (size_t i = 0; i < n; i++) {
    int seen = fds[i] < 0;
    for (size_t k = 0; k < i && !seen; k++) seen = fds[k] == fds[i];
    if (!seen) close(fds[i]);
  }
}

static void complete(napi_env env, napi_status status, void *data) {
  batch_t *b = data;
  close_all(b->fds, b->n);
  if (status != napi_ok)
    for (size_t i = 0; i < b->n; i++) b->errs[i] = EIO;
  napi_delete_reference(env, b->fds_ref);
  napi_delete_reference(env, b->bufs_ref);
  napi_delete_reference(env, b->errs_ref);
  napi_value undef;
  napi_get_undefined(env, &undef);
  napi_resolve_deferred(env, b->deferred, undef);
  napi_delete_async_work(env, b->work);
  free(b);
}

static napi_value fail(napi_env env, const int32_t *fds, size_t n, batch_t *b) {
  if (fds) close_all(fds, n);
  free(b);
  napi_throw_type_error(env, NULL, "writeBatch(fds: Int32Array, offsets: Float64Array, bufs: Buffer[], errs: Int32Array), all of one length");
  return NULL;
}

static napi_value write_batch(napi_env env, napi_callback_info info) {
  napi_value argv[4];
  size_t argc = 4;
  napi_typedarray_type t0, t1, t3;
  size_t n = 0, n1 = 0, n3 = 0;
  void *fds = NULL, *offs = NULL, *errs = NULL;
  uint32_t nb = 0;
  bool is_array = false;
  if (napi_get_cb_info(env, info, &argc, argv, NULL, NULL) != napi_ok || argc != 4 ||
      napi_get_typedarray_info(env, argv[0], &t0, &n, &fds, NULL, NULL) != napi_ok || t0 != napi_int32_array ||
      napi_get_typedarray_info(env, argv[1], &t1, &n1, &offs, NULL, NULL) != napi_ok || t1 != napi_float64_array ||
      napi_is_array(env, argv[2], &is_array) != napi_ok || !is_array || napi_get_array_length(env, argv[2], &nb) != napi_ok ||
      napi_get_typedarray_info(env, argv[3], &t3, &n3, &errs, NULL, NULL) != napi_ok || t3 != napi_int32_array ||
      n1 != n || nb != n || n3 != n)
    return fail(env, t0 == napi_int32_array ? fds : NULL, n, NULL);
  batch_t *b = calloc(1, sizeof *b + n * sizeof(item_t));
  if (!b) return fail(env, fds, n, NULL);
  b->n = n;
  const double *off_in = offs;
  for (size_t i = 0; i < n; i++) {
    item_t *it = &b->items[i];
    napi_value buf;
    bool is_buf = false;
    void *p = NULL;
    size_t len = 0;
    double off = off_in[i];
    if (napi_get_element(env, argv[2], (uint32_t)i, &buf) != napi_ok || napi_is_buffer(env, buf, &is_buf) != napi_ok || !is_buf ||
        napi_get_buffer_info(env, buf, &p, &len) != napi_ok || !(off >= 0 && off <= 9007199254740991.0))
      return fail(env, fds, n, b);
    it->data = p;
    it->length = len;
    it->offset = (int64_t)off;
  }
  b->fds = fds;
  b->errs = errs;
  napi_create_reference(env, argv[0], 1, &b->fds_ref);
  napi_create_reference(env, argv[2], 1, &b->bufs_ref);
  napi_create_reference(env, argv[3], 1, &b->errs_ref);
  napi_value promise, resource;
  napi_create_promise(env, &b->deferred, &promise);
  napi_create_string_utf8(env, "tandem.writeBatch", NAPI_AUTO_LENGTH, &resource);
  napi_create_async_work(env, NULL, resource, execute, complete, b, &b->work);
  napi_queue_async_work(env, b->work);
  return promise;
}

static napi_value dup_fd(napi_env env, napi_callback_info info) {
  napi_value argv[1], out;
  size_t argc = 1;
  int32_t fd;
  if (napi_get_cb_info(env, info, &argc, argv, NULL, NULL) != napi_ok || argc != 1 || napi_get_value_int32(env, argv[0], &fd) != napi_ok) {
    napi_throw_type_error(env, NULL, "dupFd(fd)");
    return NULL;
  }
  int d = fd < 0 ? -EBADF : fcntl(fd, F_DUPFD_CLOEXEC, 0);
  napi_create_int32(env, d < 0 && fd >= 0 ? -errno : d, &out);
  return out;
}

void write_batch_register(napi_env env, napi_value exports) {
  napi_property_descriptor props[] = {
    {"writeBatch", NULL, write_batch, NULL, NULL, NULL, napi_default, NULL},
    {"dupFd", NULL, dup_fd, NULL, NULL, NULL, napi_default, NULL},
  };
  napi_define_properties(env, exports, sizeof props / sizeof props[0], props);
}
