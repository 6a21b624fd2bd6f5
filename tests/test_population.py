"""The toy's population protocol on problems with a known answer: a random direction and a
gradient fitted to one batch's noise (CDG on shuffled targets) decrease nothing on held-out rows,
while CDG on the real batch does; cross-fitted over initialisations (lib/experiments/toy)."""
import pytest
import torch

from lib.core import estimators as E
from lib.experiments.inference import cross_fit, over_inits
from lib.experiments.toy import population as P
from lib.experiments.toy import protocol
from lib.experiments.toy.params import ToyParams
from lib.experiments.toy.run import pretrain_student, run
from lib.training.gaussian import toy_problem

LRS = [0.003, 0.01, 0.03, 0.1, 0.3, 1.0, 3.0]
INITS = range(8)


def held_out_score(direction, student=lambda problem: problem.student) -> tuple:
    """Cross-fitted relative held-out decrease on the hidden layers over 8 initialisations of the
    num_dim 8 toy, for ``direction(model, problem) -> grads``."""
    table: dict = {}
    for i in INITS:
        problem = toy_problem(8, 100 + i)
        model = student(problem)
        xe, ye = problem.batch(32768, P.EVAL_BATCH)
        scorer = P.Scorer(model, xe, ye, LRS, "layer")
        curve = scorer.curve(direction(model, problem), P.HIDDEN)
        for k, lr in enumerate(LRS):
            table.setdefault(lr, {})[i] = float(curve[k])
    return over_inits(cross_fit(table).scores)


def test_a_random_direction_decreases_nothing_held_out():
    est = held_out_score(lambda model, problem: P.random_direction(model, 5))
    assert est.n == 8 and est.interval[0] <= 0 <= est.interval[1]


def test_cdg_fitted_to_shuffled_targets_decreases_nothing_held_out_and_real_cdg_does(tmp_path):
    """On pretrained students (which already match the targets' marginal), CDG on a batch whose
    targets are shuffled fits that batch's noise: no held-out decrease; CDG on real rows gives one."""
    p = ToyParams(num_dim=8, pretrained=True, pretrain_steps=300, pretrain_batch_size=1024, pretrain_lr=0.01,
                  cache_dir=str(tmp_path))

    def pretrained(problem):
        return pretrain_student(problem, p, progress=False)[0]

    def shuffled(model, problem):
        x, y = problem.batch(512, 0)
        perm = torch.randperm(len(y), generator=torch.Generator().manual_seed(1))
        return E.cdg(model, x, y[perm], eps=0.1)

    noise = held_out_score(shuffled, pretrained)
    real = held_out_score(lambda model, problem: E.cdg(model, *problem.batch(16000, 1), eps=0.1), pretrained)
    assert noise.interval[0] <= 0 <= noise.interval[1]
    assert real.interval[0] > 0 and real.mean > 5 * abs(noise.mean)


def test_a_run_scores_every_estimate_paired_on_its_evaluation_set():
    p = ToyParams(num_dim=4, eps_grid=[0.1], sigma_grid=[0.3], nes_samples=[20], ste_variants=["clipped"],
                  num_lr=4, num_lr_refine=2, batch_size=32, num_init=3, num_batch=2, eval_rows=2048,
                  large_batch_sizes=[256])
    r = run(p, progress=False)
    pop = r["population"]
    assert pop["eval_rows"] == 2048 and [b["init"] for b in pop["base_losses"]] == [0, 1, 2]
    for rec in pop["records"]:
        assert rec["inits"] == [0, 0, 1, 1, 2, 2] and all(len(c) == len(r["lrs"]) for c in rec["curves"])
    metrics = {(rec["estimate"]["estimator"], rec["metric"], rec["batch_size"]) for rec in pop["records"]}
    assert ("shrink_readout", "all", 32) in metrics and ("random", "hidden", 32) in metrics
    assert ("cdg", "hidden_in_sample", 32) in metrics and ("nes", "fc3.weight", 32) in metrics
    assert ("cdg", "hidden", 256) in metrics and ("nes", "hidden", 256) not in metrics
    # a step on the readout alone is scored on "all" only, and decreases exactly as its curve says
    sc = protocol.scores(r, "all")
    assert sc["shrink the readout"].estimate.n == 3 and sc["CDG"].cross_fitted
    comps = protocol.comparisons([r])
    assert {(c.a, c.b, c.batch_size) for c in comps} >= {("CDG", "best STE", 32), ("CDG", "best STE", 256),
                                                           ("NES 20", "CDG", 32)}
    assert all(c.p_holm >= c.difference.p for c in comps)


@pytest.mark.parametrize("bad", [{"eval_rows": 0}, {"large_batch_sizes": [1024]}, {"equivalence_margin": -1.0}])
def test_bad_protocol_parameters_are_refused(bad):
    with pytest.raises(ValueError):
        ToyParams(**{"batch_size": 1024, **bad})


def _all_layer_run(cdg, shrink, num_dim=8, inits=6, sd=0.01, seed=0):
    """A run whose held-out decreases with the readout stepped are ``cdg`` and ``shrink`` (+ noise)."""
    import numpy as np

    rng = np.random.default_rng(seed)

    def record(estimate, value):
        return {"estimate": estimate, "metric": "all", "batch_size": 64, "inits": list(range(inits)),
                "curves": [[0.0, float(value + rng.normal(0, sd))] for _ in range(inits)]}

    return {"num_dim": num_dim, "lrs": [0.01, 0.1],
            "parameters": {"batch_size": 64, "nes_samples": [500], "ste_variants": [], "equivalence_margin": 0.01},
            "population": {"records": [record({"estimator": "cdg", "layers": "all", "eps": 0.1}, cdg),
                                       record({"estimator": "shrink_readout", "layers": "all"}, shrink)],
                           "base_losses": [{"init": i, "loss": 1.0} for i in range(inits)]}}


def test_the_readout_finding_names_only_where_the_data_free_direction_does_as_well():
    from lib.experiments.toy.population_report import readout_finding

    sections = ("a", "b")
    text = readout_finding([_all_layer_run(0.4, 0.5, 8), _all_layer_run(0.6, 0.1, 16)], False, sections)
    assert "num_dim 8: 0.499 [" in text and "num_dim 16" not in text  # at 16 CDG beats the control
    assert readout_finding([_all_layer_run(0.01, 0.0)], True, sections) == ""  # the control decreases nothing


def test_comparisons_are_uninformative_where_cdg_does_not_beat_the_random_direction():
    from lib.experiments.inference import Difference
    from lib.experiments.toy.protocol import Comparison, informative

    def comp(dim, a, b, mean, p):
        return Comparison(a=a, b=b, difference=Difference(mean, [mean - 0.1, mean + 0.1], 10, p), p_holm=p,
                          p_equivalent_holm=1.0, margin=0.01, num_dim=dim, batch_size=64)

    comps = [comp(8, "CDG", "random direction", 0.3, 0.001), comp(8, "best STE", "random direction", 0.05, 0.4),
             comp(16, "CDG", "random direction", 0.05, 0.3), comp(16, "best STE", "random direction", 0.3, 0.001),
             comp(32, "CDG", "random direction", -0.3, 0.001)]
    assert informative(comps, 8, 64)  # the reference tells a gradient from a random direction
    assert not informative(comps, 16, 64) and not informative(comps, 32, 64) and not informative(comps, 64, 64)
