/* kvstore: a key-value server on the virtual NIC. Each request is one Ethernet frame of
 * EtherType 0x88b5 whose payload is text: "SET key value", "GET key", "DEL key", "COUNT" or
 * "QUIT"; the reply goes back to the sender: "OK", "VALUE value", "NOTFOUND", "COUNT n",
 * "ERR reason" or "BYE" (then the guest exits). Frames arrive in an 8-slot receive ring, replies
 * leave through a 4-slot transmit ring; the guest waits for frames with WFI.
 * Built with -DNOISY it is the `noisy` guest: each reply ends with a NUL and 8 hex digits of
 * entropy (a nonce a client ignores: its text ends at the NUL), so no two runs answer alike — the
 * quasi-lockstep pair's forced divergence. */
#include <stdint.h>
#include "rt.h"

#define NIC 0x10003000u
#define ETHERTYPE 0x88b5
#define SLOTS 1024
#define KEY_MAX 32
#define VAL_MAX 128

struct entry {
  uint8_t used, klen, vlen, pad;
  char key[KEY_MAX];
  char val[VAL_MAX];
};

/* NIC descriptor rings (guests/SPEC: NIC): 16 bytes each, {address, length, filled length, flags} */
struct desc {
  uint32_t addr, len, filled, flags;
};
#define RX_SLOTS 8
#define TX_SLOTS 4
static struct desc rx_ring[RX_SLOTS] __attribute__((aligned(16)));
static struct desc tx_ring[TX_SLOTS] __attribute__((aligned(16)));
static uint8_t rx_buf[RX_SLOTS][2048] __attribute__((aligned(4)));
static uint8_t tx_buf[TX_SLOTS][2048] __attribute__((aligned(4)));
static uint8_t *tx;
static uint32_t rx_posted, rx_seen, tx_posted;

static struct entry table[SLOTS];
static uint8_t mac[6];
static uint32_t count;

static uint32_t hash(const char *k, uint32_t n) {
  uint32_t h = 2166136261u;
  for (uint32_t i = 0; i < n; i++) h = (h ^ (uint8_t)k[i]) * 16777619u;
  return h;
}

static int same(const struct entry *e, const char *k, uint32_t n) {
  if (e->klen != n) return 0;
  for (uint32_t i = 0; i < n; i++)
    if (e->key[i] != k[i]) return 0;
  return 1;
}

/* the slot holding key, or the first free one on its probe path; -1 when full */
static int find(const char *k, uint32_t n, int *found) {
  uint32_t h = hash(k, n);
  int free_slot = -1;
  for (uint32_t i = 0; i < SLOTS; i++) {
    uint32_t s = (h + i) % SLOTS;
    if (table[s].used == 1 && same(&table[s], k, n)) {
      *found = 1;
      return (int)s;
    }
    if (table[s].used != 1 && free_slot < 0) free_slot = (int)s;
    if (table[s].used == 0) break;
  }
  *found = 0;
  return free_slot;
}

static uint32_t reply_len;
static void reply(const char *s, const char *extra, uint32_t extra_len) {
  uint32_t n = 14;
  while (*s) tx[n++] = (uint8_t)*s++;
  for (uint32_t i = 0; i < extra_len; i++) tx[n++] = (uint8_t)extra[i];
#ifdef NOISY
  uint32_t nonce = rt_entropy();
  tx[n++] = 0;
  for (int k = 28; k >= 0; k -= 4) tx[n++] = (uint8_t)"0123456789abcdef"[(nonce >> k) & 15];
#endif
  reply_len = n;
}

static void put_dec(uint32_t v, char *out, uint32_t *n) {
  char b[11];
  int k = 0;
  do {
    b[k++] = (char)('0' + v % 10);
    v /= 10;
  } while (v);
  while (k) out[(*n)++] = b[--k];
}

