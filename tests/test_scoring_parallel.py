"""`nexus_gen.parallel.ordered_map`, the one ordered bounded map the converter and the scorer
share: input order, a bounded number of tasks in flight, errors at their item, cancellation."""
import threading
from concurrent.futures import ThreadPoolExecutor

import pytest

from nexus_gen.data.convert import base
from nexus_gen.parallel import ordered_map
from nexus_gen.scoring import image_encoder


def test_both_callers_use_the_shared_helper():
    assert base.ordered_map is ordered_map and image_encoder.ordered_map is ordered_map


@pytest.mark.parametrize("chunk", [1, 3])
def test_results_in_input_order_with_at_most_ahead_chunks_submitted(chunk):
    submitted = []

    def items():
        for i in range(20):
            submitted.append(i)
            yield i

    with ThreadPoolExecutor(4) as pool:
        got = []
        for r in ordered_map(lambda x: x * x, items(), pool, ahead=2, chunk=chunk):
            # when item r comes out, at most `ahead` chunks beyond its own were pulled from input
            i = len(got)
            assert len(submitted) <= (i // chunk + 1 + 2) * chunk
            got.append(r)
    assert got == [i * i for i in range(20)]


def test_an_error_is_raised_at_its_item_and_closing_cancels_the_rest():
    gate = threading.Event()
    ran = []

    def fn(x):
        if x == 0:
            gate.wait(5)
        ran.append(x)
        if x == 2:
            raise ValueError("item 2")
        return x

    with ThreadPoolExecutor(1) as pool:
        gen = ordered_map(fn, range(10), pool, ahead=4)
        gate.set()
        assert [next(gen), next(gen)] == [0, 1]
        with pytest.raises(ValueError, match="item 2"):
            next(gen)
    started, release = [], threading.Event()

    def slow(x):
        started.append(x)
        if x >= 1:
            release.wait(5)  # item 1 holds the only worker; 2..4 wait in the queue
        return x

    with ThreadPoolExecutor(1) as pool:
        gen = ordered_map(slow, range(10), pool, ahead=4)
        assert next(gen) == 0
        gen.close()  # items 2..4 were submitted and had not started: cancelled
        release.set()
    assert set(started) <= {0, 1}  # 1 may have started before the close; 2..4 never


def test_bad_bounds_are_refused():
    with ThreadPoolExecutor(1) as pool, pytest.raises(ValueError, match="ahead"):
        list(ordered_map(str, [1], pool, ahead=0))
