"""Every refusal names the source, the field path and the reason, and is a PolicyError."""

from __future__ import annotations

import json
import re

import pytest

from policies import InputError, Policy, PolicyError

NAN, INF = float("nan"), float("inf")


def _set(path, value):
    """A mutation that sets `path` (keys and list indices) in the policy dict."""

    def mutate(d):
        *head, last = path
        for key in head:
            d = d[key]
        d[last] = value

    return mutate


def _delete(path):
    def mutate(d):
        *head, last = path
        for key in head:
            d = d[key]
        del d[last]

    return mutate


OP0, OP1 = ("operating_points", 0), ("operating_points", 1)

# (id, mutation, field path as written in the message, reason fragment)
CASES = [
    ("format-missing", _delete(["format"]), "format", "is missing: this is not a SenCache policy"),
    ("format-wrong", _set(["format"], "other"), "format", 'must be "sencache-policy"'),
    ("version-missing", _delete(["version"]), "version", "is missing"),
    ("version-string", _set(["version"], "2"), "version", "must be the integer 2"),
    ("version-float", _set(["version"], 2.0), "version", "must be the integer 2"),
    ("version-bool", _set(["version"], True), "version", "must be the integer 2"),
    ("version-newer", _set(["version"], 3), "version", "reads version 2 only.*upgrade"),
    ("version-zero", _set(["version"], 0), "version", "unknown version"),
    ("unknown-top-field", _set(["operating_point"], "x"), "operating_point", "not a field"),
    ("model-missing", _delete(["model"]), "model", "is missing"),
    ("model-not-object", _set(["model"], ["x"]), "model", "must be a ModelInfo or a JSON object"),
    ("model-class-missing", _delete(["model", "class"]), "model.class", "is missing"),
    ("model-fingerprint-int", _set(["model", "fingerprint"], 12), "model.fingerprint",
     "must be a string, got int"),
    ("model-name-empty", _set(["model", "name"], " "), "model.name", "non-empty"),
    ("model-extra", _set(["model", "hash"], "x"), "model.hash", "not a field"),
    ("scheduler-config-list", _set(["scheduler", "config"], [1]), "scheduler.config",
     "must be a JSON object"),
    ("scheduler-config-nan", _set(["scheduler", "config", "shift"], NAN), "scheduler.config.shift",
     "must be finite"),
    ("timesteps-missing", _delete(["sensitivity", "timesteps"]), "sensitivity.timesteps", "missing"),
    ("timesteps-string", _set(["sensitivity", "timesteps"], "0,1"), "sensitivity.timesteps",
     "must be a list of numbers"),
    ("timesteps-empty", _set(["sensitivity", "timesteps"], []), "sensitivity.timesteps",
     "at least 1"),
    ("timesteps-not-monotone", _set(["sensitivity", "timesteps"], [1000, 0, 500]),
     r"sensitivity.timesteps\[2\]", "strictly increasing or strictly decreasing"),
    ("timesteps-repeated", _set(["sensitivity", "timesteps"], [1000, 1000, 0]),
     r"sensitivity.timesteps\[1\]", "no repeats"),
    ("timesteps-inf", _set(["sensitivity", "timesteps", 0], INF), r"sensitivity.timesteps\[0\]",
     "must be finite"),
    ("jx-nan", _set(["sensitivity", "J_x", 1], NAN), r"sensitivity.J_x\[1\]", "must be finite"),
    ("jx-inf", _set(["sensitivity", "J_x", 0], INF), r"sensitivity.J_x\[0\]", "must be finite"),
    ("jt-negative", _set(["sensitivity", "J_t", 2], -1.0), r"sensitivity.J_t\[2\]", "must be >= 0"),
    ("jx-string-number", _set(["sensitivity", "J_x", 0], "1.0"), r"sensitivity.J_x\[0\]",
     "must be a number, got str"),
    ("jx-bool", _set(["sensitivity", "J_x", 0], True), r"sensitivity.J_x\[0\]", "must be a number"),
    ("jx-short", _set(["sensitivity", "J_x"], [1.0, 2.0]), "sensitivity.J_x",
     "has 2 entries but `timesteps` has 3"),
    ("jt-long", _set(["sensitivity", "J_t"], [1.0] * 4), "sensitivity.J_t", "has 4 entries"),
    ("estimator-int", _set(["sensitivity", "estimator"], 5), "sensitivity.estimator",
     "must be a string"),
    ("a-negative", _set(["predictors", "none", "a"], -0.5), "predictors.none.a", "must be >= 0"),
    ("b-nan", _set(["predictors", "none", "b"], NAN), "predictors.none.b", "must be finite"),
    ("c-inf", _set(["predictors", "none", "c"], INF), "predictors.none.c", "must be finite"),
    ("a-null", _set(["predictors", "none", "a"], None), "predictors.none.a", "must be a number, got NoneType"),
    ("a-missing", _delete(["predictors", "none", "a"]), "predictors.none.a", "is missing"),
    ("r2-above-one", _set(["predictors", "none", "r2"], 1.5), "predictors.none.r2", "must be <= 1"),
    ("spearman-below", _set(["predictors", "none", "spearman"], -2), "predictors.none.spearman", "must be >= -1"),
    ("points-empty", _set(["operating_points"], []), "operating_points", "at least one"),
    ("points-object", _set(["operating_points"], {"a": 1}), "operating_points", "must be a list"),
    ("point-string", _set(list(OP1), "fast"), r"operating_points\[1\]",
     "must be a OperatingPoint or a JSON object"),
    ("point-name-duplicate", _set([*OP1, "name"], "balanced"), r"operating_points\[1\].name",
     r"already the name of operating_points\[0\]"),
    ("point-name-missing", _delete([*OP0, "name"]), r"operating_points\[0\].name", "is missing"),
    ("eps-values-nan", _set([*OP1, "eps", "values", 3], NAN),
     r"operating_points\[1\].eps.values\[3\]", "must be finite"),
    ("eps-values-negative", _set([*OP1, "eps", "values", 2], -0.1),
     r"operating_points\[1\].eps.values\[2\]", "must be >= 0"),
    ("eps-values-short", _set([*OP0, "eps", "values"], [0.1, 0.2]),
     r"operating_points\[0\].eps.values", "has 2 entries but `positions` has 3"),
    ("eps-positions-not-increasing", _set([*OP0, "eps", "positions"], [0.0, 0.0, 1.0]),
     r"operating_points\[0\].eps.positions\[1\]", "strictly increasing, got 0 then 0"),
    ("eps-positions-decreasing", _set([*OP1, "eps", "positions"], [0.0, 0.75, 0.25, 1.0]),
     r"operating_points\[1\].eps.positions\[2\]", "strictly increasing, got 0.75 then 0.25"),
    ("eps-position-above-one", _set([*OP0, "eps", "positions", 2], 1.5),
     r"operating_points\[0\].eps.positions\[2\]", r"must lie in \[0, 1\]"),
    ("eps-position-negative", _set([*OP0, "eps", "positions", 0], -0.1),
     r"operating_points\[0\].eps.positions\[0\]", "must be >= 0"),
    ("eps-positions-missing", _delete([*OP0, "eps", "positions"]),
     r"operating_points\[0\].eps.positions", "is missing"),
    ("max-skips-zero", _set([*OP0, "max_skips"], 0), r"operating_points\[0\].max_skips",
     "must be an integer >= 1"),
    ("max-skips-float", _set([*OP0, "max_skips"], 2.0), r"operating_points\[0\].max_skips",
     "must be an integer, got float"),
    ("max-skips-bool", _set([*OP0, "max_skips"], True), r"operating_points\[0\].max_skips",
     "must be an integer"),
    ("warmup-ambiguous-float", _set([*OP0, "warmup_steps"], 1.5),
     r"operating_points\[0\].warmup_steps", r"fraction of the steps and must lie in \(0, 1\)"),
    ("warmup-negative", _set([*OP0, "warmup_steps"], -1), r"operating_points\[0\].warmup_steps",
     "must be an integer >= 0"),
    ("final-string", _set([*OP1, "final_steps"], "2"), r"operating_points\[1\].final_steps",
     "must be an integer"),
    ("nfe-zero", _set([*OP0, "expected_nfe_fraction"], 0),
     r"operating_points\[0\].expected_nfe_fraction", "must be > 0"),
    ("nfe-above-one", _set([*OP0, "expected_nfe_fraction"], 1.5),
     r"operating_points\[0\].expected_nfe_fraction", "must be <= 1"),
    ("error-negative", _set([*OP1, "expected_error"], -0.1),
     r"operating_points\[1\].expected_error", "must be >= 0"),
    ("point-extra", _set([*OP1, "gain"], [1]), r"operating_points\[1\].gain", "not a field"),
    ("default-unknown", _set(["default_operating_point"], "slow"), "default_operating_point",
     r"'slow' is not among the operating points \(balanced, fast\)"),
    ("default-null", _set(["default_operating_point"], None), "default_operating_point",
     "must be a string"),
    ("provenance-list", _set(["provenance"], []), "provenance", "must be a JSON object"),
    ("provenance-metrics-number", _set(["provenance", "metrics"], 5), "provenance.metrics",
     "must be a JSON object"),
    ("provenance-created-int", _set(["provenance", "created"], 5), "provenance.created",
     "must be a string"),
    ("provenance-nested-nan", _set(["provenance", "metrics", "psnr", "fast"], NAN),
     "provenance.metrics.psnr.fast", "must be finite"),
    ("provenance-missing", _delete(["provenance"]), "provenance", "is missing"),
]


