"""save -> load and JSON round trips: what goes in comes back equal, and writes are atomic."""

from __future__ import annotations

import json
import os
import stat

import pytest

from policies import (
    EpsSchedule,
    OperatingPoint,
    Policy,
    PolicyError,
    SensitivityTable,
    constant_policy,
    paper_policy,
)

TABLE = SensitivityTable([999.0, 666.0, 333.0, 0.0], [3.0, 2.0, 1.5, 1.0], [0.1, 0.1, 0.2, 0.3])


def _calibrated(valid):
    return Policy.from_dict(valid)


def _paper(_):
    return paper_policy("WanTransformer3DModel", "fedcba9876543210", TABLE, 0.05, 0.15)


def _constant(_):
    return constant_policy(0.2, max_skips=1, warmup_steps=0.1, final_steps=2,
                           expected_nfe_fraction=0.6)


def _many_knots(_):
    # 16 knots, as a fitted eps/G(p) curve would carry; fractional zones on both ends.
    positions = [i / 15 for i in range(16)]
    point = OperatingPoint("shaped", EpsSchedule(positions, [0.01 * (i + 1) ** 1.5 for i in range(16)]),
                           max_skips=4, warmup_steps=0.15, final_steps=0.05,
                           expected_nfe_fraction=1.0, expected_error=0.0)
    base = constant_policy()
    return Policy(base.model, base.scheduler, TABLE, base.predictor, [point], None,
                  {"metrics": {"psnr": [1, 2.5]}, "note": "ünïcode ✓"})


BUILDERS = [_calibrated, _paper, _constant, _many_knots]
IDS = ["calibrated-two-points", "paper-two-level", "constant-fractional-zones", "sixteen-knots"]


@pytest.mark.parametrize("build", BUILDERS, ids=IDS)
def test_save_load_round_trip(build, valid_dict, tmp_path):
    policy = build(valid_dict)
    path = policy.save(tmp_path / "policy.json")
    loaded = Policy.load(path)
    assert loaded == policy
    assert loaded.to_dict() == policy.to_dict()
    assert loaded.source == str(path)
    assert hash(loaded) == hash(policy)  # usable as a cache key


@pytest.mark.parametrize("build", BUILDERS, ids=IDS)
def test_json_round_trip(build, valid_dict):
    policy = build(valid_dict)
    data = json.loads(json.dumps(policy.to_dict()))
    assert Policy.from_dict(data) == policy
    assert Policy.from_json(policy.to_json()) == policy


def test_valid_dict_round_trips_to_itself(valid_dict):
    assert Policy.from_dict(valid_dict).to_dict() == valid_dict


def test_from_dict_does_not_mutate_its_input(valid_dict):
    before = json.dumps(valid_dict)
    policy = Policy.from_dict(valid_dict)
    policy.provenance["split"]["calib"] = 0  # the policy holds a copy
    assert json.dumps(valid_dict) == before


def test_zone_types_survive_the_round_trip(valid_dict, tmp_path):
    loaded = Policy.load(Policy.from_dict(valid_dict).save(tmp_path / "p.json"))
    balanced, fast = loaded.operating_points
    assert type(balanced.warmup_steps) is int and balanced.warmup_steps == 2
    assert type(fast.warmup_steps) is float and fast.warmup_steps == 0.1


def test_save_replaces_atomically_and_leaves_no_temp_file(valid_dict, tmp_path):
    target = tmp_path / "policy.json"
    target.write_text("old")
    Policy.from_dict(valid_dict).save(target)
    assert json.loads(target.read_text())["format"] == "sencache-policy"
    assert os.listdir(tmp_path) == ["policy.json"]


def test_save_makes_a_readable_file_and_the_parent_folder(valid_dict, tmp_path):
    target = tmp_path / "new" / "folder" / "policy.json"
    Policy.from_dict(valid_dict).save(target)
    assert stat.S_IMODE(target.stat().st_mode) == 0o644


def test_save_failure_is_a_policy_error_and_leaves_nothing(valid_dict, tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    with pytest.raises(PolicyError, match="cannot write the policy file"):
        Policy.from_dict(valid_dict).save(blocker / "policy.json")  # parent is a file


def test_saved_file_is_indented_json(valid_dict, tmp_path):
    text = Policy.from_dict(valid_dict).save(tmp_path / "p.json").read_text()
    assert text.startswith('{\n  "format": "sencache-policy",\n  "version": 2,')
    assert text.endswith("}\n")
