#!/usr/bin/env bash
# Builds the VM guests (guests/*.elf) from guests/src with Debian's riscv64-unknown-elf-gcc
# (package gcc-riscv64-unknown-elf). The built images are committed, so tests need no cross
# compiler; run this after changing a guest and commit the result.
set -euo pipefail
cd "$(dirname "$0")/../guests"
CC=${CC:-riscv64-unknown-elf-gcc}
if ! command -v "$CC" >/dev/null; then
  echo "build-guests: $CC not found (apt-get install gcc-riscv64-unknown-elf)" >&2
  exit 1
fi
CFLAGS=(-march=rv32im -mabi=ilp32 -O2 -ffreestanding -nostdlib -fno-builtin -fno-pic -mcmodel=medany
  -Wall -Wextra -Werror -DTANDEM_GUEST -ffunction-sections -fdata-sections)
# objects in a fixed folder, so the images are byte-for-byte reproducible (no temporary names)
OBJ=$(mktemp -d)
trap 'rm -rf "$OBJ"' EXIT
mkdir -p "$OBJ/o"
cp src/*.S src/*.c src/*.h "$OBJ/o/"
cd "$OBJ/o"
for f in crt0.S rt.c hba.c cpu.c memdirty.c diskio.c disklog.c ticker.c kvstore.c memsweep.c; do
  "$CC" "${CFLAGS[@]}" -c -o "${f%.*}.o" "$f"
done
# noisy: kvstore with entropy in its replies (-DNOISY); cpu10: cpu's work ten times (-DCPU_ROUNDS=10)
"$CC" "${CFLAGS[@]}" -DNOISY -c -o noisy.o kvstore.c
"$CC" "${CFLAGS[@]}" -DCPU_ROUNDS=10 -c -o cpu10.o cpu.c
cd - >/dev/null
for g in cpu memdirty diskio disklog ticker kvstore noisy memsweep cpu10; do
  "$CC" "${CFLAGS[@]}" -T src/link.ld -Wl,--gc-sections -Wl,--build-id=none -Wl,--no-warn-rwx-segments \
    -o "$g.elf" "$OBJ/o/crt0.o" "$OBJ/o/rt.o" "$OBJ/o/hba.o" "$OBJ/o/$g.o" -lgcc
  echo "build-guests: $g.elf ($(stat -c %s "$g.elf") bytes, sha256 $(sha256sum "$g.elf" | cut -c1-16))"
done