@pytest.mark.parametrize(("mutate", "path", "reason"), [c[1:] for c in CASES],
                         ids=[c[0] for c in CASES])
def test_bad_field_is_refused_with_its_path(valid_dict, mutate, path, reason):
    mutate(valid_dict)
    with pytest.raises(PolicyError) as info:
        Policy.from_dict(valid_dict, source="bad.json")
    message = str(info.value)
    assert re.match(rf"bad\.json: field {path}: ", message), message
    assert re.search(reason, message), message
    assert "Fix: " in message


def test_policy_error_is_an_input_error_and_a_value_error(valid_dict):
    del valid_dict["model"]
    with pytest.raises(InputError):
        Policy.from_dict(valid_dict)
    with pytest.raises(ValueError):
        Policy.from_dict(valid_dict)


@pytest.mark.parametrize("top", [[], "policy", 3, None], ids=["list", "string", "number", "null"])
def test_top_level_must_be_an_object(top):
    with pytest.raises(PolicyError, match=r"^<dict>: must be a JSON object"):
        Policy.from_dict(top)


def test_default_source_is_dict(valid_dict):
    valid_dict["version"] = 7
    with pytest.raises(PolicyError, match=r"^<dict>: field version: "):
        Policy.from_dict(valid_dict)


def test_null_expected_values_and_fit_quality_are_allowed(valid_dict):
    valid_dict["predictors"]["none"]["r2"] = valid_dict["predictors"]["none"]["spearman"] = None
    valid_dict["operating_points"][0]["expected_nfe_fraction"] = None
    valid_dict["operating_points"][0]["expected_error"] = None
    policy = Policy.from_dict(valid_dict)
    assert policy.predictor.r2 is None and policy.operating_points[0].expected_error is None


