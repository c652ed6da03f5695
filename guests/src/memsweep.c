/* memsweep: small in-place updates across many pages, for 3 s of guest time: each sweep adds to one
 * word in each of SMALL_PAGES pages (the same word of a page every time: a change of one 64-byte
 * segment), rewrites WHOLE_PER_SWEEP pages of another arena whole, then works a while. Prints the
 * sweeps made (a throughput figure) and a checksum. The checkpoint bench's load (BENCH_ONLY=ft-checkpoint). */
#include <stdint.h>
#include "rt.h"

#define PAGE 4096
#define SMALL_PAGES 512 /* 2 MiB */
#define WHOLE_PAGES 64
#define WHOLE_PER_SWEEP 2
#define WORK 4000
#define SECONDS 3

static uint8_t small[SMALL_PAGES * PAGE] __attribute__((aligned(PAGE)));
static uint8_t whole[WHOLE_PAGES * PAGE] __attribute__((aligned(PAGE)));

int main(void) {
  uint64_t end = rt_mtime() + (uint64_t)SECONDS * 10000000u;
  uint32_t sweeps = 0, sum = 0, next = 0;
  while (rt_mtime() < end) {
    for (uint32_t p = 0; p < SMALL_PAGES; p++) ((uint32_t *)(small + p * PAGE))[(p * 13) % (PAGE / 4)] += sweeps | 1;
    for (int k = 0; k < WHOLE_PER_SWEEP; k++) {
      uint32_t *w = (uint32_t *)(whole + (next++ % WHOLE_PAGES) * PAGE);
      for (int i = 0; i < PAGE / 4; i++) w[i] = sweeps * 2654435761u + (uint32_t)i;
    }
    for (int i = 0; i < WORK; i++) sum = sum * 33u + (uint32_t)i;
    sweeps++;
  }
  for (uint32_t p = 0; p < SMALL_PAGES; p++) sum += ((uint32_t *)(small + p * PAGE))[(p * 13) % (PAGE / 4)];
  rt_puts("memsweep: sweeps ");
  rt_put_dec(sweeps);
  rt_puts(" sum ");
  rt_put_hex(sum);
  rt_putc('\n');
  return 0;
}
