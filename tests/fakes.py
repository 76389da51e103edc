"""Stand-ins shared by the tests: a clock the test sets."""

START = 1_767_225_600_000  # 2026-01-01T00:00:00Z, in ms


class FakeClock:
    """A clock that says what ``now`` says, in ms since the epoch."""

    def __init__(self, now: int = START) -> None:
        self.now = now

    def __call__(self) -> int:
        return self.now
