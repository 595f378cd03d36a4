"""Data sources read by row range (sources) and the out-of-core candidate pool (pool)."""
