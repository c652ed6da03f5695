/*
 * Classic BPF socket filters (SO_ATTACH_FILTER, socket(7)): the kernel runs the program on each
 * datagram before it is queued to the socket, so what it drops never reaches Node. The program is
 * built in TypeScript (src/client/net/kernel-drop.ts); this only hands it to the kernel.
 *
 *   setSocketFilter(fd, program) -> 0, or the errno
 * program: a Buffer of struct sock_filter (8 bytes each: u16 code, u8 jt, u8 jf, u32 k, in this
 * machine's byte order); an empty Buffer detaches the socket's filter (none attached: 0).
 */
#include <errno.h>
#include <linux/filter.h>
#include <sys/socket.h>
#include <node_api.h>

static napi_value set_socket_filter(napi_env env, napi_callback_info info) {
  size_t argc = 2;
  napi_value argv[2], out;
  int32_t fd;
  void *data = NULL;
  size_t len = 0;
  bool is_buffer = false;
  if (napi_get_cb_info(env, info, &argc, argv, NULL, NULL) != napi_ok || argc != 2 ||
      napi_get_value_int32(env, argv[0], &fd) != napi_ok ||
      napi_is_buffer(env, argv[1], &is_buffer) != napi_ok || !is_buffer ||
      napi_get_buffer_info(env, argv[1], &data, &len) != napi_ok || len % sizeof(struct sock_filter) != 0 ||
      len / sizeof(struct sock_filter) > BPF_MAXINSNS) {
    napi_throw_type_error(env, NULL, "setSocketFilter(fd, program): program is a Buffer of struct sock_filter");
    return NULL;
  }
  int r;
  if (len == 0) {
    int none = 0;
    r = setsockopt(fd, SOL_SOCKET, SO_DETACH_FILTER, &none, sizeof none);
    if (r != 0 && errno == ENOENT) r = 0;
  } else {
    struct sock_fprog prog = { .len = (unsigned short)(len / sizeof(struct sock_filter)), .filter = (struct sock_filter *)data };
    r = setsockopt(fd, SOL_SOCKET, SO_ATTACH_FILTER, &prog, sizeof prog);
  }
  napi_create_int32(env, r == 0 ? 0 : errno, &out);
  return out;
}

void socket_filter_register(napi_env env, napi_value exports) {
  napi_value fn;
  napi_create_function(env, "setSocketFilter", NAPI_AUTO_LENGTH, set_socket_filter, NULL, &fn);
  napi_set_named_property(env, exports, "setSocketFilter", fn);
}
