/* The runtime for a guest's C source compiled for the host (differential tests). */
#include <stdio.h>
#include <stdlib.h>
#include "rt.h"

void rt_putc(int c) { putchar(c); }
void rt_puts(const char *s) { fputs(s, stdout); }
void rt_put_hex(uint32_t v) { printf("%08x", v); }
void rt_put_dec(uint32_t v) { printf("%u", v); }
void rt_exit(int code) {
  fflush(stdout);
  exit(code);
}
