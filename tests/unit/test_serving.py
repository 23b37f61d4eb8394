"""The interpreter settings both serving processes take after gunicorn's fork."""

import gc
import sys

from worker.serving import SWITCH_INTERVAL, tune_interpreter


def test_the_loaded_app_is_frozen_out_of_the_collectors_scans():
    interval = sys.getswitchinterval()
    try:
        gc.unfreeze()
        assert gc.get_freeze_count() == 0
        tune_interpreter()
        assert gc.get_freeze_count() > 1000  # the modules, functions and app objects loaded
        assert sys.getswitchinterval() == SWITCH_INTERVAL
    finally:
        gc.unfreeze()
        sys.setswitchinterval(interval)
