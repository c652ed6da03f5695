/* The virtual SCSI HBA from a guest (guests/SPEC: HBA): one request at a time through an 8-slot ring,
 * completion by external interrupt, waited for with WFI. */
#ifndef TANDEM_HBA_H
#define TANDEM_HBA_H
#include <stdint.h>

#define HBA_BLOCK 512
/* Sets up the ring and returns the disk's capacity in blocks. */
uint32_t hba_init(void);
/* Runs a 10-byte CDB: `op` READ(10)/WRITE(10)/SYNCHRONIZE CACHE(10) on [lba, lba+blocks) to or from
 * `data` (`dir` 1 = to the disk, 2 = from it, 0 = none). Prints the sense of a failure; returns the
 * SCSI status. */
int hba_cdb10(uint8_t op, uint32_t lba, uint32_t blocks, int dir, void *data);
#endif
