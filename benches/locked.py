#!/usr/bin/env python3
"""Locked instructions per unit of work of one workload run, and where they are.

An uncontended locked instruction (an atomic read-modify-write: a reference
count's increment, a compare-exchange taking a lock, a swap) costs 8 to 11 ns
on the shared VMs the benchmarks run on: a `then` link or a task costs a
handful of them, and they are most of what separates thenable from a
single-threaded design. This counts them deterministically, under callgrind,
so that a change that removes one can be checked without timing anything.

    cargo build --release --example workloads
    benches/locked.py target/release/examples/workloads tasks 100000

prints the locked instructions executed per unit (the workload's n), and the
sites that execute at least 0.05 per unit. Build with
`CARGO_PROFILE_RELEASE_DEBUG=line-tables-only` to get each site's source
lines (through `addr2line`) as well as its function. Needs valgrind, objdump
and (for source lines) addr2line.
"""

import collections
import os
import re
import subprocess
import sys
import tempfile


def locked_sites(binary):
    """Address -> function of every lock-prefixed (or implicitly locked
    `xchg` with memory) instruction of `binary`."""
    listing = subprocess.run(
        ["objdump", "-d", "--no-show-raw-insn", "-C", binary],
        check=True, capture_output=True, text=True,
    ).stdout
    sites, function = {}, None
    for line in listing.splitlines():
        header = re.match(r"^([0-9a-f]+) <(.*)>:$", line)
        if header:
            function = header.group(2)
            continue
        instruction = re.match(r"^\s+([0-9a-f]+):\s+(lock|xchg)\s+(.*)$", line)
        if instruction:
            # `xchg` between two registers is not locked; with memory it is.
            if instruction.group(2) == "xchg" and "(" not in instruction.group(3):
                continue
            sites[int(instruction.group(1), 16)] = function
    return sites


def executions(binary, args):
    """Address -> times executed, for the instructions of `binary` itself (a
    position-independent executable runs at the addresses objdump shows
    under callgrind, which loads it at its link address)."""
    with tempfile.TemporaryDirectory() as scratch:
        out = os.path.join(scratch, "callgrind.out")
        subprocess.run(
            ["valgrind", "--tool=callgrind", "--dump-instr=yes", "--compress-pos=no",
             "--compress-strings=no", f"--callgrind-out-file={out}", binary, *args],
            check=True, stdout=sys.stderr, stderr=subprocess.DEVNULL,
        )
        counts, in_binary = collections.Counter(), False
        name = os.path.basename(binary)
        with open(out) as profile:
            for line in profile:
                if line.startswith("ob="):
                    in_binary = os.path.basename(line[3:].strip()) == name
                elif in_binary and line.startswith("0x"):
                    fields = line.split()
                    if len(fields) >= 3:
                        counts[int(fields[0], 16)] += int(fields[2])
        return counts


def source_of(binary, address):
    """The crate's source lines an address comes from, innermost first (the
    standard library's frames left out), or "" without line tables."""
    try:
        lines = subprocess.run(
            ["addr2line", "-e", binary, "-i", "-f", "-C", hex(address)],
            check=True, capture_output=True, text=True,
        ).stdout.splitlines()
    except (OSError, subprocess.CalledProcessError):
        return ""
    # Pairs of (function, file:line), innermost inlined frame first.
    places = [where for where in lines[1::2] if "/rustc/" not in where and "?" not in where]
    return " <- ".join(re.sub(r"^.*?/((src|examples|benches|tests)/)", r"\1", where)
                       for where in places[:3])


def main():
    if len(sys.argv) < 4:
        sys.exit(__doc__)
    binary, workload, n = sys.argv[1], sys.argv[2], sys.argv[3]
    sites = locked_sites(binary)
    counts = executions(binary, [workload, n, *sys.argv[4:]])
    per_site = {a: c for a, c in counts.items() if a in sites}
    units = int(n)
    print(f"{workload} n={n}: {sum(per_site.values()) / units:.2f} locked instructions per unit")
    for address, count in sorted(per_site.items(), key=lambda item: -item[1]):
        if count / units < 0.05:
            break
        print(f"{count / units:7.2f}  {sites[address][:90]}  {source_of(binary, address)}")


if __name__ == "__main__":
    main()
