"""One experiment YAML drives every stage.

    cfg = load("configs/demo.yaml", ["dataset.seed=3"])
    cfg["dataset"]["seed"], cfg["experiment"]

Defaults live in defaults.yaml beside this file. Everything is validated before any work starts:
an unknown section or key, a value of the wrong type, or one outside its choices or range is a
UserError naming the key and what is allowed.
"""
import difflib
import importlib.util
import re
from pathlib import Path

import yaml

from .log import UserError
from .paths import ROOT
from .overrides import join_words, stray_word_line

DEFAULTS_FILE = Path(__file__).with_name("defaults.yaml")

# Keys whose values come from a fixed set. A list-valued key takes any subset.
CHOICES = {
    "dataset.positives": ["pedestrian", "rider", "sitting", "other", "group"],
    "dataset.link": ["auto", "hardlink", "symlink", "copy"],
    "evaluate.format": ["all", "pt", "onnx", "onnx-rknn-head"],
    "export.simplify": ["onnxslim", "onnxsim", "none"],
    "export.rknn_head": ["dfl", "distances", "normalized", "one2one"],
    # rknn-toolkit2 2.3.2's list of targets (rknn.api.RKNN.config)
    "convert.platform": ["rk3588", "rk3576", "rk3568", "rk3566", "rk3562", "rk2118", "rv1126b", "rv1106b",
                         "rv1106", "rv1103b", "rv1103"],
    "convert.dtype": ["int8", "fp16"],
    "convert.algorithm": ["normal", "mmse", "kl_divergence"],
    "convert.hybrid": ["none", "auto", "scores", "head"],
    "evaluate.sets": ["val", "coco_person"],
    "train.optimizer": ["SGD", "MuSGD", "Adam", "Adamax", "AdamW", "NAdam", "RAdam", "RMSprop"],
}
# Keys that take one special word besides their default's type.
ALSO_ALLOWED = {"train.batch": "auto"}
# Numeric ranges: (low, high, high_inclusive).
RANGES = {
    "dataset.selection_fraction": (0.0, 1.0, False),
    "dataset.seed": (0, 2**32 - 1, True),
    "dataset.calib_images": (0, 100_000, True),
    "dataset.proxy_train_images": (1, 100_000, True),  # the .mat's own count is checked when generating
    "dataset.proxy_val_images": (1, 100_000, True),
    "train.epochs": (1, 100_000, True),
    "train.patience": (0, 100_000, True),
    "train.batch": (1, 4096, True),
    "train.min_batch": (1, 4096, True),
    "train.imgsz": (32, 8192, True),
    "train.lr0": (0.0, 10.0, True),
    "train.warmup_epochs": (0.0, 100.0, True),
    "train.seed": (0, 2**32 - 1, True),
    "train.workers": (0, 256, True),
    "evaluate.conf": (0.0, 1.0, False),
    "evaluate.iou": (0.0, 1.0, True),
    "evaluate.max_det": (1, 100_000, True),
    "evaluate.batch": (1, 1024, True),
    "evaluate.tiles": (1, 16, True),
    "export.opset": (7, 21, True),
    "convert.analysis_images": (1, 100, True),
}
NAME_KEYS = {"dataset.name"}  # become folder names
NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")
# base addresses of downloads
URL_KEYS = {"dataset.coco_url", "dataset.citypersons_url", "dataset.cityscapes_url"}
URL_RE = re.compile(r"^https?://[^\s/]+(/\S*)?$")


def defaults() -> dict:
    return yaml.safe_load(DEFAULTS_FILE.read_text())


