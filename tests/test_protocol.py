"""tlhelpers.protocol: three disjoint splits, one budget, every choice on validation, test only reported."""

from __future__ import annotations

import pytest
import torch
import torchvision
from torch import nn
from torch.utils.data import Dataset

from tlhelpers import protocol

TO_TENSOR = torchvision.transforms.ToTensor()


@pytest.fixture(scope="module")
def splits():
    return protocol.three_splits("digits", 12, val_per_class=8, test_per_class=6, seed=3, transform=TO_TENSOR)


def _linear(seed_offset: int = 0):
    def build():
        model = nn.Sequential(nn.Flatten(), nn.Linear(3 * 8 * 8, 10))
        return model, model.parameters()
    return build


def _source_indices(dataset) -> set[int]:
    return set(dataset.indices)


def test_three_splits_are_disjoint_stratified_and_seeded(splits):
    assert len(splits.train) == 120 and len(splits.val) == 80 and len(splits.test) == 60
    # train and validation come from the same training files and never share one
    assert splits.train.dataset is splits.val.dataset
    assert not _source_indices(splits.train) & _source_indices(splits.val)
    # test comes from the held-out files, a different dataset object
    assert splits.test.dataset is not splits.train.dataset
    for ds, k in ((splits.train, 12), (splits.val, 8), (splits.test, 6)):
        assert torch.bincount(torch.tensor(protocol.targets_of(ds))).tolist() == [k] * 10
    again = protocol.three_splits("digits", 12, val_per_class=8, test_per_class=6, seed=3, transform=TO_TENSOR)
    assert again.train.indices == splits.train.indices and again.val.indices == splits.val.indices
    other = protocol.three_splits("digits", 12, val_per_class=8, seed=4, transform=TO_TENSOR)
    assert other.train.indices != splits.train.indices
    assert "test 6/class (60 images) from the held-out files" in splits.describe()


def test_first_k_are_nested_and_balanced(splits):
    five, ten = splits.first(5), splits.first(10)
    assert set(five) < set(ten) and len(five) == 50 and len(ten) == 100
    labels = torch.tensor(protocol.targets_of(splits.train))
    assert torch.bincount(labels[five]).tolist() == [5] * 10
    with pytest.raises(ValueError, match="only 12 images in its smallest class"):
        splits.first(13)


def test_too_few_training_files_is_a_clear_error_or_shared_out(capsys):
    with pytest.raises(ValueError, match=r"class '0' has \d+ training files; train 100 \+ validation 100"):
        protocol.three_splits("digits", 100, seed=0, transform=TO_TENSOR)
    shared = protocol.three_splits("digits", 100, test_per_class=5, seed=0, transform=TO_TENSOR, at_most=True)
    assert "note: digits: class" in capsys.readouterr().out
    assert not _source_indices(shared.train) & _source_indices(shared.val)
    assert min(torch.bincount(torch.tensor(protocol.targets_of(shared.val))).tolist()) >= 1


@pytest.mark.parametrize("kwargs, message", [
    ({"max_steps": 0}, "max_steps must be a positive integer"),
    ({"batch_size": 2.5}, "batch_size must be a positive integer"),
    ({"patience": 0}, "patience"),
    ({"lrs": ()}, "lrs must be a non-empty"),
    ({"lrs": (1e-3, -1.0)}, "lrs must be a non-empty"),
    ({"weight_decay": -1}, "weight_decay"),
    ({"lrs": (1e-2, 1e-3, 3e-4)}, "must be log-spaced"),
    ({"lrs": (1e-3, 1e-3, 1e-4)}, "must be log-spaced"),
    ({"max_extend": -1}, "max_extend"),
])
def test_bad_budgets_are_refused(kwargs, message):
    with pytest.raises(ValueError, match=message):
        protocol.Budget(**kwargs)


def test_equal_steps_budget_takes_exactly_max_steps(splits):
    budget = protocol.Budget(max_steps=23, batch_size=16, eval_every=5, patience=None, lrs=(1e-3,))
    model, params = _linear()()
    calls = []
    model.register_forward_hook(lambda module, args, out: calls.append(module.training))
    run = protocol.train(model, params, splits.train, splits.val, budget, 1e-3, seed=0)
    assert sum(calls) == 23 and run.steps == 23 and not run.stopped_early   # 23 training forwards
    assert [step for step, _ in run.curve] == [0, 5, 10, 15, 20, 23]
    assert run.epochs == pytest.approx(run.best_step * 16 / 120)


