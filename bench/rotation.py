"""Benchmark one rotation, step by step, against its bare parts.

For each PBKDF2 round count, the script runs full rotations through
KeyRotationDaemon on a real key store at steady state (retention full, so
every rotation also removes a key), and interleaves with each rotation the
two references it is judged against, measured in the same run:

- a bare ``hashlib.pbkdf2_hmac`` with the same parameters;
- one small-file write + fsync + rename in the same directory.

It prints the median of each step (lock: taking the store lock and reading
the store again; storage: the new record, history.json and current.json
flushed, and the backup copies written, until the rotation is durable;
retention: the overwrite, flush and removal of the key beyond retention)
and two ratios:

  (a) KDF + validation + sealing over the bare PBKDF2, target <= 1.1;
  (b) durable storage over the single small-file write, target <= 6.

Then it builds a store of 10,000 keys and times loading it (every
checksum and the chain verified) and a full verify (every key opened).

Usage: python bench/rotation.py [--rounds 10000 50000] [--samples 41]
       [--dir DIR]   (DIR: where the stores go; default: a temp dir)
"""

import argparse
import hashlib
import os
import shutil
import statistics
import tempfile
import time
from pathlib import Path

from torro import keygen
from torro.rotation import KeyRotationDaemon, RotationPolicy
from torro.sealing import MasterKey, Sealer
from torro.store import KeyStore, NewChainEntry


KEY_LENGTH = 32
ALGORITHM = "sha256"
MAX_HISTORY = 100
LARGE_STORE = 10_000


def bare_pbkdf2(rounds: int) -> float:
    password = os.urandom(KEY_LENGTH)
    salt = os.urandom(keygen.SALT_LENGTH)
    started = time.perf_counter()
    hashlib.pbkdf2_hmac(ALGORITHM, password, salt, rounds, KEY_LENGTH)
    return time.perf_counter() - started


def bare_write(directory: Path, size: int) -> float:
    data = os.urandom(size // 2).hex().encode()
    temp = directory / ".bare.tmp"
    started = time.perf_counter()
    fd = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        os.write(fd, data)
        os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(temp, directory / "bare.json")
    return time.perf_counter() - started


def measure_references(
    steps: dict[str, list[float]], rounds: int, directory: Path, size: int
) -> None:
    steps["bare_pbkdf2"].append(bare_pbkdf2(rounds))
    steps["bare_write"].append(bare_write(directory, size))


def measure_rotations(workdir: Path, rounds: int, samples: int) -> None:
    root = workdir / f"store-{rounds}"
    store = KeyStore(
        root, Sealer(MasterKey(os.urandom(32))), max_history=MAX_HISTORY
    )
    fill = KeyRotationDaemon(
        store,
        RotationPolicy(rotation_interval_ms=1, derivation_rounds=1000),
    )
    for _ in range(MAX_HISTORY):
        fill.rotate(force=True)
    daemon = KeyRotationDaemon(
        store,
        RotationPolicy(
            rotation_interval_ms=1,
            key_length=KEY_LENGTH,
            algorithm=ALGORITHM,
            derivation_rounds=rounds,
        ),
    )
    record_size = (root / "current.json").stat().st_size

    steps: dict[str, list[float]] = {
        "lock": [], "kdf": [], "validation": [], "sealing": [],
        "storage": [], "retention": [],
        "crypto": [], "rotation": [], "bare_pbkdf2": [], "bare_write": [],
    }
    for sample in range(samples):
        # The references go before the rotation in one sample and after
        # it in the next, so that neither side always runs on a disk the
        # other has just made busy.
        if sample % 2:
            measure_references(steps, rounds, root, record_size)
        rotation = daemon.rotate(force=True)
        assert rotation is not None
        timings = rotation.timings
        steps["lock"].append(timings.lock)
        steps["kdf"].append(timings.kdf)
        steps["validation"].append(timings.validation)
        steps["sealing"].append(timings.sealing)
        steps["storage"].append(timings.storage)
        steps["retention"].append(timings.retention)
        steps["crypto"].append(
            timings.kdf + timings.validation + timings.sealing
        )
        steps["rotation"].append(rotation.duration)
        if not sample % 2:
            measure_references(steps, rounds, root, record_size)
    medians = {name: statistics.median(v) for name, v in steps.items()}

    print(f"\n{rounds} rounds, {samples} rotations, retention full "
          f"({MAX_HISTORY} keys; each rotation removes one)")
    for name in ("lock", "kdf", "validation", "sealing", "storage",
                 "retention", "rotation",
                 "bare_pbkdf2", "bare_write"):
        print(f"  {name:<12} {medians[name] * 1000:9.3f} ms")
    ratio_a = medians["crypto"] / medians["bare_pbkdf2"]
    ratio_b = medians["storage"] / medians["bare_write"]
    print(f"  (a) kdf+validation+sealing / bare pbkdf2 = {ratio_a:.3f}"
          f"  (target <= 1.1) {'ok' if ratio_a <= 1.1 else 'OVER'}")
    print(f"  (b) storage / one write+fsync+rename     = {ratio_b:.2f}"
          f"  (target <= 6)   {'ok' if ratio_b <= 6 else 'OVER'}")
    shutil.rmtree(root)


def measure_large_store(workdir: Path) -> None:
    root = workdir / "large"
    sealer = Sealer(MasterKey(os.urandom(32)))
    store = KeyStore(root, sealer, max_history=LARGE_STORE)
    now = int(time.time() * 1000) - LARGE_STORE
    entries = [
        NewChainEntry(
            keygen.generate_first_key(KEY_LENGTH), index, now + index,
            ALGORITHM, index - 1 if index else None,
        )
        for index in range(LARGE_STORE)
    ]
    started = time.perf_counter()
    with store.locked():
        store.write_chain(entries, next_index=LARGE_STORE)
    built = time.perf_counter() - started

    loads, verifies = [], []
    for _ in range(3):
        fresh = KeyStore(root, sealer, max_history=LARGE_STORE)
        started = time.perf_counter()
        fresh.load()
        loads.append(time.perf_counter() - started)
        assert fresh.problem is None and len(fresh.records) == LARGE_STORE
        started = time.perf_counter()
        problems = fresh.verify()
        verifies.append(time.perf_counter() - started)
        assert problems == [], problems[:1]
    load = statistics.median(loads)
    print(f"\nstore of {LARGE_STORE} keys (built in {built:.1f} s)")
    print(f"  load, every checksum and the chain verified: {load:.3f} s"
          f"  (target < 1 s) {'ok' if load < 1 else 'OVER'}")
    print(f"  full verify, every key opened as well:      "
          f"{statistics.median(verifies):.3f} s")
    shutil.rmtree(root)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rounds", type=int, nargs="+",
                        default=[10_000, 50_000])
    parser.add_argument("--samples", type=int, default=41)
    parser.add_argument("--dir", type=Path, default=None)
    args = parser.parse_args()
    workdir = Path(tempfile.mkdtemp(prefix="torro-bench-", dir=args.dir))
    try:
        print(f"stores in {workdir}")
        for rounds in args.rounds:
            measure_rotations(workdir, rounds, args.samples)
        measure_large_store(workdir)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    main()
