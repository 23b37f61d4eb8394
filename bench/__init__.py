"""The benchmark of issue 7: maketrigger against what users would pick instead (bench/run.py)."""
