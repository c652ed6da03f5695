/* diskio: writes patterns through the virtual SCSI HBA (WRITE(10)), reads them back (READ(10)),
 * verifies every byte, and prints a checksum. Completions arrive as an external interrupt,
 * waited for with WFI. */
#include <stdint.h>
#include "rt.h"

#define SLOTS 8
#define BLOCK 512
#define CHUNK_BLOCKS 16
#define CHUNKS 64 /* 64 x 8 KiB = 512 KiB, from LBA 2048 */
#define FIRST_LBA 2048

struct slot {
  uint8_t cdb[16];
  uint32_t data_addr, data_len;
  uint8_t cdb_len, dir, reserved[2];
  uint8_t status, done;
  uint16_t sense_len;
  uint8_t sense[32];
};

static struct slot ring[SLOTS] __attribute__((aligned(64)));
static uint8_t buf[CHUNK_BLOCKS * BLOCK];
static uint32_t submitted;

static uint32_t pattern(uint32_t lba, uint32_t i) { return (lba * 2654435761u) ^ (i * 40503u) ^ 0xa5a5a5a5u; }

static int scsi(uint8_t op, uint32_t lba, uint32_t blocks, int dir) {
  struct slot *s = &ring[submitted % SLOTS];
  for (int i = 0; i < 16; i++) s->cdb[i] = 0;
  s->cdb[0] = op;
  s->cdb[2] = (uint8_t)(lba >> 24);
  s->cdb[3] = (uint8_t)(lba >> 16);
  s->cdb[4] = (uint8_t)(lba >> 8);
  s->cdb[5] = (uint8_t)lba;
  s->cdb[7] = (uint8_t)(blocks >> 8);
  s->cdb[8] = (uint8_t)blocks;
  s->cdb_len = 10;
  s->dir = (uint8_t)dir;
  s->data_addr = (uint32_t)(uintptr_t)buf;
  s->data_len = blocks * BLOCK;
  s->done = 0;
  submitted++;
  MMIO32(HBA + 0x08) = submitted;
  while (MMIO32(HBA + 0x0c) != submitted) rt_wfi();
  MMIO32(HBA + 0x10) = 1; /* acknowledge the interrupt */
  if (s->status != 0) {
    rt_puts("diskio: SCSI status ");
    rt_put_hex(s->status);
    rt_puts(" sense ");
    rt_put_hex(((uint32_t)s->sense[2] << 16) | ((uint32_t)s->sense[12] << 8) | s->sense[13]);
    rt_putc('\n');
  }
  return s->status;
}

int main(void) {
  MMIO32(HBA + 0x00) = (uint32_t)(uintptr_t)ring;
  MMIO32(HBA + 0x04) = SLOTS;
  __asm__ volatile(CSR_ASM("csrs mie, %0") ::"r"(1u << 11)); /* MEIE; WFI wakes on it, no trap taken */
  uint32_t capacity = MMIO32(HBA + 0x14);
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