def test_early_stopping_keeps_the_best_validation_check(splits):
    budget = protocol.Budget(max_steps=400, batch_size=8, eval_every=2, patience=3, lrs=(0.5,))
    torch.manual_seed(0)
    model, params = _linear()()
    run = protocol.train(model, params, splits.train, splits.val, budget, 0.5, seed=0)
    values = [acc for _, acc in run.curve]
    assert run.stopped_early and run.steps < 400
    assert run.val_acc == max(values)
    assert run.best_step == run.curve[values.index(max(values))][0]        # the first best check
    assert len(run.curve) - 1 - values.index(max(values)) == 3              # stopped after `patience` checks
    assert protocol.evaluate(model, splits.val) == pytest.approx(run.val_acc)   # the best weights are back


def test_choose_picks_the_rate_with_the_best_validation(splits):
    budget = protocol.Budget(max_steps=30, batch_size=16, eval_every=10, patience=None, lrs=(1e-1, 1e-2, 1e-3),
                             max_extend=0)
    model, run = protocol.choose(_linear(), splits.train, splits.val, budget, seed=1)
    assert set(run.tried) == {1e-1, 1e-2, 1e-3} and run.grid == (1e-1, 1e-2, 1e-3)
    assert run.lr == max(run.tried, key=run.tried.get)
    assert run.val_acc == run.tried[run.lr]


def test_choose_refuses_a_grid_of_two_rates(splits):
    budget = protocol.Budget(max_steps=5, lrs=(1e-2, 1e-3))
    with pytest.raises(ValueError, match="at least 3 log-spaced rates"):
        protocol.choose(_linear(), splits.train, splits.val, budget)


class _Peaked(nn.Module):
    """A toy that names the learning rate its validation accuracy peaks at (``best``); the faked
    ``train`` below scores a rate by its log-distance from it."""

    def __init__(self, best: float):
        super().__init__()
        self.best = best
        self.weight = nn.Parameter(torch.zeros(1))

    def forward(self, x):
        return torch.zeros(len(x), 10) + self.weight.sum() * 0


def test_the_grid_grows_past_a_winning_edge_until_its_bound(splits, monkeypatch):
    """A toy whose best rate (1e-6) lies past the grid's low edge: the grid grows one step at a time,
    stops at max_extend, and the choice is marked at the bound; a peak inside stops the growth."""
    import math

    def fake_train(model, params, train_set, val_set, budget, lr, **kwargs):
        value = 1.0 - abs(math.log10(lr) - math.log10(model.best)) / 10
        return protocol.Run(lr=lr, steps=10, best_step=5, val_acc=value, curve=[(5, value)], train_size=10,
                            batch_size=1, stopped_early=False, max_steps=budget.max_steps)

    monkeypatch.setattr(protocol.runs, "train", fake_train)
    budget = protocol.Budget(max_steps=10, lrs=(1e-2, 1e-3, 1e-4), max_extend=1)
    _, run = protocol.choose(lambda: (_Peaked(1e-6), []), splits.train, splits.val, budget)
    assert run.grid == pytest.approx((1e-2, 1e-3, 1e-4, 1e-5)) and run.lr == pytest.approx(1e-5)
    assert run.at_bound
    wider = protocol.Budget(max_steps=10, lrs=(1e-2, 1e-3, 1e-4), max_extend=3)
    _, run = protocol.choose(lambda: (_Peaked(1e-6), []), splits.train, splits.val, wider)
    assert run.lr == pytest.approx(1e-6) and not run.at_bound     # found, with 1e-7 tried past it
    assert run.grid == pytest.approx((1e-2, 1e-3, 1e-4, 1e-5, 1e-6, 1e-7))
    _, run = protocol.choose(lambda: (_Peaked(1e-3), []), splits.train, splits.val, budget)
    assert run.lr == pytest.approx(1e-3) and run.grid == pytest.approx((1e-2, 1e-3, 1e-4)) and not run.at_bound
    _, run = protocol.choose(lambda: (_Peaked(1.0), []), splits.train, splits.val, budget)
    assert run.grid[0] == pytest.approx(1e-1) and run.at_bound                  # grows upward too


