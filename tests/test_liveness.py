"""controlplane.liveness: the file a long-running loop touches for the chart's liveness probe."""

import logging
import os
import time

from controlplane import liveness


def test_touch_moves_the_file_time_forward_when_the_file_is_old(tmp_path):
    path = tmp_path / "loop.alive"
    liveness.touch(str(path))
    old = time.time() - 3600
    os.utime(path, (old, old))
    liveness.touch(str(path))
    assert path.stat().st_mtime > time.time() - 60


def test_touch_warns_once_and_never_raises_when_the_file_cannot_be_written(tmp_path, caplog):
    path = str(tmp_path / "missing-dir" / "loop.alive")
    with caplog.at_level(logging.WARNING, logger="controlplane.liveness"):
        liveness.touch(path)
        liveness.touch(path)
    warnings = [r.getMessage() for r in caplog.records if "cannot touch the liveness file" in r.getMessage()]
    assert len(warnings) == 1 and path in warnings[0]
