"""Device health from the heartbeat: answers at once whatever the device does (fake clock)."""

from __future__ import annotations

import threading
import time

from gigarouter.engine.heartbeat import Heartbeat


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_a_pass_in_flight_is_healthy_until_it_runs_far_longer_than_any_before():
    clock = Clock()
    hb = Heartbeat(clock=clock, stall_floor_s=30, stall_factor=10)
    token = hb.pass_started()
    clock.now += 2.0
    hb.pass_ended(token)                       # the slowest pass so far: 2 s
    token = hb.pass_started()
    clock.now += 29
    assert hb.state().ok and hb.state().reason == "busy"
    clock.now += 2                             # 31 s > max(30, 10 x 2 s)
    state = hb.state()
    assert not state.ok and "31 s" in state.reason
    hb.pass_ended(token)
    assert hb.state().ok


def test_a_device_error_makes_it_unhealthy_until_a_pass_or_a_probe_succeeds():
    clock = Clock()
    hb = Heartbeat(clock=clock)
    hb.pass_ended(hb.pass_started(), RuntimeError("CUDA error: an illegal memory access"), device_error=True)
    assert not hb.state().ok and "illegal memory access" in hb.state().reason
    hb.pass_ended(hb.pass_started())
    assert hb.state().ok
    # An error in the batch, not the device (out of memory, a bad input), leaves it healthy.
    hb.pass_ended(hb.pass_started(), ValueError("bad batch"))
    assert hb.state().ok


def test_an_idle_device_is_probed_on_another_thread_and_a_hung_probe_is_reported_without_waiting():
    clock = Clock()
    release = threading.Event()
    probes = []

    def probe():
        probes.append(threading.current_thread().name)
        release.wait(10)

    hb = Heartbeat(clock=clock, probe=probe, probe_every_s=5, probe_timeout_s=3)
    assert hb.state().ok and not probes               # beat just now: no probe yet
    clock.now += 6
    started = time.perf_counter()
    assert hb.state().ok                              # starts a probe, does not wait for it
    assert time.perf_counter() - started < 0.5
    deadline = time.monotonic() + 5
    while not probes and time.monotonic() < deadline:
        time.sleep(0.01)
    assert probes == ["device-health-probe"]
    clock.now += 4                                    # the probe has hung for 4 s > 3 s
    started = time.perf_counter()
    state = hb.state()
    assert time.perf_counter() - started < 0.5
    assert not state.ok and "has not answered a probe" in state.reason
    release.set()
    deadline = time.monotonic() + 5
    while not hb.state().ok and time.monotonic() < deadline:
        time.sleep(0.01)
    assert hb.state().ok and len(probes) == 1


def test_a_failed_probe_is_reported_and_the_next_good_one_clears_it():
    clock = Clock()
    answers = [RuntimeError("CUDA error: device lost"), None]

    def probe():
        error = answers.pop(0)
        if error:
            raise error

    hb = Heartbeat(clock=clock, probe=probe, probe_every_s=5)
    clock.now += 6
    hb.state()
    deadline = time.monotonic() + 5
    while hb.state().ok and time.monotonic() < deadline:
        time.sleep(0.01)
    assert "device lost" in hb.state().reason
    clock.now += 6
    hb.state()
    deadline = time.monotonic() + 5
    while not hb.state().ok and time.monotonic() < deadline:
        time.sleep(0.01)
    assert hb.state().ok and not answers