def test_convergence_is_the_best_check_outside_the_last_quarter_of_the_cap():
    def run(best, cap=100):
        return protocol.Run(lr=1e-3, steps=cap, best_step=best, val_acc=0.5, curve=[], train_size=10, batch_size=1,
                            stopped_early=False, max_steps=cap)
    assert run(75).converged and not run(76).converged and not run(100).converged and run(0).converged
    assert "NOT converged: still improving at its cap" in run(100).describe()


def test_a_run_still_improving_at_its_cap_is_flagged(splits):
    """A linear model at a small rate for a few steps is still climbing when the cap ends it."""
    budget = protocol.Budget(max_steps=8, batch_size=16, eval_every=2, patience=None, lrs=(3e-3,))
    torch.manual_seed(0)
    model, params = _linear()()
    short = protocol.train(model, params, splits.train, splits.val, budget, 3e-3, seed=0)
    assert short.best_step == 8 and not short.converged
    budget = protocol.Budget(max_steps=400, batch_size=16, eval_every=10, patience=3, lrs=(0.3,))
    torch.manual_seed(0)
    model, params = _linear()()
    long = protocol.train(model, params, splits.train, splits.val, budget, 0.3, seed=0)
    assert long.stopped_early and long.converged


def test_early_stopping_runs_at_a_constant_rate_and_equal_steps_decay_over_the_cap(splits, monkeypatch):
    seen = {}
    real = torch.optim.AdamW.step

    def spy(self, *args, **kwargs):
        seen.setdefault(self.defaults["weight_decay"], []).append(self.param_groups[0]["lr"])
        return real(self, *args, **kwargs)

    monkeypatch.setattr(torch.optim.AdamW, "step", spy)
    for patience, decay in ((3, 0.01), (None, 0.02)):
        budget = protocol.Budget(max_steps=20, batch_size=16, eval_every=5, patience=patience, weight_decay=decay,
                                 lrs=(1e-2,))
        model, params = _linear()()
        protocol.train(model, params, splits.train, splits.val, budget, 1e-2, seed=0)
    constant, cosine = seen[0.01], seen[0.02]
    assert set(constant) == {1e-2}
    assert cosine[0] == pytest.approx(1e-2) and cosine == sorted(cosine, reverse=True) and cosine[-1] < 1e-4


def _result(runs_scores):
    result = protocol.Result()
    for run, values in runs_scores:
        result.add(run, values)
    return result


def _run(best_step, cap=100, lr=1e-3, at_bound=False):
    return protocol.Run(lr=lr, steps=cap, best_step=best_step, val_acc=0.8, curve=[], train_size=100, batch_size=10,
                        stopped_early=False, max_steps=cap, tried={lr * 10: 0.7, lr: 0.8, lr / 10: 0.75},
                        at_bound=at_bound)


def test_table_refuses_a_verdict_between_converged_and_unconverged():
    import numpy as np
    rng = np.random.default_rng(0)
    good = [(rng.random(200) < 0.9).astype(float) for _ in range(3)]
    poor = [(rng.random(200) < 0.5).astype(float) for _ in range(3)]
    results = {"probe": _result([(_run(40), v) for v in poor]),
               "fine-tune": _result([(_run(100), v) for v in good]),
               "scratch": _result([(_run(50), v) for v in good])}
    text = protocol.table(results, baseline="probe")
    assert "fine-tune: not comparable: fine-tune still improving at its cap on 3 of 3 seeds" in text
    assert "scratch: scratch beat probe: +" in text and "beat" not in text.split("fine-tune:")[1].split("\n")[0]
    assert "0/3" in text and "3/3" in text                       # converged per method
    assert "0.01..0.0001 (3)" in text                           # the final grid
    assert "paired with the baseline, probe, on test (2 comparisons, Bonferroni: each interval at 97.5%)" in text
    both = {"A": _result([(_run(100), v) for v in good]), "B": _result([(_run(100), v) for v in poor])}
    assert "both still improving at the cap: a verdict at this budget only" in protocol.table(both, baseline="B")


