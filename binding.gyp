{
  "targets": [
    {
      "target_name": "tandem_native",
      "sources": ["native/ofd-lock.c"],
      "cflags": ["-Wall", "-Wextra", "-O2"]
    }
  ]
}
