#!/usr/bin/env bash
# Builds the sample drivers of samples/drivers/ with MinGW-w64 (Debian packages):
#
#   apt-get update && apt-get install -y gcc-mingw-w64-x86-64 gcc-mingw-w64-i686 binutils-mingw-w64
#
# The built files are committed, so the tests never need a cross compiler; run this only
# after changing a source under src/, then update ground_truth.json if tags changed and
# run `python -m pytest tests/test_drivers_samples.py`.
#
# Why the flags (see ../../../shared/DESIGN.md section 7 for the team's notes):
#   -shared -nostdlib                kernel images link no C runtime
#   -Wl,--subsystem,native           IMAGE_SUBSYSTEM_NATIVE, what a .sys declares
#   -Wl,--entry,DriverEntry          x64 entry; x86 stdcall decorates it _DriverEntry@8
#   -Wl,--no-insert-timestamp        byte-identical output on every rebuild
#   -Wl,--exclude-all-symbols        no export table (drivers rarely export anything)
#   -s                               no symbol table: the scanner must not need one
#   -O2                              the codegen analysts meet: arguments in registers,
#                                    `mov [rsp+N]`/`mov [esp+N]` stack arguments, import
#                                    addresses hoisted into a register and `call reg`
#   -fno-asynchronous-unwind-tables  (x86 only) no DWARF unwind data; x64 keeps its
#                                    .pdata, which the scanner uses for function starts
# ExAllocatePool2/3, ExFreePool2, FltMgr, VideoPort (x64), StorPort and WdfLdr have no MinGW
# import library: defs/*.def describe them and dlltool makes one (-k drops the x86
# @N stdcall suffix from the imported name, as Microsoft's import libraries do).
set -euo pipefail

HERE="$(cd "$(dirname "$0")" && pwd)"
cd "$HERE"
for tool in x86_64-w64-mingw32-gcc i686-w64-mingw32-gcc x86_64-w64-mingw32-dlltool \
    i686-w64-mingw32-dlltool; do
    command -v "$tool" >/dev/null || {
        echo "build.sh: $tool not found; install MinGW-w64 (see the top of this file)" >&2
        exit 1
    }
done

WORK="$(mktemp -d)"
trap 'rm -rf "$WORK"' EXIT
DDK=/usr/share/mingw-w64/include/ddk
CFLAGS=(-O2 -std=gnu99 -Wall -Werror -Wno-multichar -ffreestanding -fno-builtin
    -fno-stack-protector
    -D_WIN32_WINNT=0x0601 -DNTDDI_VERSION=0x06010000)
LDFLAGS=(-shared -nostdlib -s -Wl,--subsystem,native -Wl,--no-insert-timestamp
    -Wl,--exclude-all-symbols)

