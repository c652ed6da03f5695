/*
 * Open-file-description byte-range locks (fcntl F_OFD_SETLK / F_OFD_GETLK, Linux 3.15+), the
 * locks qemu takes on its image files (see src/disk-formats/image-lock.ts for the byte layout).
 * Node has no binding for them and fs-ext locks whole files with process-owned locks only.
 *
 *   setlk(fd, start, len, type) -> 0, or the errno (EAGAIN/EACCES: a conflicting lock is held)
 *   getlk(fd, start, len, type) -> the type of a conflicting lock, or F_UNLCK when there is none
 * type: 0 F_RDLCK, 1 F_WRLCK, 2 F_UNLCK (Linux values, checked below).
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <string.h>
#include <node_api.h>

#if F_RDLCK != 0 || F_WRLCK != 1 || F_UNLCK != 2
#error "lock type values differ from Linux's; map them here"
#endif

static int args(napi_env env, napi_callback_info info, struct flock *fl, int *fd) {
  size_t argc = 4;
  napi_value argv[4];
  int64_t start, len;
  int32_t type;
  if (napi_get_cb_info(env, info, &argc, argv, NULL, NULL) != napi_ok || argc != 4) return -1;
  if (napi_get_value_int32(env, argv[0], fd) != napi_ok) return -1;
  if (napi_get_value_int64(env, argv[1], &start) != napi_ok) return -1;
  if (napi_get_value_int64(env, argv[2], &len) != napi_ok) return -1;
  if (napi_get_value_int32(env, argv[3], &type) != napi_ok || type < 0 || type > 2) return -1;
  memset(fl, 0, sizeof *fl);
  fl->l_whence = SEEK_SET;
  fl->l_start = start;
  fl->l_len = len;
  fl->l_type = (short)type;
  return 0;
}

static napi_value result(napi_env env, int32_t v) {
  napi_value out;
  napi_create_int32(env, v, &out);
  return out;
}

static napi_value setlk(napi_env env, napi_callback_info info) {
  struct flock fl;
  int fd;
  if (args(env, info, &fl, &fd) != 0) {
    napi_throw_type_error(env, NULL, "setlk(fd, start, len, type)");
    return NULL;
  }
  return result(env, fcntl(fd, F_OFD_SETLK, &fl) == 0 ? 0 : errno);
}

static napi_value getlk(napi_env env, napi_callback_info info) {
  struct flock fl;
  int fd;
  if (args(env, info, &fl, &fd) != 0) {
    napi_throw_type_error(env, NULL, "getlk(fd, start, len, type)");
    return NULL;
  }
  if (fcntl(fd, F_OFD_GETLK, &fl) != 0) return result(env, -errno);
  return result(env, fl.l_type);
}

void ofd_lock_register(napi_env env, napi_value exports) {
  napi_property_descriptor props[] = {
    {"setlk", NULL, setlk, NULL, NULL, NULL, napi_default, NULL},
    {"getlk", NULL, getlk, NULL, NULL, NULL, napi_default, NULL},
  };
  napi_define_properties(env, exports, sizeof props / sizeof props[0], props);
}
