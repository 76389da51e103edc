"""The tally of the reliability campaign, printed as one table.

Each scenario test reports what it did through the ``tally`` fixture
(tests/conftest.py); at the end of the run, pytest prints every report
as a row: scenario, trials, faults injected, survived, data lost, and
the secrets sweeps run after it with the secrets they found (leaks.py).
The plain suite runs a short version of each scenario, so the table
appears there too, with smaller figures; ``pytest -m campaign`` runs the
long ones.
"""

import dataclasses


@dataclasses.dataclass
class Tally:
    """What one scenario did.

    :param trials: runs of the scenario.
    :param faults: faults injected (kills, full disks, flipped bytes).
    :param survived: trials after which every check held.
    :param lost: keys lost or repeated indexes, over all trials.
    :param sweeps: secrets sweeps run (tests/leaks.py).
    :param secrets: secrets the sweeps found where they should not be.
    """

    scenario: str
    trials: int = 0
    faults: int = 0
    survived: int = 0
    lost: int = 0
    sweeps: int = 0
    secrets: int = 0


TALLIES: list[Tally] = []


def table() -> list[str]:
    """Return the campaign's table, a line a scenario."""
    header = ("scenario", "trials", "faults injected", "survived",
              "data lost", "sweeps", "secrets found")
    rows = [
        (tally.scenario, str(tally.trials), str(tally.faults),
         str(tally.survived), str(tally.lost), str(tally.sweeps),
         str(tally.secrets))
        for tally in TALLIES
    ]
    widths = [
        max(len(row[column]) for row in [header, *rows])
        for column in range(len(header))
    ]
    lines = []
    for row in [header, *rows]:
        cells = [row[0].ljust(widths[0])]
        cells += [cell.rjust(width) for cell, width in
                  zip(row[1:], widths[1:], strict=True)]
        lines.append("  ".join(cells))
    return lines