def test_table_prints_grid_rates_steps_epochs_convergence_and_intervals():
    import numpy as np
    rng = np.random.default_rng(1)
    result = _result([(_run(60, lr=1e-3, at_bound=True), (rng.random(100) < p).astype(float))
                      for p in (0.7, 0.72, 0.74)])
    other = _result([(None, (rng.random(100) < 0.2).astype(float)) for _ in range(3)])
    text = protocol.table({"probe": result, "pixels": other}, title="digits", baseline="pixels")
    assert "test (reported)" in text and "lr chosen" in text and "steps kept/taken" in text and "converged" in text
    assert "0.001*" in text and "60/100" in text and "6.0" in text and "a chosen rate at the bound" in " ".join(text.split())
    assert "probe beat pixels: +" in text and "3 seeds x 100 test images" in text
    with pytest.raises(ValueError, match="split must be one of"):
        protocol.table({"probe": result}, split="val")
    with pytest.raises(ValueError, match="not an accuracy"):
        result.add(_run(5), 0.7)


class _Scrambled(Dataset):
    """The test split with labels replaced and every read recorded."""

    def __init__(self, dataset, reads: list):
        self.inner, self.reads = dataset, reads
        self.targets = [(t + 1) % 10 for t in protocol.targets_of(dataset)]

    def __len__(self):
        return len(self.inner)

    def __getitem__(self, i):
        self.reads.append(i)
        return self.inner[i][0], self.targets[i]


def test_no_choice_reads_the_test_split(splits):
    budget = protocol.Budget(max_steps=20, batch_size=16, eval_every=5, patience=2, lrs=(1e-1, 1e-2, 1e-3))
    contenders = {"linear": _linear(), "small MLP": lambda: (lambda m: (m, m.parameters()))(
        nn.Sequential(nn.Flatten(), nn.Linear(192, 32), nn.ReLU(), nn.Linear(32, 10)))}
    honest = protocol.contest(contenders, splits, budget, seed=0)
    reads: list[int] = []
    scrambled = protocol.contest(contenders, budget=budget, seed=0, train_set=splits.train, val_set=splits.val,
                                 test_set=_Scrambled(splits.test, reads))
    for name in contenders:
        (run_a, _), (run_b, _) = honest[name], scrambled[name]
        # the same rate, the same kept step, the same validation curve: the test labels changed nothing chosen
        assert (run_a.lr, run_a.best_step, run_a.curve) == (run_b.lr, run_b.best_step, run_b.curve)
    assert len(reads) == len(contenders) * len(splits.test)     # test read once per chosen model, only to score
    assert all(len(scores) == len(splits.test) for _, scores in honest.values())


def test_contest_doubles_the_cap_for_every_contender_until_converged(splits):
    budget = protocol.Budget(max_steps=4, batch_size=16, eval_every=2, patience=None, lrs=(1e-2, 1e-3, 1e-4),
                             max_extend=0)
    contenders = {"linear": _linear()}
    once = protocol.contest(contenders, splits, budget, seed=0)
    assert not once["linear"][0].converged and once["linear"][0].max_steps == 4
    doubled = protocol.contest(contenders, splits, budget, seed=0, max_doublings=3)
    run = doubled["linear"][0]
    assert run.max_steps in (8, 16, 32) and (run.converged or run.max_steps == 32)


def test_param_groups_scale_the_rate():
    model = nn.Sequential(nn.Linear(4, 4), nn.Linear(4, 2))
    optimizer = protocol._optimizer([{"params": model[0].parameters(), "lr_scale": 0.1},
                                     {"params": model[1].parameters()}], 1e-2, 0.0)
    assert [g["lr"] for g in optimizer.param_groups] == pytest.approx([1e-3, 1e-2])
    model[0].requires_grad_(False)
    with pytest.raises(ValueError, match="none of the parameters"):
        protocol._optimizer(model[0].parameters(), 1e-2, 0.0)


def test_per_class_none_trains_on_everything_validation_leaves(splits):
    everything = protocol.three_splits("digits", None, val_per_class=8, test_per_class=6, seed=3, transform=TO_TENSOR)
    assert not _source_indices(everything.train) & _source_indices(everything.val)
    assert len(everything.train) + len(everything.val) == len(everything.train.dataset)
    assert torch.bincount(torch.tensor(protocol.targets_of(everything.val))).tolist() == [8] * 10
    with pytest.raises(ValueError, match="needs val_per_class"):
        protocol.three_splits("digits", None, seed=0, transform=TO_TENSOR)


