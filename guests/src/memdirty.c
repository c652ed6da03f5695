/* memdirty: dirties memory at a set rate, in small in-place updates (one word in a page) and in
 * whole-page rewrites, in rounds; each round touches ROUND_PAGES pages chosen by an LCG in an
 * arena of ARENA_PAGES pages, a quarter of them rewritten whole. */
#include <stdint.h>
#include "rt.h"

#define PAGE 4096
#define ARENA_PAGES 1024 /* 4 MiB */
#define ROUNDS 64
#define ROUND_PAGES 48

static uint8_t arena[ARENA_PAGES * PAGE] __attribute__((aligned(PAGE)));

int main(void) {
  uint32_t x = 2463534242u, sum = 0, small = 0, whole = 0;
  for (int r = 0; r < ROUNDS; r++) {
    for (int k = 0; k < ROUND_PAGES; k++) {
      x ^= x << 13;
      x ^= x >> 17;
      x ^= x << 5;
      uint32_t page = x % ARENA_PAGES;
      uint32_t *p = (uint32_t *)(arena + page * PAGE);
      if ((x >> 20) % 4 == 0) {
        for (int i = 0; i < PAGE / 4; i++) p[i] = x + (uint32_t)i;
        whole++;
      } else {
        p[(x >> 8) % (PAGE / 4)] += x | 1;
        small++;
      }
    }
    for (int i = 0; i < 2000; i++) sum = sum * 33u + (uint32_t)i; /* some work between rounds */
  }
  for (uint32_t i = 0; i < sizeof arena / 4; i += 97) sum += ((uint32_t *)arena)[i];
  rt_puts("memdirty: small ");
  rt_put_dec(small);
  rt_puts(" whole ");
  rt_put_dec(whole);
  rt_puts(" sum ");
  rt_put_hex(sum);
  rt_putc('\n');
  return 0;
}
