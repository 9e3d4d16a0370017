"""What every backend shares of its solver: HiGHS (:mod:`.highs`) and CP-SAT
(:mod:`.cpsat`) under lsched's time limits and interruption."""
