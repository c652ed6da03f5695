/* The Tandem guest runtime: console, exit, timer, entropy, clock (guests/SPEC: devices). */
#ifndef TANDEM_RT_H
#define TANDEM_RT_H
#include <stdint.h>

void rt_putc(int c);
void rt_puts(const char *s);
void rt_put_hex(uint32_t v);
void rt_put_dec(uint32_t v);
void rt_exit(int code) __attribute__((noreturn));

#ifdef TANDEM_GUEST
uint64_t rt_mtime(void);
void rt_set_timer(uint64_t when);
uint32_t rt_entropy(void);
uint64_t rt_clock_ns(void);
uint32_t rt_instret(void);
/* Called by the trap vector; guests set rt_on_interrupt to handle interrupts. */
extern void (*rt_on_interrupt)(uint32_t cause);
void rt_trap(uint32_t mcause, uint32_t mepc, uint32_t mtval);
/* Debian's gcc 12 builds rv32im without Zicsr in -march (multilib); the CSR instructions are enabled locally. */
#define CSR_ASM(insn) ".option push\n.option arch, +zicsr\n" insn "\n.option pop"
#define MMIO32(a) (*(volatile uint32_t *)(uintptr_t)(a))
#define MMIO8(a) (*(volatile uint8_t *)(uintptr_t)(a))
#define CLINT 0x02000000u
#define UART 0x10000000u
#define FINISHER 0x00100000u
#define ENTROPY 0x10001000u
#define HBA 0x10002000u
static inline void rt_enable_irq(uint32_t mie_bits) {
  __asm__ volatile(CSR_ASM("csrs mie, %0") ::"r"(mie_bits));
  __asm__ volatile(CSR_ASM("csrsi mstatus, 8"));
}
static inline void rt_wfi(void) { __asm__ volatile("wfi"); }
#endif
#endif
