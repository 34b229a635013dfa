"""Codec throughput: ``python -m schemas.bench [--seconds S]``.

Measures decode (parse + validate + build objects) and encode of a typical impression (20 items x
8 features) and of a click, on one core, and prints records per second (best of several runs, and
the median).
"""

from __future__ import annotations

import argparse
import statistics
import timeit
from collections.abc import Callable

from schemas.codec import decode, encode
from schemas.examples import CLICK, make_impression


def measure(fn: Callable[[], object], seconds: float) -> tuple[float, float]:
    """(best, median) calls per second over ~``seconds`` of runs."""
    number = 1
    while timeit.timeit(fn, number=number) < 0.02:
        number *= 2
    runs = max(5, int(seconds / 0.02))
    times = timeit.repeat(fn, number=number, repeat=runs)
    return number / min(times), number / statistics.median(times)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m schemas.bench", description="codec throughput")
    parser.add_argument("--seconds", type=float, default=1.0, help="time per measurement (default 1)")
    args = parser.parse_args(argv)
    impression = make_impression(20, 8)
    raw_impression, raw_click = encode(impression), encode(CLICK)
    cases: list[tuple[str, Callable[[], object]]] = [
        (f"decode impression 20x8 ({len(raw_impression)} B)", lambda: decode(raw_impression)),
        (f"decode click ({len(raw_click)} B)", lambda: decode(raw_click)),
        ("encode impression 20x8", lambda: encode(impression)),
        ("encode click", lambda: encode(CLICK)),
    ]
    for name, fn in cases:
        best, median = measure(fn, args.seconds)
        print(f"{name:40s} {best:>10,.0f}/s best  {median:>10,.0f}/s median  ({1e6 / best:.1f} us)")


if __name__ == "__main__":
    main()