# ---- files ---------------------------------------------------------------------------------------


def _write(tmp_path, content: bytes | str):
    path = tmp_path / "policy.json"
    path.write_bytes(content if isinstance(content, bytes) else content.encode())
    return path


def test_truncated_file_names_line_and_column(tmp_path):
    # Cut after `"model": {` on line 4 (12 characters): parsing stops at line 4, column 13,
    # where a property name should start.
    path = _write(tmp_path, '{\n  "format": "sencache-policy",\n  "version": 1,\n  "model": {')
    with pytest.raises(PolicyError) as info:
        Policy.load(path)
    message = str(info.value)
    assert message.startswith(f"{path}: not valid JSON: Expecting property name enclosed in "
                              "double quotes at line 4, column 13")
    assert "truncated" in message and "sencache-calibrate export" in message


def test_truncated_saved_policy_is_refused(valid_dict, tmp_path):
    text = json.dumps(valid_dict, indent=2)
    path = _write(tmp_path, text[: len(text) // 2])
    with pytest.raises(PolicyError, match="not valid JSON: .* at line .* column .*truncated"):
        Policy.load(path)


@pytest.mark.parametrize(
    ("content", "reason"),
    [
        ("hello", r"not valid JSON: Expecting value at line 1, column 1\."),
        ('{"format": "sencache-policy",}', r"not valid JSON: .* at line 1, column 30\."),
        ("", "the policy is empty"),
        ("  \n", "the policy is empty"),
        (b"\xff\xfe\x00\x01", "byte 0 is not UTF-8 text"),
        ("[1, 2]", "must be a JSON object, got list"),
        ('{"format": "sencache-policy", "version": 1}', "field model: is missing"),
        ("1" * 5000, "not a usable JSON text"),
        ("[" * 100000, "nested too deeply"),
    ],
    ids=["not-json", "trailing-comma", "empty", "blank", "binary", "array", "envelope-only",
         "huge-integer", "deep-nesting"],
)
def test_unusable_file_is_a_policy_error(tmp_path, content, reason):
    path = _write(tmp_path, content)
    with pytest.raises(PolicyError, match=reason) as info:
        Policy.load(path)
    assert str(info.value).startswith(str(path))


def test_nan_literal_in_file_names_the_field(valid_dict, tmp_path):
    valid_dict["sensitivity"]["J_x"][2] = NAN
    path = _write(tmp_path, json.dumps(valid_dict))  # Python writes the token NaN
    with pytest.raises(PolicyError, match=rf"^{re.escape(str(path))}: field sensitivity.J_x\[2\]: "
                                          "must be finite"):
        Policy.load(path)


def test_missing_file(tmp_path):
    with pytest.raises(PolicyError, match="no such policy file.*sencache-calibrate export"):
        Policy.load(tmp_path / "absent.json")


def test_folder_instead_of_file(tmp_path):
    with pytest.raises(PolicyError, match="is a folder"):
        Policy.load(tmp_path)


def test_utf8_bom_is_accepted(valid_dict, tmp_path):
    path = _write(tmp_path, b"\xef\xbb\xbf" + json.dumps(valid_dict).encode())
    assert Policy.load(path).default_operating_point == "balanced"
