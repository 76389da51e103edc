"""Calibrate the entropy threshold of :func:`torro.keygen.check_entropy`.

For key lengths of 16, 32, 64, 128 and 1024 bytes, print:

* the smallest value and the 0.0001-quantile of both measures (byte
  entropy and difference entropy, as a fraction of their maximum) over
  random keys from the OS CSPRNG, and how many of those keys
  ``check_entropy`` rejected;
* an upper bound on the false-rejection rate: the exact tail probability
  where the number of byte histograms is small enough to enumerate
  (16 and 32 bytes), a Chernoff bound otherwise, plus the chance of a
  repeated block;
* how the bound at 16 bytes, the tightest length, moves with the
  fraction, next to the figures of the degenerate keys it must reject.

The differences of independent uniform bytes are themselves independent
and uniform, so the difference histogram of an ``L``-byte key has the
law of the byte histogram of an ``L - 1``-byte key; one tail computation
serves both measures.

Run from the repository root::

    .venv/bin/python bench/entropy_threshold.py [samples] [long_samples]

Defaults: 200,000 keys per length up to 128 bytes, 20,000 of 1024 bytes.
"""

import math
import os
import sys
from collections.abc import Iterator

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "src"))

from torro import keygen  # noqa: E402

LENGTHS = (16, 32, 64, 128, 1024)
EXACT_UP_TO = 32
QUANTILE = 0.0001
FRACTIONS = (0.6, 0.65, 0.7, 0.72, 0.74, 0.76, 0.78, 0.8)


def main(samples: int, long_samples: int) -> None:
    """Print the simulation, the tail bounds and the fraction sweep."""
    fraction = keygen.ENTROPY_FRACTION
    print(f"threshold: ENTROPY_FRACTION = {fraction}")
    print()
    print_simulation(samples, long_samples)
    print()
    print_bounds(fraction)
    print()
    print_sweep()
    print()
    print_degenerate()


def print_simulation(samples: int, long_samples: int) -> None:
    """Print the measured spread of both measures over random keys."""
    print("random keys (fraction of the maximum entropy)")
    print(
        f"{'L':>5} {'keys':>7}"
        f" {'bytes min':>9} {'q0.0001':>8} {'mean':>6}"
        f" {'diffs min':>9} {'q0.0001':>8} {'mean':>6}"
        f" {'rejected':>8}"
    )
    for length in LENGTHS:
        count = samples if length <= 128 else long_samples
        byte_top = _max_entropy(length)
        diff_top = _max_entropy(length - 1)
        byte_ratios = []
        diff_ratios = []
        rejected = 0
        for _ in range(count):
            key = os.urandom(length)
            byte_ratios.append(keygen.byte_entropy(key) / byte_top)
            diff_ratios.append(keygen.difference_entropy(key) / diff_top)
            if keygen.check_entropy(key) is not None:
                rejected += 1
        print(
            f"{length:>5} {count:>7}"
            f" {_summary(byte_ratios)} {_summary(diff_ratios)}"
            f" {rejected:>8}"
        )


def print_bounds(fraction: float) -> None:
    """Print the false-rejection bound of ``fraction`` for each length."""
    print(f"false-rejection bound per key at fraction {fraction}")
    print(
        f"{'L':>5} {'bytes':>9} {'diffs':>9} {'repeat':>9} {'total':>9}"
        "  method"
    )
    for length in LENGTHS:
        byte_tail, method = tail(length, fraction)
        diff_tail, _ = tail(length - 1, fraction)
        repeat = repeat_chance(length)
        total = byte_tail + diff_tail + repeat
        print(
            f"{length:>5} {byte_tail:9.2e} {diff_tail:9.2e}"
            f" {repeat:9.2e} {total:9.2e}  {method}"
        )


def print_sweep() -> None:
    """Print the exact bound at 16 bytes for a range of fractions."""
    pattern = _fill(bytes.fromhex("3f9a07c4e1d25b68"), 16)
    byte_ratio = keygen.byte_entropy(pattern) / _max_entropy(16)
    diff_ratio = keygen.difference_entropy(pattern) / _max_entropy(15)
    print("fraction sweep at L=16 (exact), without the repeat check a")
    print(
        f"fraction must exceed {byte_ratio:.3f} (bytes) or"
        f" {diff_ratio:.3f} (diffs) to reject an 8-byte pattern"
    )
    print(f"{'fraction':>8} {'bytes':>9} {'diffs':>9} {'total':>9}")
    for fraction in FRACTIONS:
        byte_tail = exact_tail(16, fraction)
        diff_tail = exact_tail(15, fraction)
        print(
            f"{fraction:>8} {byte_tail:9.2e} {diff_tail:9.2e}"
            f" {byte_tail + diff_tail + repeat_chance(16):9.2e}"
        )


