/* The addon's entry: each native/*.c registers its functions (src/disk-formats/native.ts types them). */
#include <node_api.h>

void ofd_lock_register(napi_env env, napi_value exports);
void copy_range_register(napi_env env, napi_value exports);
void socket_filter_register(napi_env env, napi_value exports);
void write_batch_register(napi_env env, napi_value exports);

static napi_value init(napi_env env, napi_value exports) {
  ofd_lock_register(env, exports);
  copy_range_register(env, exports);
  socket_filter_register(env, exports);
  write_batch_register(env, exports);
  return exports;
}

NAPI_MODULE(NODE_GYP_MODULE_NAME, init)
