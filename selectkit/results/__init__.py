"""Finished run folders read back from their files alone: report.html, explain and diff."""
