/* cpu: CPU-bound work (sieve, matrix product, CRC-32, 64-bit arithmetic, division), then one
 * checksum line per part. The same source built for the host prints the same lines.
 * cpu10 (-DCPU_ROUNDS=10): the same work ten times over (635 M instructions, a line per part and
 * round), for throughput measured over a run long enough that start-up does not weigh. */
#include <stdint.h>
#include "rt.h"

#define SIEVE_N 300000
#define MAT 48
#define CRC_BYTES (96 * 1024)

static uint8_t composite[SIEVE_N + 1];
static int32_t a[MAT][MAT], b[MAT][MAT], c[MAT][MAT];
static uint8_t data[CRC_BYTES];

static uint32_t lcg_state = 12345;
static uint32_t lcg(void) {
  lcg_state = lcg_state * 1103515245u + 12345u;
  return lcg_state >> 1;
}

static uint32_t sieve(void) {
  uint32_t count = 0;
  for (uint32_t i = 2; i <= SIEVE_N; i++) {
    if (composite[i]) continue;
    count++;
    for (uint32_t j = i * 2; j <= SIEVE_N; j += i) composite[j] = 1;
  }
  return count;
}

static uint32_t matrix(void) {
  for (int i = 0; i < MAT; i++)
    for (int j = 0; j < MAT; j++) {
      a[i][j] = (int32_t)(lcg() % 2001) - 1000;
      b[i][j] = (int32_t)(lcg() % 2001) - 1000;
    }
  uint32_t sum = 0;
  for (int round = 0; round < 6; round++) {
    for (int i = 0; i < MAT; i++)
      for (int j = 0; j < MAT; j++) {
        int32_t s = 0;
        for (int k = 0; k < MAT; k++) s += a[i][k] * b[k][j];
        c[i][j] = s;
      }
    for (int i = 0; i < MAT; i++)
      for (int j = 0; j < MAT; j++) {
        sum = sum * 31u + (uint32_t)c[i][j];
        a[i][j] = c[i][j] % 1009;
      }
  }
  return sum;
}

static uint32_t crc32(void) {
  for (uint32_t i = 0; i < CRC_BYTES; i++) data[i] = (uint8_t)lcg();
  uint32_t crc = 0xffffffffu;
  for (int pass = 0; pass < 4; pass++)
    for (uint32_t i = 0; i < CRC_BYTES; i++) {
      crc ^= data[i];
      for (int k = 0; k < 8; k++) crc = (crc >> 1) ^ (0xedb88320u & (0u - (crc & 1)));
    }
  return ~crc;
}

static uint32_t wide(void) {
  uint64_t acc = 0x0123456789abcdefull;
  int64_t sacc = -7;
  for (uint32_t i = 1; i < 400000; i++) {
    acc = acc * 6364136223846793005ull + i;
    sacc = sacc * -3 + (int64_t)(acc >> 40) - (int64_t)i * 977;
    if (sacc > 1000000000000ll || sacc < -1000000000000ll) sacc /= 1013;
  }
  return (uint32_t)acc ^ (uint32_t)(acc >> 32) ^ (uint32_t)sacc;
}

static uint32_t divide(void) {
  uint32_t s = 0;
  int32_t t = 0;
  for (uint32_t i = 1; i < 300000; i++) {
    s += (i * 2654435761u) / (i | 1) + (i * 40503u) % 65521u;
    t += (int32_t)(i ^ 0x5555u) / -((int32_t)(i % 97) + 1) + (-(int32_t)i) % 13;
  }
  return s ^ (uint32_t)t;
}

#ifndef CPU_ROUNDS
#define CPU_ROUNDS 1
#endif

int main(void) {
#if CPU_ROUNDS > 1
  for (int round = 0; round < CPU_ROUNDS; round++) {
    for (uint32_t i = 0; i <= SIEVE_N; i++) composite[i] = 0;
#endif
  rt_puts("cpu: primes ");
  rt_put_dec(sieve());
  rt_puts("\ncpu: matrix ");
  rt_put_hex(matrix());
  rt_puts("\ncpu: crc32 ");
  rt_put_hex(crc32());
  rt_puts("\ncpu: wide ");
  rt_put_hex(wide());
  rt_puts("\ncpu: divide ");
  rt_put_hex(divide());
  rt_puts("\ncpu: done\n");
#if CPU_ROUNDS > 1
  }
#endif
  return 0;
}
