"""The parameter schemas: one declaration per experiment, checked values, and notebooks that
declare exactly the schema."""
import ast
from pathlib import Path

import papermill
import pytest

from lib.core import evaluate, losses, quantizers
from lib.core.names import LOSSES, NORMALIZATIONS, PRECISIONS, STE_VARIANTS
from lib.experiments import registry
from lib.experiments.schema import SchemaError, build, check_entry, check_value, defaults, from_namespace
from lib.experiments.thin_resnet.params import ThinResNetParams
from lib.experiments.toy.params import ToyParams
from lib.experiments.training.params import TrainingParams

ROOT = Path(__file__).resolve().parents[1]


def test_names_agree_with_the_core():
    assert tuple(quantizers.SURROGATES) == STE_VARIANTS
    assert quantizers.PRECISIONS == PRECISIONS and evaluate.NORMALIZATIONS == NORMALIZATIONS
    assert losses.LOSSES == LOSSES
    for precision in PRECISIONS:  # every name the schema accepts, the core accepts
        quantizers.Quantizer(precision)


@pytest.mark.parametrize("key, value, message", [
    ("num_dim", 0, "expected positive integers, got 0"),
    ("num_dim", True, "expected int (the default is 8), got true"),
    ("num_dim", 2.0, "expected int"),
    ("seed", -1, "expected non-negative integers, got -1"),
    ("lr_max", float("nan"), "expected positive numbers"),
    ("lr_max", float("inf"), "expected positive numbers"),
    ("eps_grid", [0.1, -1], "expected positive numbers, got [0.1, -1.0]"),
    ("eps_grid", [], "expected a non-empty list, got []"),
    ("eps_grid", 0.1, "expected a list of float"),
    ("nes_samples", [500, 500], "repeated values in [500, 500]"),
    ("ste_variants", ["clipped", "sign"], "expected one of identity, clipped, steep, swishsign, polynomial"),
    ("teacher_act", "3bit", "expected one of binary, ternary, 2bit, fp"),
    ("device", "cuda:", "expected one of cpu, cuda, auto, cuda:N"),
    ("normalize", "batch", "expected one of layer, global, none"),
    ("cache_dir", "", "expected non-empty strings"),
    ("colour", 1, "not a parameter of ToyParams"),
])
def test_bad_values_are_refused_naming_the_key(key, value, message):
    with pytest.raises(SchemaError) as info:
        check_value(ToyParams, key, value)
    assert info.value.key == key and message in info.value.message
    with pytest.raises(ValueError, match=key):  # constructing the class checks the same way
        build(ToyParams, {key: value})


def test_good_values_pass_and_ints_become_floats():
    assert check_value(ToyParams, "lr_max", 10) == 10.0 and isinstance(check_value(ToyParams, "lr_max", 10), float)
    assert check_value(ToyParams, "eps_grid", [1, 0.5]) == [1.0, 0.5]
    assert check_value(ToyParams, "device", "cuda:1") == "cuda:1"
    assert check_value(ThinResNetParams, "decrease_acts", []) == []  # may be empty
    p = ToyParams(lr_max=10, eps_grid=[1])
    assert isinstance(p.lr_max, float) and p.eps_grid == [1.0] and isinstance(p.eps_grid[0], float)


def test_grid_axes():
    assert check_entry(ToyParams, "num_dim", [8, 16], axis=True) == [8, 16]
    assert check_entry(ToyParams, "eps_grid", [[0.1], [0.1, 0.3]], axis=True) == [[0.1], [0.1, 0.3]]
    for value, message in ((8, "grid axis: expected a non-empty list"), ([], "grid axis: expected a non-empty list"),
                           ([8, 8], "grid axis has repeated values"), ([8, 0], "expected positive integers")):
        with pytest.raises(SchemaError, match=message):
            check_entry(ToyParams, "num_dim", value, axis=True)


@pytest.mark.parametrize("schema, values, key", [
    (ToyParams, {"lr_min": 1.0, "lr_max": 0.1}, "lr_min"),
    (ToyParams, {"lr_refine": [1.0]}, "lr_refine"),
    (ToyParams, {"lr_refine": [1.0, 0.5]}, "lr_refine"),
    (ToyParams, {"act": "ternary"}, "diagnose"),  # the exact smoothed gradient needs a binary student
    (ToyParams, {"num_init": 501}, "num_init"),  # the reported initialisations stay below the tuning ones (500 …)
    (TrainingParams, {"num_init": 501}, "num_init"),
    (ThinResNetParams, {"acts": ["binary"], "decrease_acts": ["ternary"]}, "decrease_acts"),
    (ThinResNetParams, {"states": ["trained"], "train_epochs": 0}, "train_epochs"),
])
def test_cross_field_rules(schema, values, key):
    with pytest.raises(SchemaError) as info:
        build(schema, values)
    assert info.value.key == key


def test_from_namespace_takes_the_schema_names_only():
    namespace = {**defaults(ToyParams), "num_dim": 16, "results_path": "x.json", "other": 1}
    assert from_namespace(ToyParams, namespace) == ToyParams(num_dim=16)
    with pytest.raises(SchemaError, match="num_dim"):
        from_namespace(ToyParams, {**namespace, "num_dim": -1})


@pytest.mark.parametrize("experiment", registry.EXPERIMENTS, ids=lambda e: e.name)
def test_notebook_parameters_cell_is_the_schema(experiment):
    """Exactly the schema's names (and results_path), each with the schema's default."""
    declared = papermill.inspect_notebook(str(ROOT / experiment.notebook))
    assert set(declared) == set(defaults(experiment.schema)) | {"results_path"}
    for name, default in defaults(experiment.schema).items():
        assert ast.literal_eval(declared[name]["default"]) == default, name


def test_a_results_files_parameters_come_back_typed_whatever_version_wrote_them():
    """A key the class lost is dropped, one it gained takes its default, and a value a rule
    introduced later would reject is read as written (the run that wrote it was valid then)."""
    from lib.experiments.records import parameters_of
    from lib.experiments.toy.params import ToyParams

    stored = {"parameters": {"num_dim": 16, "nes_samples": [7], "retired_option": 3, "ste_variants": []}}
    p = parameters_of(stored, ToyParams)
    assert isinstance(p, ToyParams)
    assert (p.num_dim, p.nes_samples, p.ste_variants) == (16, [7], [])
    assert p.batch_size == ToyParams().batch_size and p.sigma_grid == ToyParams().sigma_grid
    assert not hasattr(p, "retired_option")
    p.sigma_grid.append(99.0)  # a default list is the instance's own
    assert 99.0 not in ToyParams().sigma_grid
