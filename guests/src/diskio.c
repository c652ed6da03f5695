/* diskio: writes patterns through the virtual SCSI HBA (WRITE(10)), reads them back (READ(10)),
 * verifies every byte, and prints a checksum. Completions arrive as an external interrupt,
 * waited for with WFI. */
#include <stdint.h>
#include "hba.h"
#include "rt.h"

#define CHUNK_BLOCKS 16
#define CHUNKS 64 /* 64 x 8 KiB = 512 KiB, from LBA 2048 */
#define FIRST_LBA 2048

static uint8_t buf[CHUNK_BLOCKS * HBA_BLOCK];

static uint32_t pattern(uint32_t lba, uint32_t i) { return (lba * 2654435761u) ^ (i * 40503u) ^ 0xa5a5a5a5u; }

static int scsi(uint8_t op, uint32_t lba, uint32_t blocks, int dir) { return hba_cdb10(op, lba, blocks, dir, buf); }

int main(void) {
  uint32_t capacity = hba_init();
  rt_puts("diskio: capacity ");
  rt_put_dec(capacity);
  rt_puts(" blocks\n");
  if (capacity < FIRST_LBA + CHUNKS * CHUNK_BLOCKS) {
    rt_puts("diskio: disk too small\n");
    return 2;
  }
  uint32_t sum = 0;
  for (uint32_t c = 0; c < CHUNKS; c++) {
    uint32_t lba = FIRST_LBA + c * CHUNK_BLOCKS;
    uint32_t *w = (uint32_t *)buf;
    for (uint32_t i = 0; i < sizeof buf / 4; i++) w[i] = pattern(lba, i);
    if (scsi(0x2a, lba, CHUNK_BLOCKS, 1)) return 3;
  }
  if (scsi(0x35, 0, 0, 0)) return 3; /* SYNCHRONIZE CACHE(10) */
  for (uint32_t c = 0; c < CHUNKS; c++) {
    uint32_t lba = FIRST_LBA + c * CHUNK_BLOCKS;
    for (uint32_t i = 0; i < sizeof buf; i++) buf[i] = 0;
    if (scsi(0x28, lba, CHUNK_BLOCKS, 2)) return 3;
    uint32_t *w = (uint32_t *)buf;
    for (uint32_t i = 0; i < sizeof buf / 4; i++) {
      if (w[i] != pattern(lba, i)) {
        rt_puts("diskio: MISMATCH at lba ");
        rt_put_dec(lba + i / 128);
        rt_putc('\n');
        return 1;
      }
      sum = sum * 31u + w[i];
    }
  }
  rt_puts("diskio: wrote and verified ");
  rt_put_dec(CHUNKS * CHUNK_BLOCKS);
  rt_puts(" blocks, checksum ");
  rt_put_hex(sum);
  rt_putc('\n');
  return 0;
}