# Import libraries from the .def files, for both architectures.
for def in defs/*.def; do
    name="$(basename "$def" .def)"
    sed 's/@[0-9]*$//' "$def" >"$WORK/$name.x64.def"
    x86_64-w64-mingw32-dlltool -d "$WORK/$name.x64.def" -l "$WORK/lib$name.x64.a"
    i686-w64-mingw32-dlltool -k -d "$def" -l "$WORK/lib$name.x86.a"
done

# build ARCH SOURCE OUTPUT [extra libraries...]
build() {
    local arch="$1" src="$2" out="$3"
    shift 3
    local libs=() pdb=()
    for lib in "$@"; do
        case "$lib" in
        -l*) libs+=("$lib") ;;
        --pdb=*) pdb=("-Wl,$lib") ;;
        *) libs+=("$WORK/lib$lib.$arch.a") ;;
        esac
    done
    if [ "$arch" = x64 ]; then
        x86_64-w64-mingw32-gcc "${CFLAGS[@]}" -mno-stack-arg-probe -I"$DDK" -c "src/$src" \
            -o "$WORK/$src.$arch.o"
        (cd "$WORK" && x86_64-w64-mingw32-gcc "${LDFLAGS[@]}" \
            -Wl,--image-base,0x140000000 -Wl,--entry,DriverEntry ${pdb[@]+"${pdb[@]}"} \
            "$WORK/$src.$arch.o" -o "$HERE/$out" "${libs[@]}")
    else
        i686-w64-mingw32-gcc "${CFLAGS[@]}" -fno-asynchronous-unwind-tables -I"$DDK" \
            -c "src/$src" -o "$WORK/$src.$arch.o"
        (cd "$WORK" && i686-w64-mingw32-gcc "${LDFLAGS[@]}" \
            -Wl,--image-base,0x10000 -Wl,--entry,_DriverEntry@8 ${pdb[@]+"${pdb[@]}"} \
            "$WORK/$src.$arch.o" -o "$HERE/$out" "${libs[@]}")
    fi
}

mkdir -p ordinal bad
for arch in x64 x86; do
    build "$arch" pooltags.c "pooltags_$arch.sys" ntoskrnl_extra -lntoskrnl -lhal
    build "$arch" multiapi.c "multiapi_$arch.sys" fltmgr videoprt storport -lndis -lntoskrnl
    build "$arch" nopool.c "nopool_$arch.sys" -lntoskrnl
    build "$arch" dynamic.c "dynamic_$arch.sys" -lntoskrnl
    build "$arch" structs.c "structs_$arch.sys" -lndis -lntoskrnl
    build "$arch" kmdf.c "kmdf_$arch.sys" wdfldr -lntoskrnl
    build "$arch" videocb.c "videocb_$arch.sys" videoprt
    build "$arch" helpers.c "helpers_$arch.sys" -lntoskrnl
    build "$arch" minifilter.c "minifilter_$arch.sys" fltmgr
    # The PDB path (with tag-like text) goes into the debug directory's CodeView record.
    build "$arch" negative.c "negative_$arch.sys" -lntoskrnl "--pdb=NgPd_negative_$arch.pdb"
done

# By-ordinal import, and the stand-in exporter that makes the ordinal resolvable.
build x64 byordinal.c ordinal/byordinal_x64.sys ntoskrnl_ordinal
x86_64-w64-mingw32-gcc -O2 -Wall -Werror -ffreestanding -fno-asynchronous-unwind-tables \
    -c src/fake_ntoskrnl.c -o "$WORK/fake_ntoskrnl.o"
x86_64-w64-mingw32-gcc -shared -nostdlib -s -Wl,--subsystem,native -Wl,--no-insert-timestamp \
    -Wl,--image-base,0x140000000 -Wl,--entry,FakeEntry "$WORK/fake_ntoskrnl.o" \
    defs/fake_ntoskrnl.def -o ordinal/ntoskrnl.exe

# A driver with a version resource (the file identity `drivers --format json` reports).
mkdir -p version
x86_64-w64-mingw32-windres src/versioned.rc -O coff -o "$WORK/versioned.res.o"
x86_64-w64-mingw32-gcc "${CFLAGS[@]}" -mno-stack-arg-probe -I"$DDK" -c src/nopool.c \
    -o "$WORK/versioned.o"
x86_64-w64-mingw32-gcc "${LDFLAGS[@]}" -Wl,--image-base,0x140000000 -Wl,--entry,DriverEntry \
    "$WORK/versioned.o" "$WORK/versioned.res.o" -o version/versioned_x64.sys -lntoskrnl

# A user-mode DLL: a bad input (not a kernel driver).
x86_64-w64-mingw32-gcc -O2 -Wall -Werror -shared -nostdlib -s -Wl,--no-insert-timestamp \
    -Wl,--entry,DllMain -fno-asynchronous-unwind-tables src/usermode.c \
    -o bad/usermode_x64.dll -lkernel32

ls -l ./*.sys ordinal/* bad/* version/*