def test_the_budget_says_what_every_contender_gets():
    text = protocol.Budget(max_steps=50, lrs=(1e-2, 1e-3, 1e-4), patience=3, eval_every=5).describe()
    assert text.startswith("at most 50 AdamW steps of 32 images") and "from {0.01, 0.001, 0.0001}" in text
    assert "3 validation checks without a new best (every 5 steps), at a constant rate" in text
    assert "extended up to 2 step(s) past an edge that wins" in text
    assert "converged = best check not in the last 25% of the cap" in text
    assert "equal steps), cosine decay of the rate to zero over them; learning rate 0.003;" in protocol.Budget(
        lrs=(3e-3,), patience=None).describe()


def _small_bn_net():
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(),
                         nn.Conv2d(8, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(),
                         nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 10))


def test_recompute_bn_scores_every_check_with_statistics_of_its_own_weights(splits):
    """recompute_bn=True: the kept weights carry the running statistics recomputed on the training
    inputs (recomputing them again changes nothing); without it they are the training's moving averages."""
    from tlhelpers import robust

    budget = protocol.Budget(max_steps=12, batch_size=16, eval_every=4, patience=None, lrs=(0.05,))
    train_t, val_t = protocol.as_tensors(splits.train), protocol.as_tensors(splits.val)
    stats = {}
    for recompute in (False, True):
        net = _small_bn_net()
        protocol.train(net, net.parameters(), train_t, val_t, budget, 0.05, seed=0, recompute_bn=recompute)
        kept = {k: v.clone() for k, v in net.state_dict().items() if "running" in k}
        robust.reestimate_batchnorm(net, train_t.tensors[0], batch_size=protocol.RECOMPUTE_BATCH)
        again = {k: v for k, v in net.state_dict().items() if "running" in k}
        stats[recompute] = all(torch.allclose(kept[k], again[k], atol=1e-5) for k in kept)
    assert stats == {False: False, True: True}


def test_recompute_bn_without_batchnorm_is_a_clear_error(splits):
    budget = protocol.Budget(max_steps=2, batch_size=16, eval_every=1, patience=None, lrs=(0.05,))
    model, params = _linear()()
    with pytest.raises(ValueError, match="no BatchNorm layer with running statistics: leave it False"):
        protocol.train(model, params, protocol.as_tensors(splits.train), splits.val, budget, 0.05, recompute_bn=True)


def test_restore_best_false_keeps_the_last_step(splits):
    """The run still names its best check; only the weights left in the model differ."""
    budget = protocol.Budget(max_steps=9, batch_size=16, eval_every=3, patience=None, lrs=(10.0,))
    train_t, val_t = protocol.as_tensors(splits.train), protocol.as_tensors(splits.val)
    kept = {}
    for restore in (True, False):
        torch.manual_seed(0)
        model, params = _linear()()
        run = protocol.train(model, params, train_t, val_t, budget, 10.0, seed=0, restore_best=restore)
        kept[restore] = (run, [p.detach().clone() for p in model.parameters()])
    (best_run, best_weights), (last_run, last_weights) = kept[True], kept[False]
    assert best_run.curve == last_run.curve and best_run.best_step == last_run.best_step < budget.max_steps
    assert protocol.evaluate(_with(best_weights), val_t) == pytest.approx(best_run.val_acc)
    assert protocol.evaluate(_with(last_weights), val_t) == pytest.approx(last_run.curve[-1][1])


def _with(weights):
    model, _ = _linear()()
    with torch.no_grad():
        for p, w in zip(model.parameters(), weights, strict=True):
            p.copy_(w)
    return model


