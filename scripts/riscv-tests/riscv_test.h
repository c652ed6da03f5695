/*
 * Tandem's environment for riscv-tests' "p" ISA tests (rv32ui, rv32um): machine mode, no virtual
 * memory, the result written to the VM's test finisher (qemu virt's sifive_test, MMIO.FINISHER).
 * Written for Tandem from the macro names the tests use (isa/macros/scalar/test_macros.h):
 *   pass               exit code 0
 *   fail at test N     exit code 2N+1 (TESTNUM, gp, is the failing test's number)
 *   any trap           exit code 0x8000 | mcause (the tests themselves take none)
 */
#ifndef TANDEM_RISCV_TEST_H
#define TANDEM_RISCV_TEST_H

#define TANDEM_FINISHER 0x100000
#define TESTNUM gp

#define RVTEST_RV32U
#define RVTEST_RV64U

#define TANDEM_EXIT(code_reg) \
  slli code_reg, code_reg, 16; li t6, 0x3333; or code_reg, code_reg, t6; \
  li t6, TANDEM_FINISHER; sw code_reg, 0(t6); 1: j 1b

#define RVTEST_CODE_BEGIN \
  .section .text.init, "ax"; .align 2; .globl _start; \
_start: \
  la t0, tandem_trap; csrw mtvec, t0; li TESTNUM, 0; j tandem_tests; \
  .align 2; \
tandem_trap: \
  csrr t0, mcause; li t1, 0x7fff; and t0, t0, t1; li t1, 0x8000; or t0, t0, t1; \
  TANDEM_EXIT(t0); \
tandem_tests:

#define RVTEST_CODE_END unimp

#define RVTEST_PASS \
  fence; li t0, 0x5555; li t6, TANDEM_FINISHER; sw t0, 0(t6); 1: j 1b

#define RVTEST_FAIL \
  fence; slli t0, TESTNUM, 1; ori t0, t0, 1; TANDEM_EXIT(t0)

#define RVTEST_DATA_BEGIN .data; .align 4; .global begin_signature; begin_signature:
#define RVTEST_DATA_END .align 4; .global end_signature; end_signature:

#endif
