"""Test settings: under CI (the CI variable is set), hypothesis draws the same examples on every
run, so a result never depends on the luck of the draw; locally it keeps exploring."""

import os

from hypothesis import settings

settings.register_profile("ci", derandomize=True, database=None)
if os.environ.get("CI"):
    settings.load_profile("ci")