def test_grid_search_keeps_every_rate_and_best_of_picks_as_choose_does(splits):
    budget = protocol.Budget(max_steps=10, batch_size=16, eval_every=5, patience=None, lrs=(1e-1, 1e-2, 1e-3),
                             max_extend=1)
    every = protocol.grid_search(_linear(), splits.train, splits.val, budget, seed=2)
    assert list(every) == sorted(every, reverse=True) and {1e-1, 1e-2, 1e-3} <= set(every)
    model, run = protocol.best_of(every)
    _, chosen = protocol.choose(_linear(), splits.train, splits.val, budget, seed=2)
    assert (run.lr, run.val_acc, run.tried, run.at_bound) == (chosen.lr, chosen.val_acc, chosen.tried, chosen.at_bound)
    assert model is every[run.lr][0]


def test_when_no_rate_improves_on_the_start_the_grid_grows_down_then_stops_and_says_so(splits, capsys):
    """Rates far too small to move a linear model: every run keeps step 0. The grid grows downward
    only (from trained weights, smaller steps are the one direction that might still help; never
    upward, where a tie of nothing-learned runs would lead towards divergence), up to max_extend
    rates; then it stops, and the Run, its description, the note and the table say why."""
    budget = protocol.Budget(max_steps=6, batch_size=16, eval_every=2, patience=2, lrs=(1e-9, 1e-10, 1e-11),
                             max_extend=2)
    model, run = protocol.choose(_linear(), splits.train, splits.val, budget, seed=0)
    assert run.grid == pytest.approx((1e-9, 1e-10, 1e-11, 1e-12, 1e-13))   # two steps down, none up
    assert run.best_step == 0 and run.no_rate_improved and not run.at_bound
    assert "grid grown 2 step(s) down" in capsys.readouterr().out
    assert "no rate improved on the start (the starting weights kept)" in run.describe()
    assert protocol.evaluate(model, splits.val) == pytest.approx(run.val_acc)
    import numpy as np
    stuck = _result([(run, np.ones(10)), (run, np.zeros(10))])
    text = protocol.table({"stuck": stuck})
    assert "1e-09!" in text and "! on some seed no rate improved on the start" in " ".join(text.split())
    # a grid where some rate learns is unaffected: no mark, no note
    learns = protocol.Budget(max_steps=6, batch_size=16, eval_every=2, patience=2, lrs=(1e-1, 1e-2, 1e-3),
                             max_extend=0)
    _, run = protocol.choose(_linear(), splits.train, splits.val, learns, seed=0)
    assert run.best_step > 0 and not run.no_rate_improved and "note:" not in capsys.readouterr().out


def _three_seeds(rng, p, images=100, best_step=40):
    return _result([(_run(best_step), (rng.random(images) < p).astype(float)) for _ in range(3)])


def test_table_names_the_unit_each_seed_scored():
    import numpy as np
    rng = np.random.default_rng(2)
    results = {"probe": _three_seeds(rng, 0.5, 1200), "fine-tune": _three_seeds(rng, 0.8, 1200)}
    assert "3 seeds x 1200 test images" in protocol.table(results, baseline="probe")       # the default
    assert "3 seeds x 1200 shifted test images" in protocol.table(results, baseline="probe",
                                                                  unit="shifted test images")
    text = protocol.table(results, baseline="probe", unit="400 images x 3 shifts")
    assert "fine-tune beat probe: +" in text and text.rstrip().endswith("3 seeds x 400 images x 3 shifts")
    assert protocol.compared(results, "probe", unit="400 images x 3 shifts")["fine-tune"].paired.size() == \
        "3 seeds x 400 images x 3 shifts"
    with pytest.raises(ValueError, match="spells 400 x 2 = 800 items per seed"):
        protocol.table(results, baseline="probe", unit="400 images x 2 shifts")


