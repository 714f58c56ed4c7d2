"""Scenario code of the benchmark (``bench/run.py``); ``suite_files`` holds what the generated
pytest suites are made of."""
