"""One experiment YAML drives every stage.

    cfg = load("configs/demo.yaml", ["dataset.seed=3"])
    cfg["dataset"]["seed"], cfg["experiment"]

Defaults live in defaults.yaml beside this file. Everything is validated before any work starts:
an unknown section or key, a value of the wrong type, or one outside its choices or range is a
UserError naming the key and what is allowed.
"""
import difflib
import re
from pathlib import Path

import yaml

from .log import UserError

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
        raise UserError(f"{path} is not valid YAML ({str(e).splitlines()[0]}); fix the file")
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

    for item in overrides:
        section, key, value = _parse_override(item)
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


def _parse_override(item: str):
    if "=" not in item or "." not in item.split("=", 1)[0]:
        raise UserError(f"override '{item}' must look like section.key=value (e.g. dataset.seed=1)")
    dotted, raw = item.split("=", 1)
    section, key = dotted.split(".", 1)
    try:
        value = yaml.safe_load(raw) if raw != "" else None
    except yaml.YAMLError:
        value = raw
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
        raise UserError(f"{where}: unknown key {dotted}{_did_you_mean(key, list(base))}; "
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
