"""Benchmark: Modbus requests per poll cycle, against one request per point and Telegraf.

    python bench/coalesce.py

For realistic register maps, counts the requests (and registers read) one
poll cycle needs with Converge's read groups, with one request per point, and
with Telegraf's modbus optimisation modes applied to the same maps as
Telegraf's README documents them:

- ``none`` / ``shrink`` / ``rearrange``: requests cover consecutive fields
  only (user-defined gaps are respected, no omitted fields here, so the
  three give the same request count); at most 125 registers per request;
- ``max_insert``: fields join the current request while the hole before
  them is at most ``optimization_max_register_fill`` registers.

The comparison is made under the same hole rule: Converge with
``limits.max_gap: 0`` against none/shrink/rearrange, and with ``max_gap: G``
against max_insert with fill G (``aggressive`` fills every gap, which a
device that answers "illegal data address" for holes does not allow, so it
has no like-for-like counterpart). Every Converge request is also checked:
at most 125 registers, no value split, no hole wider than allowed.
"""

from __future__ import annotations

import itertools
import random
from dataclasses import dataclass

from engine.errors import Location
from engine.model import Device, Limits, PlannedPoint, Point
from plugins.modbus.plan import plan_read_groups
from plugins.modbus.schema import TYPE_WIDTHS

MAX_REGISTERS = 125
HERE = Location("bench", 1, 1)


@dataclass(frozen=True)
class Field:
    register: int
    kind: str

    @property
    def width(self) -> int:
        return TYPE_WIDTHS[self.kind]


def dense_block() -> list[Field]:
    """An energy meter: 200 float32 values back to back."""
    return [Field(2 * i, "float32") for i in range(200)]


def sparse() -> list[Field]:
    """A drive: one int16 status word every 10 registers."""
    return [Field(10 * i, "int16") for i in range(80)]


def plc_blocks() -> list[Field]:
    """A PLC: 8 blocks of 20 mixed values, 40 reserved registers between blocks."""
    kinds = ["float32", "int16", "uint32", "int16", "float64", "uint16"]
    fields, register = [], 0
    for block in range(8):
        for i in range(20):
            kind = kinds[(block + i) % len(kinds)]
            fields.append(Field(register, kind))
            register += TYPE_WIDTHS[kind]
        register += 40
    return fields


def scattered(seed: int = 7) -> list[Field]:
    """A hand-picked map: 60 values at random places in 0-3000, holes of 0-30 registers."""
    rng = random.Random(seed)
    fields, register = [], 0
    for _ in range(60):
        kind = rng.choice(["int16", "float32", "uint32", "float64"])
        fields.append(Field(register, kind))
        register += TYPE_WIDTHS[kind] + rng.choice([0, 0, 0, 1, 2, 4, 8, 16, 30])
    return fields


MAPS = {
    "dense meter": dense_block,
    "sparse drive": sparse,
    "PLC blocks": plc_blocks,
    "scattered": scattered,
}


def telegraf_requests(fields: list[Field], fill: int) -> list[tuple[int, int]]:
    """Telegraf's grouping as documented: join while the hole is <= fill and size <= 125."""
    requests: list[tuple[int, int]] = []
    for field in sorted(fields, key=lambda f: f.register):
        if requests:
            start, count = requests[-1]
            hole = field.register - (start + count)
            if 0 <= hole <= fill and field.register + field.width - start <= MAX_REGISTERS:
                requests[-1] = (start, field.register + field.width - start)
                continue
        requests.append((field.register, field.width))
    return requests


def converge_groups(fields: list[Field], max_gap: int) -> list[dict[str, object]]:
    points = [
        Point(
            f"P{i}",
            None,
            None,
            {"table": "holding", "register": f.register, "type": f.kind},
            HERE,
            HERE,
        )
        for i, f in enumerate(fields)
    ]
    device = Device(
        "bench",
        "site",
        "modbus",
        {"host": "127.0.0.1", "unit": 1},
        Limits(max_gap=max_gap),
        tuple(points),
        HERE,
    )
    plan = plan_read_groups(device, [PlannedPoint(p, every_ms=1000) for p in points])
    assert not plan.problems, plan.problems
    return plan.groups


def check(groups: list[dict[str, object]], fields: list[Field], max_gap: int) -> None:
    """Every request within 125 registers, every value inside one request, no wide hole."""
    by_name = {f"P{i}": f for i, f in enumerate(fields)}
    for group in groups:
        start, count = int(str(group["start"])), int(str(group["count"]))
        assert count <= MAX_REGISTERS
        names = list(group["points"])  # type: ignore[call-overload]
        members = sorted((by_name[n] for n in names), key=lambda f: f.register)
        assert all(start <= f.register and f.register + f.width <= start + count for f in members)
        for before, after in itertools.pairwise(members):
            assert after.register - (before.register + before.width) <= max_gap


def registers(requests: list[tuple[int, int]]) -> int:
    return sum(count for _, count in requests)


def main() -> None:
    header = (
        f"{'map':<14} {'points':>6} {'max gap':>7} {'1 per point':>11} "
        f"{'telegraf mode':<15} {'telegraf':>8} {'converge':>8} "
        f"{'registers telegraf/converge':>28}  result"
    )
    print(header)
    print("-" * len(header))
    for name, make in MAPS.items():
        fields = make()
        for gap in (0, 10, 50):
            mode = "none/shrink" if gap == 0 else f"max_insert={gap}"
            theirs = telegraf_requests(fields, gap)
            ours = converge_groups(fields, gap)
            check(ours, fields, gap)
            our_registers = sum(int(str(g["count"])) for g in ours)
            verdict = "ok" if len(ours) <= len(theirs) else "MORE REQUESTS"
            print(
                f"{name:<14} {len(fields):>6} {gap:>7} {len(fields):>11} {mode:<15} "
                f"{len(theirs):>8} {len(ours):>8} "
                f"{registers(theirs):>18}/{our_registers:<9}  {verdict}"
            )


if __name__ == "__main__":
    main()
