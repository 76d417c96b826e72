"""The artifact records and the parameter machinery: one contract per file, one place per field."""

from __future__ import annotations

import argparse
import json

import pytest

from entropy_ft.artifacts import DatasetManifest, Evaluation, Profile, Selection
from entropy_ft.cli import main
from entropy_ft.errors import UserError
from entropy_ft.pipelines.definitions import PARAMS
from entropy_ft.steps import ingest, select

PROFILE = {"schema_version": 1, "arch": "resnet18", "num_classes": 4, "tap": "conv",
           "layers": [{"name": "conv1", "params": 9536, "entropy": 3.5, "entropy_std": 0.1}]}


def test_a_record_reads_from_its_folder_or_its_file_and_writes_back_what_it_read(tmp_path):
    (tmp_path / "profile.json").write_text(json.dumps({**PROFILE, "future_key": [1, 2]}))
    from_folder, from_file = Profile.read(str(tmp_path)), Profile.read(str(tmp_path / "profile.json"))
    assert from_folder == from_file and from_folder.arch == "resnet18" and from_folder.weights is None
    assert from_folder.origin.uri == str(tmp_path / "profile.json") and len(from_folder.origin.sha256) == 64
    assert from_folder.to_json() == {**PROFILE, "future_key": [1, 2]}  # no nulls added, unknown keys kept
    from_folder.write(str(tmp_path / "copy"))
    assert json.loads((tmp_path / "copy" / "profile.json").read_text()) == from_folder.to_json()


@pytest.mark.parametrize(("content", "message"), [
    ({k: v for k, v in PROFILE.items() if k != "layers"}, "(missing key 'layers')"),
    ({**PROFILE, "arch": 18}, "(key 'arch' is int, expected str)"),
    ({**PROFILE, "num_classes": True}, "(key 'num_classes' is bool, expected int)"),
    ({**PROFILE, "schema_version": 2}, "schema_version 2 is newer than this entropy-ft reads (1)"),
    ([1, 2], "(expected a JSON object)"),
])
def test_a_malformed_record_is_a_user_error_naming_the_file_and_key(tmp_path, content, message):
    (tmp_path / "profile.json").write_text(json.dumps(content))
    with pytest.raises(UserError) as err:
        Profile.read(str(tmp_path))
    assert str(err.value).startswith(f"{tmp_path / 'profile.json'}: ") and message in str(err.value)


def test_a_select_on_a_bad_profile_exits_2_with_the_file_and_key(tmp_path, capsys):
    (tmp_path / "profile.json").write_text(json.dumps({"arch": "resnet18", "num_classes": 4}))
    assert main(["select", str(tmp_path), "--out", str(tmp_path / "sel")]) == 2
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert err == (f"entropy-ft select: error: {tmp_path / 'profile.json'}: not a profile.json from "
                   "`entropy-ft profile` (missing key 'layers')")


def test_every_record_names_its_file_and_producer():
    assert (DatasetManifest.FILE, Selection.FILE, Evaluation.FILE) == ("manifest.json", "selection.json", "eval.json")
    assert Evaluation.PRODUCER == "evaluate" and DatasetManifest.folder_of("s3://b/ds/manifest.json") == "s3://b/ds"


def test_flags_come_from_the_config_fields():
    parser = argparse.ArgumentParser()
    ingest.Config.add_arguments(parser)
    args = parser.parse_args(["a.zip", "b", "--out", "o", "--class-map", "x=y", "--class-map", "z=w"])
    cfg = ingest.Config.from_args(args)
    assert cfg.sources == ("a.zip", "b") and cfg.class_map == ("x=y", "z=w") and cfg.image_size == 224
    assert ingest.Config.from_args(parser.parse_args(["a", "--out", "o"])).class_map == ()
    with pytest.raises(UserError, match=r"^--image-size 8: expected 16 to 1024 pixels$"):
        ingest.Config.from_args(parser.parse_args(["a", "--out", "o", "--image-size", "8"]))
    with pytest.raises(UserError, match=r"^--val-fraction 0.95: expected a fraction between 0 and 0.9$"):
        ingest.Config(sources=("a",), out="o", val_fraction=0.95)


def test_the_pipeline_parameters_take_default_help_and_check_from_the_stage():
    by_name = {p.name: p for p in PARAMS}
    assert by_name["image_size"].pipeline_default == 224
    assert by_name["image_size"].option.help == "square side in pixels after preprocessing"
    assert by_name["strategies"].pipeline_default == ["entropy", "full", "head", "random"]
    assert by_name["noise"].pipeline_default == "0,0.1,0.2,0.3,0.4"
    with pytest.raises(UserError, match=r"^--profile-images 0: expected at least 1 profiling image$"):
        by_name["profile_images"].check(0)
    with pytest.raises(UserError, match=r"^--rule 'quantile:2'"):
        by_name["rule"].check("quantile:2")


def test_a_baseline_in_a_pipeline_branch_drops_the_pipelines_rule():
    assert select.rule_for("full", "quantile:0.5") is None and select.rule_for("random", "budget:0.3") == "budget:0.3"
    with pytest.raises(UserError, match="applies only to --strategy entropy or random"):
        select.Config(profile="p", strategy="head", out="o", rule="quantile:0.5")