def load(config_path, overrides=(), experiment: str | None = None) -> dict:
    """Defaults <- experiment YAML <- `section.key=value` overrides, validated; adds `experiment`:
    the folder name under artifacts/ and runs/, the config file's name unless given (a sweep's
    trials share one base file and each gets its own folders)."""
    path = Path(config_path)
    if not path.is_file():
        known = sorted(p.stem for p in Path("configs").glob("*.yaml"))
        raise UserError(f"config file {path} not found; use configs/<exp>.yaml (EXP=<exp> in Make), "
                        f"known experiments: {', '.join(known) or 'none'}")
    try:
        exp = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as e:
        raise UserError(yaml_error_line(path, e)) from None
    if not isinstance(exp, dict):
        raise UserError(f"{path} must be a mapping of sections (dataset, train, ...); fix the file")

    schema, cfg = defaults(), defaults()  # the first stays untouched: the keys, types and defaults
    for section, values in exp.items():
        _check_section(section, cfg, where=str(path))
        if values is None:
            continue
        if not isinstance(values, dict):
            raise UserError(f"{path}: section '{section}' must be a mapping of key: value")
        for key, value in values.items():
            cfg[section][key] = _checked(schema, section, key, value, where=str(path))

    words = join_words(list(overrides))
    for previous, item in zip([None, *words], words):
        section, key, value = _parse_override(item, previous)
        _check_section(section, cfg, where="override")
        cfg[section][key] = _checked(schema, section, key, value, where="override")

    _check_together(cfg)
    if experiment is not None and not NAME_RE.match(experiment):
        raise UserError(f"experiment name {_show(experiment)} must be a plain folder name (letters, digits, "
                        f"'_', '-', '.')")
    cfg["experiment"] = experiment or path.stem
    return cfg


# rknn-toolkit2 2.3.2 loads ONNX models of these opsets; ONNX itself goes to 21.
TOOLKIT_OPSETS = (7, 19)
STRIDE = 32  # the largest stride of the YOLO heads: every input side is a multiple of it
NPU_MAX_SIDE = 8192  # rknn-toolkit2's limit for an input side on the RK3588 NPU


def _check_together(cfg: dict) -> None:
    """Rules between keys and across stages, once the experiment file and the overrides are
    applied: whatever a later stage would refuse is refused here, before the first stage works."""
    d, c = cfg["dataset"], cfg["convert"]
    if d["generate_demo"] and d["generate_proxy"]:
        raise UserError("dataset.generate_demo and dataset.generate_proxy are both true; choose one "
                        "(the demo: 512x256 mini scenes; the proxy: CityPersons-scale frames at the real boxes)")
    if d["generate_proxy"] and not str(d["proxy_annotations"] or "").strip():
        raise UserError("dataset.proxy_annotations is empty; set it to the folder holding the real "
                        "anno_train.mat and anno_val.mat (default: datasets/citypersons/raw)")
    for section in ("train", "evaluate", "export"):
        _check_imgsz(f"{section}.imgsz", cfg[section]["imgsz"])
    lo, hi = TOOLKIT_OPSETS
    if not lo <= cfg["export"]["opset"] <= hi:
        raise UserError(f"export.opset={cfg['export']['opset']}: the convert stage's rknn-toolkit2 takes opsets "
                        f"{lo}..{hi} only; use export.opset=12 (the tested one)")
    _check_head(cfg["train"]["model"], cfg["export"]["rknn_head"])
    if c["hybrid"] != "none" and c["dtype"] == "fp16":
        raise UserError(f"convert.hybrid={c['hybrid']} keeps some layers in fp16 inside an INT8 model, but "
                        f"convert.dtype=fp16 quantizes nothing; use convert.dtype=int8 with it, or convert.hybrid=none")
    if c["calibration"] and c["dtype"] == "fp16":
        raise UserError(f"convert.calibration={c['calibration']} is a calibration list, but convert.dtype=fp16 "
                        f"quantizes nothing and rknn-toolkit2 would ignore it; drop convert.calibration or use "
                        f"convert.dtype=int8")
    _check_convert(cfg)
    _check_train(cfg["train"])
    _check_evaluate(cfg)
    _check_export(cfg["export"])


# The upsampling of every YOLO neck exports as ONNX Resize/Upsample from opset 9 on; torch's exporter
# fails below that, after the dataset and the training.
EXPORT_MIN_OPSET = 9
# The ultralytics arguments the fit stage sets itself, from the train section or on its own.
FIT_SETS = {"epochs", "patience", "batch", "imgsz", "optimizer", "lr0", "warmup_epochs", "amp", "seed",
            "deterministic", "device", "workers", "plots"}
FIT_OWNS = {"data", "project", "name", "exist_ok", "val"}
DEVICE_RE = re.compile(r"^(cpu|\d+(,\d+)*)$")


