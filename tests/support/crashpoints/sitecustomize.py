"""Imported by every Python process that has this folder on PYTHONPATH (Python's `site` module does
that at start-up). With SVIBOT_TEST_CRASH_AT set it arms one crash point of `tests.support.crash`;
without it, it does nothing. Production code carries no hook: the fault tests start their child
processes with this folder first on PYTHONPATH."""
import os

if os.environ.get("SVIBOT_TEST_CRASH_AT"):
    from tests.support.crash import arm

    arm(os.environ["SVIBOT_TEST_CRASH_AT"], os.environ.get("SVIBOT_TEST_CRASH_MARK"))
