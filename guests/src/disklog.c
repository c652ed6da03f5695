/* disklog: an append-only log on the VM's disk, as a database keeps its journal. Record n (n = 1,
 * 2, …) is block FIRST_LBA + n - 1: the magic "DLOG", n, then a pattern of n. After every 8 records a
 * SYNCHRONIZE CACHE, then "disklog: synced n" on the console: records 1..n are on stable storage.
 * At start it reads the log to its end (the first block that is not record n) and appends after
 * it, printing "disklog: resumed after n": a VM restarted elsewhere shows what survived. It runs
 * until the disk is full, then exits 0; a failed request exits 3. */
#include <stdint.h>
#include "hba.h"
#include "rt.h"

#define FIRST_LBA 2048
#define MAGIC 0x474f4c44u /* "DLOG" little-endian */
#define WORDS (HBA_BLOCK / 4)
#define SCAN_BLOCKS 16
#define SYNC_EVERY 8

static uint32_t block[WORDS];
static uint32_t scan[SCAN_BLOCKS * WORDS];

static uint32_t pattern(uint32_t n, uint32_t i) { return (n * 2654435761u) ^ (i * 40503u) ^ 0x5a5a5a5au; }

static int is_record(const uint32_t *w, uint32_t n) {
  if (w[0] != MAGIC || w[1] != n) return 0;
  for (uint32_t i = 2; i < WORDS; i++)
    if (w[i] != pattern(n, i)) return 0;
  return 1;
}

int main(void) {
  uint32_t capacity = hba_init();
  if (capacity <= FIRST_LBA) {
    rt_puts("disklog: disk too small\n");
    return 2;
  }
  uint32_t last = 0; /* the last record found */
  for (int end = 0; !end;) {
    uint32_t lba = FIRST_LBA + last;
    uint32_t blocks = capacity - lba < SCAN_BLOCKS ? capacity - lba : SCAN_BLOCKS;
    if (blocks == 0) break;
    if (hba_cdb10(0x28, lba, blocks, 2, scan)) return 3;
    for (uint32_t b = 0; b < blocks && !end; b++) {
      if (is_record(scan + b * WORDS, last + 1)) last++;
      else end = 1;
    }
    if (blocks < SCAN_BLOCKS) end = 1;
  }
  rt_puts("disklog: resumed after ");
  rt_put_dec(last);
  rt_putc('\n');
  for (uint32_t n = last + 1; FIRST_LBA + n - 1 < capacity; n++) {
    block[0] = MAGIC;
    block[1] = n;
    for (uint32_t i = 2; i < WORDS; i++) block[i] = pattern(n, i);
    if (hba_cdb10(0x2a, FIRST_LBA + n - 1, 1, 1, block)) return 3;
    if (n % SYNC_EVERY == 0) {
      if (hba_cdb10(0x35, 0, 0, 0, 0)) return 3;
      rt_puts("disklog: synced ");
      rt_put_dec(n);
      rt_putc('\n');
    }
  }
  rt_puts("disklog: disk full\n");
  return 0;
}
