"""Read just enough of an ELF or Mach-O header to say what OS and CPU a binary is for.

No third-party parser, no ``file(1)``: the checks must run on any CI runner, and the few fields
needed (ELF ``EI_CLASS``/``EI_DATA``/``e_machine``, program and section header types; Mach-O
``cputype`` and load commands) are fixed offsets in documented structures:

- ELF: the System V gABI, ``<elf.h>`` (``Elf64_Ehdr``, ``Elf64_Phdr``, ``Elf64_Shdr``).
- Mach-O: ``<mach-o/loader.h>`` (``mach_header_64``, ``load_command``, ``build_version_command``,
  ``dylib_command``) and ``<mach/machine.h>`` (``CPU_TYPE_*``).
"""

from __future__ import annotations

import struct
from dataclasses import dataclass, field

__all__ = ["BinaryFormatError", "BinaryInfo", "inspect_binary", "looks_like_binary"]

_ELF_MAGIC = b"\x7fELF"
_ELFCLASS64 = 2
_ELFDATA2LSB = 1
_ELF_MACHINES = {62: "amd64", 183: "arm64", 3: "386", 40: "arm"}  # EM_X86_64, EM_AARCH64, ...
_PT_DYNAMIC, _PT_INTERP = 2, 3
_SHT_SYMTAB = 2

_MH_MAGIC_64 = 0xFEEDFACF  # little-endian 64-bit Mach-O
_MACHO_MAGICS = {b"\xcf\xfa\xed\xfe", b"\xce\xfa\xed\xfe", b"\xfe\xed\xfa\xcf",
                 b"\xfe\xed\xfa\xce", b"\xca\xfe\xba\xbe"}  # 64/32-bit, both orders, fat
_CPU_ARCH_ABI64 = 0x01000000
_MACHO_CPUS = {_CPU_ARCH_ABI64 | 7: "amd64", _CPU_ARCH_ABI64 | 12: "arm64"}
_MH_EXECUTE = 2
_LC_LOAD_DYLIB, _LC_VERSION_MIN_MACOSX, _LC_BUILD_VERSION = 0xC, 0x24, 0x32
_LC_LOAD_WEAK_DYLIB = 0x80000018
_PLATFORM_MACOS = 1


class BinaryFormatError(ValueError):
    """Not an executable this module understands, or a truncated one."""


@dataclass(frozen=True)
class BinaryInfo:
    """What a binary's headers say.

    ``goos``/``goarch`` use Go's names so they compare directly with the build target.
    ``static`` and ``stripped`` are for ELF (no PT_INTERP or PT_DYNAMIC; no SHT_SYMTAB);
    ``min_os`` and ``libraries`` for Mach-O (LC_BUILD_VERSION ``minos``; the dylibs it loads:
    a Go binary for macOS always links libSystem, so "static" does not apply there). Mach-O
    keeps a symbol table even when stripped, for the symbols dyld binds.
    """

    format: str
    goos: str
    goarch: str
    static: bool | None = None
    stripped: bool | None = None
    min_os: tuple[int, int] | None = None
    libraries: tuple[str, ...] = field(default=())

    def describe(self) -> str:
        """A short human summary, e.g. 'ELF64 linux/amd64 static stripped'."""
        parts = [self.format, f"{self.goos}/{self.goarch}"]
        if self.static is not None:
            parts.append("static" if self.static else "dynamic")
        if self.stripped is not None:
            parts.append("stripped" if self.stripped else "symbols")
        if self.min_os is not None:
            parts.append(f"minos {self.min_os[0]}.{self.min_os[1]}")
        if self.libraries:
            parts.append(f"{len(self.libraries)} system dylibs")
        return " ".join(parts)


def looks_like_binary(head: bytes) -> bool:
    """Whether *head* (a file's first bytes) starts like an ELF or Mach-O file."""
    return head[:4] == _ELF_MAGIC or head[:4] in _MACHO_MAGICS