def test_compared_lines_are_the_same_words_and_carry_the_paired_interval():
    import numpy as np

    from tlhelpers import compare
    rng = np.random.default_rng(3)
    results = {"probe": _three_seeds(rng, 0.5), "fine-tune": _three_seeds(rng, 0.9),
               "late": _three_seeds(rng, 0.9, best_step=100)}
    lines = protocol.compared(results, "probe")
    intervals = protocol.paired_against(results, "probe")
    expected = compare.against("probe", {name: r.scores for name, r in results.items()})
    assert list(intervals) == ["fine-tune", "late"] and all(isinstance(p, compare.Paired) for p in intervals.values())
    assert intervals == expected
    ft, late = lines["fine-tune"], lines["late"]
    # the old string, unchanged: printed, concatenated, tested with startswith
    assert isinstance(ft, str) and ft == expected["fine-tune"].sentence("fine-tune", "probe")
    assert ("On test: " + ft).startswith("On test: fine-tune beat probe: +") and f"{ft}" == str(ft)
    assert late.startswith("not comparable: late still improving at its cap on 3 of 3 seeds")
    # and the numbers behind it, for a notebook that acts on them
    assert ft.verdict == "beat" and ft.comparable and ft.paired is not None
    assert (ft.mean, ft.low, ft.high) == (expected["fine-tune"].mean, expected["fine-tune"].low,
                                          expected["fine-tune"].high) and ft.low > 0
    assert ft.interval() == expected["fine-tune"].interval() and ft.detectable == expected["fine-tune"].detectable
    assert late.verdict == "not comparable" and not late.comparable and late.paired.verdict == "beat"
    import copy
    import pickle
    assert pickle.loads(pickle.dumps(ft)).verdict == "beat" and copy.deepcopy(late).verdict == "not comparable"
    with pytest.raises(ValueError, match="baseline 'nope' is not in the table"):
        protocol.paired_against(results, "nope")


def test_contest_hands_back_each_chosen_model(splits):
    budget = protocol.Budget(max_steps=10, batch_size=16, eval_every=5, patience=2, lrs=(1e-1, 1e-2, 1e-3),
                             max_extend=0)
    results = protocol.contest({"linear": _linear()}, splits, budget, seed=0)
    run, scores = results["linear"]                                  # the old unpacking still works
    assert results["linear"].run is run and results["linear"].scores is scores
    model = results["linear"].model
    assert isinstance(model, nn.Module) and not model.training
    assert protocol.evaluate(model, splits.val) == pytest.approx(run.val_acc)      # the kept check's weights
    assert protocol.scores(model, splits.test).tolist() == scores.tolist()
    table = protocol.Result()
    table.add(*results["linear"])                                    # and so does Result.add(*pair)
    assert table.test == [float(scores.mean())]
    import copy
    again = copy.deepcopy(results["linear"])
    assert again.run.lr == run.lr and isinstance(again.model, nn.Module)


def test_param_groups_as_a_function_of_the_rate_keep_their_own_lr():
    """Plain-PyTorch groups, each with its own lr, built from the rate the grid is trying."""
    model = nn.Sequential(nn.Linear(4, 4), nn.Linear(4, 2))
    optimizer = protocol._optimizer(lambda lr: [{"params": model[0].parameters(), "lr": lr / 10},
                                                {"params": model[1].parameters(), "lr": lr}], 1e-2, 0.0)
    assert [group["lr"] for group in optimizer.param_groups] == [1e-3, 1e-2]


def test_from_a_warm_start_whose_steps_all_lose_the_grid_grows_down_to_a_rate_that_helps(splits):
    """A linear model trained a little, then a grid of rates so large that every step loses: none
    improves on the start, so the grid grows downward, finds a rate that does, and keeps growing
    past it while the smallest rate wins, as at any edge."""
    warm = nn.Sequential(nn.Flatten(), nn.Linear(3 * 8 * 8, 10))
    torch.manual_seed(0)
    warm[1].reset_parameters()
    first = protocol.Budget(max_steps=6, batch_size=16, eval_every=6, patience=None, lrs=(1e-2, 1e-3, 1e-4),
                            max_extend=0)
    protocol.train(warm, warm.parameters(), splits.train, splits.val, first, 1e-2, seed=0)
    state = {k: v.clone() for k, v in warm.state_dict().items()}

    def build():
        model = nn.Sequential(nn.Flatten(), nn.Linear(3 * 8 * 8, 10))
        model.load_state_dict(state)
        return model, model.parameters()

    budget = protocol.Budget(max_steps=12, batch_size=16, eval_every=2, patience=3, lrs=(10.0, 1.0, 0.1), max_extend=3)
    _, run = protocol.choose(build, splits.train, splits.val, budget, seed=0)
    assert all(run.tried[lr] == run.tried[10.0] for lr in (10.0, 1.0, 0.1))      # the start, kept by all three
    assert min(run.grid) < 0.1 and run.lr < 0.1 and run.best_step > 0
    assert not run.no_rate_improved and run.val_acc > run.tried[10.0]
