#include "hba.h"
#include "rt.h"

#define SLOTS 8

struct slot {
  uint8_t cdb[16];
  uint32_t data_addr, data_len;
  uint8_t cdb_len, dir, reserved[2];
  uint8_t status, done;
  uint16_t sense_len;
  uint8_t sense[32];
};

static struct slot ring[SLOTS] __attribute__((aligned(64)));
static uint32_t submitted;

uint32_t hba_init(void) {
  MMIO32(HBA + 0x00) = (uint32_t)(uintptr_t)ring;
  MMIO32(HBA + 0x04) = SLOTS;
  __asm__ volatile(CSR_ASM("csrs mie, %0") ::"r"(1u << 11)); /* MEIE; WFI wakes on it, no trap taken */
  return MMIO32(HBA + 0x14);
}

int hba_cdb10(uint8_t op, uint32_t lba, uint32_t blocks, int dir, void *data) {
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
  s->data_addr = (uint32_t)(uintptr_t)data;
  s->data_len = blocks * HBA_BLOCK;
  s->done = 0;
  submitted++;
  MMIO32(HBA + 0x08) = submitted;
  while (MMIO32(HBA + 0x0c) != submitted) rt_wfi();
  MMIO32(HBA + 0x10) = 1; /* acknowledge the interrupt */
  if (s->status != 0) {
    rt_puts("hba: SCSI status ");
    rt_put_hex(s->status);
    rt_puts(" sense ");
    rt_put_hex(((uint32_t)s->sense[2] << 16) | ((uint32_t)s->sense[12] << 8) | s->sense[13]);
    rt_putc('\n');
  }
  return s->status;
}