def _check_convert(cfg: dict) -> None:
    """What the convert stage, last in the chain, would refuse: an INT8 build needs images to
    calibrate on, from the dataset stage's list or a list of the user's."""
    d, c = cfg["dataset"], cfg["convert"]
    if c["dtype"] == "int8" and not c["calibration"] and d["calib_images"] == 0:
        raise UserError("dataset.calib_images=0 leaves the INT8 build (convert.dtype=int8) without calibration "
                        "images; set dataset.calib_images to 1 or more (100 is the tested number), give a list of "
                        "your own with convert.calibration=FILE, or build fp16 with convert.dtype=fp16")
    if c["dtype"] == "int8" and c["calibration"]:
        listing = Path(c["calibration"]).expanduser()
        listing = listing if listing.is_absolute() else ROOT / listing
        if not listing.is_file():
            raise UserError(f"convert.calibration={c['calibration']}: no such file (relative to the project "
                            f"folder); give a list of images, one per line, or leave it empty for the dataset's "
                            f"calib.txt")
    if c["algorithm"] != "normal" and c["dtype"] == "fp16":
        raise UserError(f"convert.algorithm={c['algorithm']} is a quantization algorithm, but convert.dtype=fp16 "
                        f"quantizes nothing; use convert.dtype=int8 with it, or drop convert.algorithm")


def _check_train(t: dict) -> None:
    """What the fit stage would refuse after the dataset stage has run."""
    if not str(t["model"]).endswith((".pt", ".yaml", ".yml")):
        raise UserError(f"train.model={t['model']} is neither a .pt checkpoint nor a model .yaml; give one, "
                        f"e.g. yolo11n.pt (pretrained) or yolo11n.yaml (from scratch)")
    device = str(t["device"]).strip().lower().replace(" ", "")
    if not DEVICE_RE.match(device):
        raise UserError(f"train.device={t['device']} is not a device; use a CUDA index (0), several (0,1) or cpu")
    if device == "cpu" and t["batch"] == "auto":
        raise UserError("train.batch=auto sizes the batch from free GPU memory, but train.device=cpu; "
                        "give a number, e.g. train.batch=16")
    if t["batch"] != "auto" and t["min_batch"] > t["batch"]:
        raise UserError(f"train.min_batch={t['min_batch']} is above train.batch={t['batch']}: the floor for the "
                        f"out-of-memory retries must not exceed the batch; lower train.min_batch")
    if not isinstance(t["extra"], dict):
        raise UserError(f"train.extra={_show(t['extra'])} must be a mapping of ultralytics arguments, "
                        f"e.g. train.extra={{mosaic: 0.5}}")
    for k in sorted(set(t["extra"]) & (FIT_SETS | FIT_OWNS)):
        if k in FIT_SETS:
            raise UserError(f"train.extra sets {k}, which the train section already has; set train.{k} instead")
        raise UserError(f"train.extra sets {k}, which the fit stage sets itself (the dataset, the run folder); "
                        f"drop it from train.extra")


def _check_evaluate(cfg: dict) -> None:
    e = cfg["evaluate"]
    if not 0 <= e["tile_overlap"] < 1:  # whether the tiles fit the model input needs the frame: decode.check_tiles
        raise UserError(f"evaluate.tile_overlap={e['tile_overlap']} is the share of a tile its neighbour also "
                        f"covers: from 0 to below 1 (at 1 or more the overlap is the whole tile and the tiles "
                        f"never advance along the frame), e.g. evaluate.tile_overlap=0.1")
    if "coco_person" in e["sets"] and cfg["dataset"]["name"] == "coco":
        raise UserError("dataset.name=coco is the folder of the coco_person evaluation set (datasets/coco/); "
                        "give the training dataset another name")
    if not e["weights"]:
        return
    if e["format"] == "all":
        raise UserError(f"evaluate.weights={e['weights']} needs evaluate.format=pt or onnx (which kind of model "
                        f"it is); evaluate.format=all evaluates the experiment's own models")
    want = ".pt" if e["format"] == "pt" else ".onnx"
    if not str(e["weights"]).endswith(want):
        raise UserError(f"evaluate.format={e['format']} but evaluate.weights={e['weights']} is not a {want} file; "
                        f"give a {want} file, or set evaluate.format to match the weights")


def _check_export(x: dict) -> None:
    if x["opset"] < EXPORT_MIN_OPSET:
        raise UserError(f"export.opset={x['opset']}: YOLO's upsampling exports to ONNX from opset {EXPORT_MIN_OPSET} "
                        f"on; use export.opset=12 (the tested one)")
    if x["simplify"] == "onnxsim" and importlib.util.find_spec("onnxsim") is None:
        raise UserError("export.simplify=onnxsim needs the onnxsim package, which the project's environments do "
                        "not install; use export.simplify=onnxslim (the default) or none")


