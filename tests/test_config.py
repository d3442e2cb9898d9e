"""One experiment YAML drives every stage; bad keys and values are caught before any work."""
import pytest

from tests.helpers import ROOT, one_error, run_module
from services.common import config
from services.common.log import UserError

CITYPERSONS = ROOT / "configs" / "citypersons.yaml"
DEMO = ROOT / "configs" / "demo.yaml"


def test_experiments_load_with_defaults_filled_in():
    real, demo = config.load(CITYPERSONS), config.load(DEMO)
    assert real["experiment"] == "citypersons" and demo["experiment"] == "demo"
    assert real["dataset"]["name"] == "citypersons" and real["dataset"]["positives"] == ["pedestrian"]
    assert demo["dataset"]["generate_demo"] is True
    # every section exists in both, so a stage never has to guess
    assert set(real) == set(demo) == {"dataset", "train", "evaluate", "export", "convert", "experiment"}
    # keys the experiment file does not set come from defaults.yaml
    assert demo["dataset"]["link"] == config.defaults()["dataset"]["link"]


def test_overrides_are_parsed_as_yaml_and_coerced():
    cfg = config.load(DEMO, ["dataset.selection_fraction=0", "dataset.positives=[pedestrian, rider]",
                             "dataset.keep_background=false", "dataset.seed=7"])
    d = cfg["dataset"]
    assert d["selection_fraction"] == 0.0 and isinstance(d["selection_fraction"], float)
    assert d["positives"] == ["pedestrian", "rider"]
    assert d["keep_background"] is False and d["seed"] == 7
    # a single value for a list key is a one-item list
    assert config.load(DEMO, ["dataset.positives=rider"])["dataset"]["positives"] == ["rider"]
    t = config.load(DEMO, ["train.batch=auto", "train.device=0", "train.extra={mosaic: 0.5}"])["train"]
    assert t["batch"] == "auto" and t["device"] == "0" and t["extra"] == {"mosaic": 0.5}


@pytest.mark.parametrize("override, expected", [
    ("dataset.fracton=0.2", ["unknown key dataset.fracton", "selection_fraction"]),
    ("dataset.selection_fracton=0.2", ["did you mean 'selection_fraction'"]),
    ("datset.seed=1", ["unknown section 'datset'", "did you mean 'dataset'", "sections are: dataset, train"]),
    ("evaluate.metric=ap", ["unknown key evaluate.metric", "evaluate keys are: format, weights"]),
    ("export.opset=99", ["export.opset=99 is out of range"]),
    ("convert.platform=rk9999", ["is not allowed", "rk3588"]),
    ("evaluate.format=rknn", ["is not allowed", "all, pt, onnx"]),
    ("train.epoch=3", ["unknown key train.epoch", "did you mean 'epochs'"]),
    ("train.batch=big", ["wrong type", "expected int or auto"]),
    ("train.optimizer=auto", ["is not allowed", "SGD"]),
    ("dataset.link=ftp", ["dataset.link=ftp is not allowed", "auto, hardlink, symlink, copy"]),
    ("dataset.positives=[pedestrian, cyclist]", ["is not allowed", "pedestrian, rider, sitting, other, group"]),
    ("dataset.positives=[]", ["is not allowed"]),
    ("dataset.selection_fraction=1", ["out of range", "0.0 <= value < 1.0"]),
    ("dataset.selection_fraction=-0.1", ["out of range"]),
    ("dataset.seed=abc", ["wrong type", "expected int"]),
    ("dataset.keep_background=maybe", ["wrong type", "expected bool"]),
    ("dataset.calib_images=2.5", ["wrong type", "expected int"]),
    ("dataset.name=../escape", ["plain folder name"]),
    ("seed=1", ["section.key=value"]),
])
def test_bad_overrides_name_the_key_and_the_fix(override, expected):
    with pytest.raises(UserError) as e:
        config.load(DEMO, [override])
    for fragment in expected:
        assert fragment in str(e.value)


def test_bad_key_in_experiment_file(tmp_path):
    bad = tmp_path / "mine.yaml"
    bad.write_text("dataset:\n  name: demo\n  positive: [rider]\n")
    with pytest.raises(UserError, match=r"mine.yaml: unknown key dataset.positive \(did you mean 'positives'"):
        config.load(bad)
    bad.write_text("dataset: [1, 2]\n")
    with pytest.raises(UserError, match="must be a mapping"):
        config.load(bad)
    bad.write_text("dataset:\n  name: [unclosed\n")
    with pytest.raises(UserError, match="not valid YAML"):
        config.load(bad)


def test_missing_config_file_lists_the_experiments(tmp_path, monkeypatch):
    monkeypatch.chdir(ROOT)
    with pytest.raises(UserError, match=r"not found.*known experiments: citypersons, demo"):
        config.load("configs/nope.yaml")


def test_cli_rejects_a_bad_value_before_any_work(tmp_path):
    proc = run_module("dataset", ["--config", str(DEMO), "dataset.link=ftp"], tmp_path)
    line = one_error(proc, "dataset")
    assert "dataset.link=ftp" in line and "hardlink" in line
    assert not (tmp_path / "datasets").exists(), "nothing may be generated before the config is valid"


def test_an_experiment_name_names_the_folders_and_must_be_plain():
    cfg = config.load(ROOT / "configs" / "demo.yaml", ["train.seed=1"], "demo-sweep-a-s1")
    assert cfg["experiment"] == "demo-sweep-a-s1" and cfg["dataset"]["name"] == "demo"
    assert config.load(ROOT / "configs" / "demo.yaml")["experiment"] == "demo"
    with pytest.raises(UserError, match=r"experiment name a/b must be a plain folder name"):
        config.load(ROOT / "configs" / "demo.yaml", [], "a/b")


@pytest.mark.parametrize("empty", ["dataset.proxy_annotations=", "dataset.proxy_annotations=null",
                                   "dataset.proxy_annotations=' '"])
def test_a_proxy_without_its_annotation_folder_is_refused_at_load(empty):
    """The proxy draws its boxes from the real annotation files: an empty folder setting is refused
    when the experiment loads, naming the key and the files it must hold."""
    with pytest.raises(UserError) as e:
        config.load(ROOT / "configs" / "proxy.yaml", [empty])
    assert str(e.value) == ("dataset.proxy_annotations is empty; set it to the folder holding the real "
                            "anno_train.mat and anno_val.mat (default: datasets/citypersons/raw)")
