from workers.budget import epoch_batches, plan
from workers.config import BudgetConfig


def test_epochs_mode_counts_every_unit():
    p = plan(BudgetConfig("epochs", 3), n_subset=100, n_full=1000, batch=32)
    assert p.images_seen == 300 and p.subset_epochs == 3.0 and p.full_epochs == 0.3
    assert p.steps == 3 * 4  # 32+32+32+4 per epoch


def test_full_epochs_mode_derives_subset_epochs():
    # docs/methods.md §2.1: E = B * N / n
    p = plan(BudgetConfig("full_epochs", 2), n_subset=100, n_full=1000, batch=50)
    assert p.images_seen == 2000 and p.subset_epochs == 20.0 and p.steps == 40


def test_fractional_budget_truncates_the_last_batch():
    p = plan(BudgetConfig("epochs", 1.5), n_subset=10, n_full=100, batch=4)
    sizes = [s for _, ep in epoch_batches(10, 4, p.images_seen) for s in ep]
    assert sum(sizes) == 15 == p.images_seen
    assert sizes == [4, 4, 2, 4, 1] and p.steps == len(sizes)


def test_steps_mode_runs_exactly_that_many_batches():
    p = plan(BudgetConfig("steps", 7), n_subset=10, n_full=100, batch=4)
    sizes = [s for _, ep in epoch_batches(10, 4, p.images_seen) for s in ep]
    assert len(sizes) == 7 == p.steps
    assert sum(sizes) == p.images_seen == 4 + 4 + 2 + 4 + 4 + 2 + 4