def _check_head(model: str, layout: str) -> None:
    """YOLO26 (by its name: yolo26n.pt, yolo26s.yaml, ...) has no DFL and an NMS-free one-to-one head:
    only export.rknn_head=one2one applies to it, and one2one to it alone. The export stage checks the
    trained head itself; this catches the stock names before the dataset and the training."""
    name = Path(str(model)).name.lower()
    yolo26 = name.startswith("yolo26")
    if yolo26 and layout != "one2one":
        why = "no DFL (reg_max 1)" if layout == "dfl" else "an NMS-free one-to-one head"
        raise UserError(f"export.rknn_head={layout} does not apply to train.model={model}: YOLO26 has {why}; "
                        f"set export.rknn_head=one2one")
    if layout == "one2one" and re.match(r"yolov?\d", name) and not yolo26:
        raise UserError(f"export.rknn_head=one2one needs an NMS-free one-to-one head, which train.model={model} "
                        f"has not; use a YOLO26 model or export.rknn_head=dfl")


def _check_imgsz(dotted: str, value) -> None:
    """An int (square) or [h, w]; every side a multiple of the stride. ultralytics would silently
    round train.imgsz=100 up to 128, and the export would then refuse the run's size."""
    if value is None:
        return
    sides = value if isinstance(value, list) else [value]
    if len(sides) not in (1, 2) or not all(isinstance(v, int) and not isinstance(v, bool) for v in sides):
        raise UserError(f"{dotted}={_show(value)} must be an int (square) or [h, w] of ints, e.g. 640 or [640, 1280]")
    for v in sides:
        if v > NPU_MAX_SIDE:
            raise UserError(f"{dotted}={_show(value)}: {v} is above the RKNN NPU's input limit of {NPU_MAX_SIDE} per "
                            f"side; the whole 2048x1024 frame needs at most [1024, 2048]")
        if not 32 <= v <= 8192 or v % STRIDE:
            down, up = max(STRIDE, v // STRIDE * STRIDE), min(8192, -(-v // STRIDE) * STRIDE)
            fix = f"{down} or {up}" if down != up else str(down)
            raise UserError(f"{dotted}={_show(value)}: every side must be a multiple of {STRIDE} (the largest "
                            f"stride) between 32 and 8192; use {fix}")


def yaml_error_line(path, e: yaml.YAMLError) -> str:
    """A YAML syntax error as one line with the parser's line and column (1-based, as editors count)."""
    at = lambda m: f"line {m.line + 1}, column {m.column + 1}"  # noqa: E731
    mark, start = getattr(e, "problem_mark", None), getattr(e, "context_mark", None)
    problem = getattr(e, "problem", None) or str(e).splitlines()[0]
    where = f" at {at(mark)}" if mark else ""
    context = ""
    if getattr(e, "context", None):  # e.g. "while parsing a flow sequence": where that began
        context = f" ({e.context}{f' that starts at {at(start)}' if start and start != mark else ''})"
    return f"{path} is not valid YAML: {problem}{where}{context}; fix the file there"


def _parse_override(item: str, previous: str | None = None):
    if "=" not in item or "." not in item.split("=", 1)[0]:
        raise UserError(stray_word_line(item, previous))
    dotted, raw = item.split("=", 1)
    section, key = dotted.split(".", 1)
    try:
        value = yaml.safe_load(raw) if raw != "" else None
    except yaml.YAMLError as e:
        if raw.lstrip()[:1] in "[{":  # meant as a list or mapping: taking it as text would hide the mistake
            mark = getattr(e, "problem_mark", None)
            at = f" at column {mark.column + 1} of the value" if mark else ""
            raise UserError(f"override {item}: the value is not a valid YAML list or mapping "
                            f"({getattr(e, 'problem', None) or 'syntax error'}{at}); write it as [a, b] or {{k: v}}, "
                            f"e.g. ARGS=\"evaluate.sets=[val, coco_person]\"") from None
        value = raw  # text YAML cannot read (`@x`, a stray colon): meant as that text
    return section, key, value


def _check_section(section, cfg, where):
    if section not in cfg or section == "experiment":
        allowed = [s for s in cfg if s != "experiment"]
        raise UserError(f"{where}: unknown section '{section}'{_did_you_mean(section, allowed)}; "
                        f"sections are: {', '.join(allowed)}")


def _checked(schema, section, key, value, where):
    dotted = f"{section}.{key}"
    base = schema[section]
    if key not in base:
        allowed = list(base) or ["(none yet)"]
        raise UserError(f"{where}: unknown key {dotted}{_did_you_mean_key(schema, section, key)}; "
                        f"{section} keys are: {', '.join(allowed)}")
    default = base[key]
    if value == ALSO_ALLOWED.get(dotted):
        return value
    value = _coerce(dotted, value, default)
    if dotted in CHOICES:
        allowed = CHOICES[dotted]
        bad = [v for v in (value if isinstance(value, list) else [value]) if v not in allowed]
        if bad or value == []:
            raise UserError(f"{where}: {dotted}={_show(value)} is not allowed; "
                            f"choose {'one or more' if isinstance(value, list) else 'one'} of: {', '.join(allowed)}")
    if dotted in RANGES:
        lo, hi, hi_incl = RANGES[dotted]
        if not (lo <= value <= hi if hi_incl else lo <= value < hi):
            raise UserError(f"{where}: {dotted}={value} is out of range; allowed: "
                            f"{lo} <= value {'<=' if hi_incl else '<'} {hi}")
    if dotted in NAME_KEYS and not NAME_RE.match(str(value)):
        raise UserError(f"{where}: {dotted}={_show(value)} must be a plain folder name "
                        f"(letters, digits, '_', '-', '.')")
    if dotted in URL_KEYS and not URL_RE.match(value):
        raise UserError(f"{where}: {dotted}={_show(value)} must be an http:// or https:// address "
                        f"(default: {_show(default)})")
    return value


def _coerce(dotted, value, default):
    """Accept a value of the default's type; ints pass for floats, a scalar passes for a one-item list."""
    want = type(default)
    if default is None:
        return value
    if want is bool:
        ok = isinstance(value, bool)
    elif want is int:
        ok = isinstance(value, int) and not isinstance(value, bool)
    elif want is float:
        ok = isinstance(value, (int, float)) and not isinstance(value, bool)
        value = float(value) if ok else value
    elif want is str and isinstance(value, int) and not isinstance(value, bool):
        value, ok = str(value), True  # YAML reads `device: 0` as a number
    elif want is list:
        if isinstance(value, (str, int, float)) and not isinstance(value, bool):
            value = [value]
        ok = isinstance(value, list)
    else:
        ok = isinstance(value, want)
    if not ok:
        also = f" or {ALSO_ALLOWED[dotted]}" if dotted in ALSO_ALLOWED else ""
        raise UserError(f"{dotted}={_show(value)} has the wrong type; expected {want.__name__}{also} "
                        f"(default: {_show(default)})")
    return value


def _show(v):
    return yaml.safe_dump(v, default_flow_style=True).strip().removesuffix("...").strip()


def _did_you_mean(word, options):
    close = difflib.get_close_matches(word, options, n=1)
    return f" (did you mean '{close[0]}'?)" if close else ""


def _did_you_mean_key(schema: dict, section: str, key: str) -> str:
    """The key the user meant: the same name in another section (convert.calib_images ->
    dataset.calib_images) first, then a near spelling in the same section, then a key anywhere that
    holds the word typed (train.calib -> dataset.calib_images), then a near spelling anywhere."""
    everywhere = [f"{s}.{k}" for s, keys in schema.items() for k in keys]
    same_name = [d for d in everywhere if d.split(".", 1)[1] == key]
    if same_name:
        return f" (did you mean {' or '.join(repr(d) for d in same_name)}?)"
    close = difflib.get_close_matches(key, list(schema[section]), n=1)
    if close:
        return f" (did you mean '{close[0]}'?)"
    words = {w for w in key.lower().split("_") if len(w) >= 3}
    shared = {d: len(words & set(d.split(".", 1)[1].split("_"))) for d in everywhere}
    best = max(shared.values(), default=0)
    holding = [d for d, n in shared.items() if n and n == best]
    if len(holding) == 1:
        return f" (did you mean '{holding[0]}'?)"
    if holding:
        return f" (did you mean one of: {', '.join(holding[:4])}?)"
    return _did_you_mean(f"{section}.{key}", everywhere)
