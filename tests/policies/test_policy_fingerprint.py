"""config_fingerprint is stable, order-free and blind to bookkeeping keys; check_model uses it."""

from __future__ import annotations

import hashlib
import json
import warnings
from collections import OrderedDict
from types import SimpleNamespace

import numpy as np
import pytest

from policies import Policy, PolicyError, config_fingerprint

CONFIG = {"num_layers": 2, "in_channels": 16, "patch_size": (1, 2, 2)}


def test_fingerprint_is_sha256_of_canonical_json():
    # Canonical JSON: sorted keys, no spaces, tuples as lists.
    canonical = b'{"in_channels":16,"num_layers":2,"patch_size":[1,2,2]}'
    assert config_fingerprint(CONFIG) == hashlib.sha256(canonical).hexdigest()[:16]
    assert config_fingerprint(CONFIG) == "b04eaa6002b91077"  # pinned: a change breaks every policy


def test_key_order_does_not_matter():
    reordered = OrderedDict(reversed(list(CONFIG.items())))
    assert config_fingerprint(reordered) == config_fingerprint(CONFIG)


def test_underscore_keys_are_ignored():
    noisy = dict(CONFIG, _name_or_path="/somewhere/else", _diffusers_version="0.42.1",
                 _class_name="WanTransformer3DModel")
    assert config_fingerprint(noisy) == config_fingerprint(CONFIG)


def test_tuples_lists_and_numpy_hash_alike():
    as_lists = json.loads(json.dumps(CONFIG))  # what config.json gives back
    as_numpy = dict(CONFIG, num_layers=np.int64(2), patch_size=np.array([1, 2, 2]))
    assert config_fingerprint(as_lists) == config_fingerprint(as_numpy) == config_fingerprint(CONFIG)


@pytest.mark.parametrize(
    "change",
    [{"num_layers": 3}, {"in_channels": 16.5}, {"extra": None}, {"patch_size": (1, 2)}],
    ids=["value", "float", "new-key", "shorter-tuple"],
)
def test_architecture_changes_change_the_fingerprint(change):
    assert config_fingerprint(dict(CONFIG, **change)) != config_fingerprint(CONFIG)


def test_fingerprint_shape():
    fp = config_fingerprint({})
    assert len(fp) == 16 and int(fp, 16) >= 0


def test_odd_values_do_not_crash():
    odd = {"dtype": SimpleNamespace(x=1), "nan": float("nan"), 3: "int key", "nested": {"_x": 1}}
    assert config_fingerprint(odd) == config_fingerprint(dict(odd, nested={}))


def test_a_model_object_gives_its_config():
    assert config_fingerprint(SimpleNamespace(config=CONFIG)) == config_fingerprint(CONFIG)


def test_non_mapping_is_refused():
    with pytest.raises(PolicyError, match="needs a mapping such as `transformer.config`"):
        config_fingerprint([1, 2])


# ---- check_model --------------------------------------------------------------------------------


def _policy(valid_dict, fingerprint):
    valid_dict["model"]["fingerprint"] = fingerprint
    return Policy.from_dict(valid_dict, source="toy.json")


def test_matching_fingerprint_passes(valid_dict):
    policy = _policy(valid_dict, config_fingerprint(CONFIG))
    assert policy.check_model(config_fingerprint(CONFIG)) is True
    assert policy.check_model(CONFIG) is True  # the config itself is accepted too


def test_mismatch_is_refused_naming_both_fingerprints_and_the_fix(valid_dict):
    policy = _policy(valid_dict, "aaaaaaaaaaaaaaaa")
    with pytest.raises(PolicyError) as info:
        policy.check_model("bbbbbbbbbbbbbbbb")
    message = str(info.value)
    assert message.startswith("toy.json: ")
    assert "aaaaaaaaaaaaaaaa" in message and "bbbbbbbbbbbbbbbb" in message
    assert "sencache-calibrate collect/fit/export for this model" in message
    assert "strict=False" in message


def test_non_strict_mismatch_warns(valid_dict):
    policy = _policy(valid_dict, "aaaaaaaaaaaaaaaa")
    with pytest.warns(UserWarning, match="fingerprint aaaaaaaaaaaaaaaa.*is bbbbbbbbbbbbbbbb"):
        assert policy.check_model("bbbbbbbbbbbbbbbb", strict=False) is False


def test_load_checks_the_fingerprint(valid_dict, tmp_path):
    path = _policy(valid_dict, "aaaaaaaaaaaaaaaa").save(tmp_path / "p.json")
    assert Policy.load(path, model_fingerprint="aaaaaaaaaaaaaaaa").model.name == "toy-wan"
    with pytest.raises(PolicyError, match="calibrated for model 'toy-wan'"):
        Policy.load(path, model_fingerprint="bbbbbbbbbbbbbbbb")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        Policy.load(path, model_fingerprint="bbbbbbbbbbbbbbbb", strict=False)
    assert len(caught) == 1
