/* ticker: takes timer interrupts every 200 microseconds while it works, reads time, entropy and
 * the clock, and runs until 10^8 instructions have retired. Two plain runs differ; a replay of a
 * recorded run ends exactly as the recording did. */
#include <stdint.h>
#include "rt.h"

#define PERIOD 2000u /* mtime ticks: 200 us at 10 MHz */
#define INSTRUCTIONS 100000000u

static volatile uint32_t ticks;
static volatile uint32_t tick_mix;
static uint64_t next;

static void on_interrupt(uint32_t cause) {
  if (cause != 7) return;
  uint64_t now = rt_mtime();
  ticks++;
  tick_mix = tick_mix * 0x01000193u ^ (uint32_t)now;
  next += PERIOD;
  if (next <= now) next = now + PERIOD;
  rt_set_timer(next);
}

int main(void) {
  rt_on_interrupt = on_interrupt;
  next = rt_mtime() + PERIOD;
  rt_set_timer(next);
  rt_enable_irq(1u << 7);
  uint32_t work = 0x811c9dc5u, draws = 0, seed = rt_entropy();
  uint64_t started = rt_clock_ns();
  while (rt_instret() < INSTRUCTIONS) {
    for (int i = 0; i < 1000; i++) work = (work ^ (uint32_t)i) * 0x01000193u;
    if ((rt_instret() & 0x3ffff) < 4096) {
      seed ^= rt_entropy();
      draws++;
    }
  }
  __asm__ volatile(CSR_ASM("csrci mstatus, 8"));
  uint64_t took = rt_clock_ns() - started;
  rt_puts("ticker: ticks ");
  rt_put_dec(ticks);
  rt_puts(" draws ");
  rt_put_dec(draws);
  rt_puts(" mix ");
  rt_put_hex(tick_mix ^ seed ^ work);
  rt_puts(" ms ");
  rt_put_dec((uint32_t)(took / 1000000u));
  rt_putc('\n');
  return 0;
}
