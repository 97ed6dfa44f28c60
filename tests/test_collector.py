"""`capgate serve` tunes Python's cycle collector once it has started (cli/serve.py,
docs/performance.md "The garbage collector")."""

from __future__ import annotations

import gc

from capgate.cli.serve import GC_YOUNG, settle_collector


def test_start_up_objects_leave_the_collectors_sight_and_traffic_no_longer_sets_it_off() -> None:
    """After start-up every live object is frozen (full collections no longer walk
    them), and the young generation's threshold is above what a burst of requests in
    flight holds: 3,000 objects kept alive at once (the requests in flight) set off no
    collection, where the default threshold ran one every 700."""
    saved = gc.get_threshold()
    runs: list[int] = []

    def count(phase: str, info: dict[str, int]) -> None:
        if phase == "start":
            runs.append(info["generation"])

    try:
        settle_collector()
        assert gc.get_freeze_count() > 1000
        assert gc.get_threshold() == (GC_YOUNG, *saved[1:])
        gc.callbacks.append(count)
        for _ in range(20):
            in_flight = [{"request": i} for i in range(3000)]
            del in_flight
        assert runs == []
        gc.set_threshold(*saved)
        for _ in range(20):
            in_flight = [{"request": i} for i in range(3000)]
            del in_flight
        assert runs, "the default threshold runs the collector for traffic alone"
    finally:
        if count in gc.callbacks:
            gc.callbacks.remove(count)
        gc.unfreeze()
        gc.set_threshold(*saved)
