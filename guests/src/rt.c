#include "rt.h"

void (*rt_on_interrupt)(uint32_t cause);

void rt_putc(int c) {
  while (!(MMIO8(UART + 5) & 0x20)) {
  }
  MMIO8(UART) = (uint8_t)c;
}

void rt_puts(const char *s) {
  while (*s) rt_putc(*s++);
}

void rt_put_hex(uint32_t v) {
  for (int i = 28; i >= 0; i -= 4) rt_putc("0123456789abcdef"[(v >> i) & 15]);
}

void rt_put_dec(uint32_t v) {
  char b[11];
  int n = 0;
  do {
    b[n++] = (char)('0' + v % 10);
    v /= 10;
  } while (v);
  while (n) rt_putc(b[--n]);
}

void rt_exit(int code) {
  MMIO32(FINISHER) = code == 0 ? 0x5555u : (((uint32_t)code << 16) | 0x3333u);
  for (;;) {
  }
}

uint64_t rt_mtime(void) {
  uint32_t hi, lo;
  do {
    hi = MMIO32(CLINT + 0xbffc);
    lo = MMIO32(CLINT + 0xbff8);
  } while (hi != MMIO32(CLINT + 0xbffc));
  return ((uint64_t)hi << 32) | lo;
}

void rt_set_timer(uint64_t when) {
  MMIO32(CLINT + 0x4004) = 0xffffffffu; /* no spurious interrupt while the halves change */
  MMIO32(CLINT + 0x4000) = (uint32_t)when;
  MMIO32(CLINT + 0x4004) = (uint32_t)(when >> 32);
}

uint32_t rt_entropy(void) { return MMIO32(ENTROPY); }

uint64_t rt_clock_ns(void) {
  uint32_t lo = MMIO32(ENTROPY + 4);
  uint32_t hi = MMIO32(ENTROPY + 8);
  return ((uint64_t)hi << 32) | lo;
}

uint32_t rt_instret(void) {
  uint32_t v;
  __asm__ volatile(CSR_ASM("csrr %0, minstret") : "=r"(v));
  return v;
}

void rt_trap(uint32_t mcause, uint32_t mepc, uint32_t mtval) {
  if ((int32_t)mcause < 0 && rt_on_interrupt) {
    rt_on_interrupt(mcause & 0x7fffffffu);
    return;
  }
  rt_puts("\ntrap: mcause ");
  rt_put_hex(mcause);
  rt_puts(" mepc ");
  rt_put_hex(mepc);
  rt_puts(" mtval ");
  rt_put_hex(mtval);
  rt_putc('\n');
  rt_exit(100 + (int)(mcause & 0xff));
}
