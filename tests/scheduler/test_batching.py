from gigarouter.scheduler.batching import batch_cost, plan_batch


def test_oldest_always_rides_even_when_over_budget():
    assert plan_batch([5000, 10, 10], token_budget=1000) == [0]


def test_groups_by_length_within_the_budget():
    lengths = [100, 10, 98, 12, 101, 11]
    chosen = plan_batch(lengths, token_budget=320)
    # 3 x 101 = 303 fits; adding a 10-token sequence would not raise cost, but a 4th slot would (404).
    assert chosen == [0, 2, 4]
    assert batch_cost([lengths[i] for i in chosen]) <= 320


def test_short_sequences_fill_the_budget_after_the_anchor():
    lengths = [10] * 50
    assert plan_batch(lengths, token_budget=200) == list(range(20))


def test_window_limits_how_far_it_looks():
    lengths = [100] + [500] * 10 + [100]
    assert plan_batch(lengths, token_budget=200, window=5) == [0]
    assert plan_batch(lengths, token_budget=200, window=20) == [0, 11]


def test_empty():
    assert plan_batch([], token_budget=100) == []