static int handle(const char *p, uint32_t len) {
  uint32_t i = 0;
  while (i < len && p[i] != ' ') i++;
  const char *cmd = p;
  uint32_t clen = i;
  const char *key = p + i + 1;
  uint32_t klen = 0;
  if (i < len) {
    i++;
    while (i < len && p[i] != ' ') i++, klen++;
  }
  const char *val = p + i + 1;
  uint32_t vlen = i < len ? len - i - 1 : 0;
  int found;
  if (clen == 4 && cmd[0] == 'Q' && cmd[1] == 'U' && cmd[2] == 'I' && cmd[3] == 'T') {
    reply("BYE", 0, 0);
    return 1;
  }
  if (clen == 5 && cmd[0] == 'C' && cmd[1] == 'O') {
    char b[12];
    uint32_t n = 0;
    put_dec(count, b, &n);
    reply("COUNT ", b, n);
    return 0;
  }
  if (klen == 0 || klen > KEY_MAX) {
    reply("ERR key must be 1 to 32 bytes", 0, 0);
    return 0;
  }
  if (clen == 3 && cmd[0] == 'S' && cmd[1] == 'E' && cmd[2] == 'T') {
    if (vlen > VAL_MAX) {
      reply("ERR value longer than 128 bytes", 0, 0);
      return 0;
    }
    int s = find(key, klen, &found);
    if (s < 0) {
      reply("ERR full", 0, 0);
      return 0;
    }
    struct entry *e = &table[s];
    if (!found) count++;
    e->used = 1;
    e->klen = (uint8_t)klen;
    e->vlen = (uint8_t)vlen;
    for (uint32_t k = 0; k < klen; k++) e->key[k] = key[k];
    for (uint32_t k = 0; k < vlen; k++) e->val[k] = val[k];
    reply("OK", 0, 0);
  } else if (clen == 3 && cmd[0] == 'G' && cmd[1] == 'E' && cmd[2] == 'T') {
    int s = find(key, klen, &found);
    if (found) reply("VALUE ", table[s].val, table[s].vlen);
    else reply("NOTFOUND", 0, 0);
  } else if (clen == 3 && cmd[0] == 'D' && cmd[1] == 'E' && cmd[2] == 'L') {
    int s = find(key, klen, &found);
    if (found) {
      table[s].used = 2; /* a tombstone keeps later keys on the probe path reachable */
      count--;
      reply("OK", 0, 0);
    } else reply("NOTFOUND", 0, 0);
  } else {
    reply("ERR unknown command", 0, 0);
  }
  return 0;
}

int main(void) {
  uint32_t lo = MMIO32(NIC + 0x00), hi = MMIO32(NIC + 0x04);
  for (int i = 0; i < 4; i++) mac[i] = (uint8_t)(lo >> (8 * i));
  mac[4] = (uint8_t)hi;
  mac[5] = (uint8_t)(hi >> 8);
  for (int i = 0; i < RX_SLOTS; i++) {
    rx_ring[i].addr = (uint32_t)(uintptr_t)rx_buf[i];
    rx_ring[i].len = sizeof rx_buf[i];
  }
  MMIO32(NIC + 0x08) = (uint32_t)(uintptr_t)tx_ring;
  MMIO32(NIC + 0x0c) = TX_SLOTS;
  MMIO32(NIC + 0x18) = (uint32_t)(uintptr_t)rx_ring;
  MMIO32(NIC + 0x1c) = RX_SLOTS;
  rx_posted = RX_SLOTS;
  MMIO32(NIC + 0x20) = rx_posted; /* every receive buffer posted */
  __asm__ volatile(CSR_ASM("csrs mie, %0") ::"r"(1u << 11));
  rt_puts("kvstore: listening\n");
  uint32_t requests = 0;
  int quit = 0;
  while (!quit) {
    while (MMIO32(NIC + 0x24) == rx_seen) rt_wfi();
    MMIO32(NIC + 0x28) = 1; /* acknowledge */
    while (!quit && rx_seen != MMIO32(NIC + 0x24)) {
      struct desc *d = &rx_ring[rx_seen % RX_SLOTS];
      const uint8_t *rx = (const uint8_t *)(uintptr_t)d->addr;
      uint32_t len = d->filled;
      rx_seen++;
      if (len >= 14 && rx[12] == (ETHERTYPE >> 8) && rx[13] == (ETHERTYPE & 0xff)) {
        requests++;
        struct desc *t = &tx_ring[tx_posted % TX_SLOTS];
        tx = tx_buf[tx_posted % TX_SLOTS];
        quit = handle((const char *)rx + 14, len - 14);
        for (int i = 0; i < 6; i++) {
          tx[i] = rx[6 + i];
          tx[6 + i] = mac[i];
        }
        tx[12] = ETHERTYPE >> 8;
        tx[13] = ETHERTYPE & 0xff;
        t->addr = (uint32_t)(uintptr_t)tx;
        t->len = reply_len;
        MMIO32(NIC + 0x10) = ++tx_posted; /* the reply leaves */
      }
      d->flags = 0;
      MMIO32(NIC + 0x20) = ++rx_posted; /* the buffer goes back to the NIC */
    }
  }
  rt_puts("kvstore: ");
  rt_put_dec(requests);
  rt_puts(" requests, ");
  rt_put_dec(count);
  rt_puts(" keys\n");
  return 0;
}
