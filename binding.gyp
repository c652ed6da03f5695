{
  "targets": [
    {
      "target_name": "tandem_native",
      "sources": ["native/addon.c", "native/ofd-lock.c", "native/copy-range.c", "native/socket-filter.c", "native/write-batch.c"],
      "cflags": ["-Wall", "-Wextra", "-O2"]
    }
  ]
}