def print_degenerate() -> None:
    """Print the figures and the verdict for each degenerate key."""
    print("degenerate keys (fraction of the maximum entropy)")
    print(f"{'L':>5} {'key':<19} {'bytes':>6} {'diffs':>6}  verdict")
    for length in (16, 64, 1024):
        for name, key in degenerate_keys(length):
            byte_ratio = keygen.byte_entropy(key) / _max_entropy(length)
            diff_ratio = keygen.difference_entropy(key) / _max_entropy(
                length - 1
            )
            print(
                f"{length:>5} {name:<19} {byte_ratio:6.3f}"
                f" {diff_ratio:6.3f}  {keygen.check_entropy(key)}"
            )


def degenerate_keys(length: int) -> Iterator[tuple[str, bytes]]:
    """Yield a name and a key for each degenerate pattern."""
    yield "zeros", bytes(length)
    yield "one value", bytes([0xA7]) * length
    yield "2-byte pattern", _fill(bytes.fromhex("5ac3"), length)
    yield "4-byte pattern", _fill(bytes.fromhex("9e3779b9"), length)
    yield "8-byte pattern", _fill(bytes.fromhex("3f9a07c4e1d25b68"), length)
    yield "ascending", bytes(i % 256 for i in range(length))
    yield "descending", bytes(255 - i % 256 for i in range(length))
    yield "step 7", bytes(7 * i % 256 for i in range(length))
    yield "random 4-byte block", _fill(os.urandom(4), length)
    yield "hex text", os.urandom(length // 2).hex().encode()


def tail(n: int, fraction: float) -> tuple[float, str]:
    """Bound the chance that ``n`` random bytes score below ``fraction``."""
    if n <= EXACT_UP_TO:
        return exact_tail(n, fraction), "exact"
    return chernoff_tail(n, fraction), "chernoff"


def exact_tail(n: int, fraction: float) -> float:
    """Sum the chance of every byte histogram scoring below ``fraction``.

    The entropy of a histogram depends only on its counts, a partition
    of ``n``; each partition's chance is counted exactly, and its entropy
    is measured by ``keygen.byte_entropy`` on a key with those counts.
    """
    floor = fraction * _max_entropy(n)
    favourable = 0
    for parts in _partitions(n, n):
        if len(parts) > 256:
            continue
        key = b"".join(bytes([i]) * part for i, part in enumerate(parts))
        if keygen.byte_entropy(key) < floor:
            favourable += _arrangements(parts)
    return favourable / 256**n


def chernoff_tail(n: int, fraction: float) -> float:
    """Bound the chance that ``n`` random bytes score below ``fraction``.

    Entropy below the floor means ``S = sum(c * log2(c))`` over the
    histogram counts exceeds ``n * (log2(n) - floor)``. With the counts
    taken as independent Poisson(n / 256) variables, conditioned on
    their sum being ``n``, Markov's inequality on ``exp(t * S)`` gives
    the bound, divided by the chance of that sum; the best ``t`` is
    found on a grid.
    """
    floor = fraction * _max_entropy(n)
    excess = n * (math.log2(n) - floor)
    rate = n / 256
    terms = [
        -rate + c * math.log(rate) - math.lgamma(c + 1)
        for c in range(n + 1)
    ]
    weights = [c * math.log2(c) if c else 0.0 for c in range(n + 1)]
    log_sum_is_n = -n + n * math.log(n) - math.lgamma(n + 1)
    best = 0.0
    for step in range(1, 801):
        t = step / 200
        log_mgf = _log_sum_exp(
            [term + t * w for term, w in zip(terms, weights)]
        )
        best = min(best, 256 * log_mgf - t * excess - log_sum_is_n)
    return math.exp(best)


def repeat_chance(length: int) -> float:
    """Bound the chance that a random key repeats a block of <= L/2."""
    return sum(256.0 ** -(length - p) for p in range(1, length // 2 + 1))


def _arrangements(parts: list[int]) -> int:
    # byte values to give the parts, then sequences with those counts
    ways = math.perm(256, len(parts))
    for size in set(parts):
        ways //= math.factorial(parts.count(size))
    ways *= math.factorial(sum(parts))
    for part in parts:
        ways //= math.factorial(part)
    return ways


def _partitions(n: int, largest: int) -> Iterator[list[int]]:
    if n == 0:
        yield []
        return
    for part in range(min(n, largest), 0, -1):
        for rest in _partitions(n - part, part):
            yield [part, *rest]


def _summary(ratios: list[float]) -> str:
    ratios.sort()
    quantile = ratios[int(QUANTILE * len(ratios))]
    mean = sum(ratios) / len(ratios)
    return f"{ratios[0]:9.3f} {quantile:8.3f} {mean:6.3f}"


def _max_entropy(n: int) -> float:
    return math.log2(min(n, 256))


def _log_sum_exp(values: list[float]) -> float:
    top = max(values)
    return top + math.log(sum(math.exp(v - top) for v in values))


def _fill(block: bytes, length: int) -> bytes:
    return (block * (length // len(block) + 1))[:length]


def _arguments(argv: list[str]) -> tuple[int, int]:
    samples = int(argv[0]) if argv else 200_000
    long_samples = int(argv[1]) if len(argv) > 1 else 20_000
    return samples, long_samples


if __name__ == "__main__":
    main(*_arguments(sys.argv[1:]))
