"""A tiny inventory application used as the pytest-dbbranch example."""
