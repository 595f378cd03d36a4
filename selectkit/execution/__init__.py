"""Running a Plan: the local and Ray executors, progress, the surrogate fits and the output set."""