def inspect_binary(data: bytes) -> BinaryInfo:
    """Parse an ELF64 or 64-bit Mach-O executable's headers.

    Raises:
        BinaryFormatError: neither, a 32-bit or big-endian one, a fat Mach-O, or truncated.
    """
    try:
        if data[:4] == _ELF_MAGIC:
            return _inspect_elf(data)
        if data[:4] in _MACHO_MAGICS:
            return _inspect_macho(data)
    except struct.error as exc:
        raise BinaryFormatError(f"truncated header: {exc}") from None
    raise BinaryFormatError(f"not ELF or Mach-O (starts {data[:4].hex()})")


def _inspect_elf(data: bytes) -> BinaryInfo:
    ei_class, ei_data = data[4], data[5]
    if ei_class != _ELFCLASS64:
        raise BinaryFormatError(f"ELF class {ei_class}, expected 2 (64-bit)")
    if ei_data != _ELFDATA2LSB:
        raise BinaryFormatError(f"ELF data encoding {ei_data}, expected 1 (little-endian)")
    (e_machine,) = struct.unpack_from("<H", data, 18)
    (e_phoff, e_shoff) = struct.unpack_from("<QQ", data, 32)
    e_phentsize, e_phnum, e_shentsize, e_shnum = struct.unpack_from("<HHHH", data, 54)
    if e_machine not in _ELF_MACHINES:
        raise BinaryFormatError(f"ELF e_machine {e_machine} is not a known CPU")
    program_types = {
        struct.unpack_from("<I", data, e_phoff + i * e_phentsize)[0] for i in range(e_phnum)
    }
    section_types = {
        struct.unpack_from("<I", data, e_shoff + i * e_shentsize + 4)[0] for i in range(e_shnum)
    }
    return BinaryInfo(
        format="ELF64",
        goos="linux",  # Go leaves EI_OSABI as SYSV for Linux; nothing else we build is ELF
        goarch=_ELF_MACHINES[e_machine],
        static=not program_types & {_PT_DYNAMIC, _PT_INTERP},
        stripped=_SHT_SYMTAB not in section_types,
    )


def _inspect_macho(data: bytes) -> BinaryInfo:
    (magic,) = struct.unpack_from("<I", data, 0)
    if magic != _MH_MAGIC_64:
        raise BinaryFormatError(f"Mach-O magic {magic:#x}: not a thin little-endian 64-bit file")
    cputype, _subtype, filetype, ncmds, _sizeofcmds = struct.unpack_from("<iIIII", data, 4)
    if cputype not in _MACHO_CPUS:
        raise BinaryFormatError(f"Mach-O cputype {cputype:#x} is not x86_64 or arm64")
    if filetype != _MH_EXECUTE:
        raise BinaryFormatError(f"Mach-O filetype {filetype}, expected {_MH_EXECUTE} (executable)")
    offset = 32  # sizeof(mach_header_64)
    min_os: tuple[int, int] | None = None
    libraries: list[str] = []
    for _ in range(ncmds):
        cmd, cmdsize = struct.unpack_from("<II", data, offset)
        if cmdsize < 8:
            raise BinaryFormatError(f"Mach-O load command {cmd:#x} has size {cmdsize}")
        if cmd == _LC_BUILD_VERSION:
            platform, minos = struct.unpack_from("<II", data, offset + 8)
            if platform == _PLATFORM_MACOS:
                min_os = (minos >> 16, (minos >> 8) & 0xFF)
        elif cmd == _LC_VERSION_MIN_MACOSX:
            (version,) = struct.unpack_from("<I", data, offset + 8)
            min_os = (version >> 16, (version >> 8) & 0xFF)
        elif cmd in (_LC_LOAD_DYLIB, _LC_LOAD_WEAK_DYLIB):
            (name_offset,) = struct.unpack_from("<I", data, offset + 8)
            raw = data[offset + name_offset : offset + cmdsize]
            libraries.append(raw.split(b"\0", 1)[0].decode("utf-8", "replace"))
        offset += cmdsize
    return BinaryInfo(
        format="Mach-O64",
        goos="darwin",
        goarch=_MACHO_CPUS[cputype],
        min_os=min_os,
        libraries=tuple(libraries),
    )
