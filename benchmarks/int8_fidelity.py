"""INT8 fidelity of the RKNN model, its quantization settings, and decode speed: one table.

    python benchmarks/int8_fidelity.py fidelity ROOT:EXP[:OVERRIDES] ...   INT8 vs float, per run
    python benchmarks/int8_fidelity.py layouts ROOT:EXP[:OVERRIDES]        every RKNN head layout
    python benchmarks/int8_fidelity.py quantization ROOT:EXP[:OVERRIDES]   algorithms, calibration, hybrid, fp16
    python benchmarks/int8_fidelity.py decode ROOT:EXP[:OVERRIDES]         decode + NMS (or top-k) ms per frame
    python benchmarks/int8_fidelity.py all [--work DIR]                    all of it, training what it needs

ROOT is a project root (PIPELINE_ROOT) holding a trained artifacts/<EXP>/weights/best.pt and its
dataset; OVERRIDES are `section.key=value` separated by commas (e.g. export.imgsz=[640,1280]). Each
setting runs the real stages on that root: export (train environment), evaluation of the float
ONNX of the RKNN head (onnxruntime), and the RKNN build with its simulator evaluation (convert
environment, rknn-toolkit2). Results of each setting are kept under ROOT/artifacts/EXP/benchmark/<label>/.

`all` builds what it needs under --work (default /tmp/int8-fidelity): the demo trained with seeds
0, 1, 2 (`make demo ARGS=train.seed=S`), YOLO26n on the demo (`make train EXP=demo-yolo26`), and the
CityPersons-scale proxy (configs/proxy.yaml) at 640 and at [640, 1280], fine-tuned on the CPU from
the seed-0 demo weights. It takes well over an hour on 2 cores. Exit 1 when a bar is missed.

YOLO26 (configs/demo-yolo26.yaml, export.rknn_head=one2one) goes through the same rows: `fidelity
ROOT:demo-yolo26`; `layouts ROOT:demo-yolo26` measures its one layout with the score branch in fp16
(the default) and fully INT8 (convert.hybrid=none), to show how much the one-to-one head's ranking
depends on the scores' precision; `decode ROOT:demo-yolo26:export.imgsz=640` exports at 640 first
(the root's models are exported again at its own size afterwards).

Fidelity compares the INT8 simulator with the float ONNX of the same head, on the val split:
  AP50 ratio >= 0.99, AP50-95 ratio >= 0.95, MR-2 Reasonable gap <= 1.0 pt, and the median IoU of
  matched boxes >= 0.97 (each float detection with score >= 0.3 against its best INT8 detection in
  the same image). Also printed: distinct scores (INT8 / float) and rank agreement (Spearman's rho
  of the scores of matched pairs with IoU >= 0.5).
Speed: decode + NMS <= 1 ms per 640x640 frame at conf 0.25 and <= 20 ms at conf 0.001, one core;
  YOLO26's NMS-free decode (one2one: top-k and the boxes of the selected anchors) <= 0.5 ms at any conf
  (CPU time of the measuring thread; wall time beside it);
  the INT8 build of YOLO11n at 640 with 100 calibration images <= 120 s (benchmarks/convert_speed.py).
"""
import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from services.common import files  # noqa: E402
VENV = Path(os.environ.get("VENV", ROOT / ".venv"))
TRAIN_PY, CONVERT_PY = VENV / "train" / "bin" / "python", VENV / "convert" / "bin" / "python"
BARS = {"AP50 ratio": 0.99, "AP50-95 ratio": 0.95, "MR-2 gap pt": 1.0, "median IoU": 0.97}
SUITE_BOUND = {"AP50 ratio": 0.97, "MR-2 gap pt": 3.0}  # what tests/test_convert.py asserts on the demo


# ------------------------------------------------------------------------------------- running stages
def make(target: str, root: Path, args: list[str], exp: str = "proxy") -> None:
    """`make <target> EXP=<exp> ARGS=...` natively in `root`, its output appended to <root>/<target>.log."""
    env = {**os.environ, "PIPELINE_ROOT": str(root), "RUNNER": "local", "VENV": str(VENV)}
    cmd = ["make", "--no-print-directory", target, f"EXP={exp}", f"ARGS={' '.join(args)}"]
    log = root / f"{target}.log"
    with log.open("a") as f:
        code = subprocess.run(cmd, cwd=ROOT, env=env, stdout=f, stderr=subprocess.STDOUT).returncode
    if code:
        sys.exit(f"{' '.join(cmd)} failed (exit {code}) on {root}; see {log}")


def stage(python: Path, module: str, root: Path, exp: str, overrides: list[str], log: Path) -> float:
    env = {**{k: v for k, v in os.environ.items() if k != "PYTEST_CURRENT_TEST"}, "PIPELINE_ROOT": str(root)}
    cmd = [str(python), "-m", f"services.{module}", "--config", str(ROOT / "configs" / f"{exp}.yaml"), "--force",
           *overrides]
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True)
    log.parent.mkdir(parents=True, exist_ok=True)
    with log.open("a") as f:
        f.write(f"$ {' '.join(cmd)}\n{proc.stdout}\n{proc.stderr}\n")
    if proc.returncode:
        sys.exit(f"{module} failed on {root} ({' '.join(overrides)}); see {log}\n{proc.stderr[-1500:]}")
    return time.perf_counter() - t0


def run_setting(root: Path, exp: str, overrides: list[str], label: str, export: bool = True) -> Path:
    """export -> float ONNX evaluation -> RKNN build + simulator evaluation; results copied to
    ROOT/artifacts/EXP/benchmark/<label>/."""
    out = root / "artifacts" / exp / "benchmark" / label
    log = out / "stages.log"
    if out.exists():
        files.move_aside(out)  # an earlier measurement of the same setting: kept, never deleted
    if export:
        stage(TRAIN_PY, "export", root, exp, overrides, log)
        stage(TRAIN_PY, "evaluate", root, exp, ["evaluate.format=onnx-rknn-head", *overrides], log)
    stage(CONVERT_PY, "convert", root, exp, overrides, log)
    art = root / "artifacts" / exp
    for p in list((art / "metrics").glob("*.json")) + list((art / "models").glob("*.manifest.json")):
        shutil.copy(p, out / p.name)  # metrics, the detections they scored, the build's manifest
    return out


# ------------------------------------------------------------------------------------- measures
def _iou_matrix(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """COCO [x, y, w, h] boxes a (n, 4), b (m, 4) -> (n, m) IoU."""
    ax2, ay2, bx2, by2 = a[:, 0] + a[:, 2], a[:, 1] + a[:, 3], b[:, 0] + b[:, 2], b[:, 1] + b[:, 3]
    iw = np.clip(np.minimum(ax2[:, None], bx2[None]) - np.maximum(a[:, None, 0], b[None, :, 0]), 0, None)
    ih = np.clip(np.minimum(ay2[:, None], by2[None]) - np.maximum(a[:, None, 1], b[None, :, 1]), 0, None)
    inter = iw * ih
    return inter / (a[:, 2:].prod(1)[:, None] + b[:, 2:].prod(1)[None] - inter + 1e-9)


def fidelity(results: Path, float_fmt: str = "onnx-rknn-head", quant_fmt: str = "rknn") -> dict:
    from scipy.stats import spearmanr
    f, q = (json.loads((results / f"{fmt}.json").read_text()) for fmt in (float_fmt, quant_fmt))
    fv, qv = f["sets"]["val"], q["sets"]["val"]
    fd, qd = (json.loads((results / Path(s["detections_file"]).name).read_text()) for s in (fv, qv))
    by_image = {}
    for d in qd:
        by_image.setdefault(d["image_id"], []).append(d)
    ious, pairs = [], []
    for image_id in {d["image_id"] for d in fd}:
        fs = [d for d in fd if d["image_id"] == image_id]
        qs = by_image.get(image_id, [])
        if not qs:
            ious += [0.0] * sum(d["score"] >= 0.3 for d in fs)
            continue
        m = _iou_matrix(np.array([d["bbox"] for d in fs]), np.array([d["bbox"] for d in qs]))
        best = m.argmax(1)
        for i, d in enumerate(fs):
            if d["score"] >= 0.3:
                ious.append(float(m[i, best[i]]))
            if m[i, best[i]] >= 0.5:
                pairs.append((d["score"], qs[best[i]]["score"]))
    pairs = np.array(pairs)
    manifest = next(iter(results.glob("*.manifest.json")), None)
    m = json.loads(manifest.read_text()) if manifest else {}
    return {
        "float AP50": fv["coco"]["AP50"], "INT8 AP50": qv["coco"]["AP50"],
        "AP50 ratio": qv["coco"]["AP50"] / max(fv["coco"]["AP50"], 1e-9),
        "AP50-95 ratio": qv["coco"]["AP"] / max(fv["coco"]["AP"], 1e-9),
        "float MR-2": 100 * fv["miss_rate"]["Reasonable"], "INT8 MR-2": 100 * qv["miss_rate"]["Reasonable"],
        "MR-2 gap pt": 100 * (qv["miss_rate"]["Reasonable"] - fv["miss_rate"]["Reasonable"]),
        "median IoU": float(np.median(ious)) if ious else float("nan"),
        "IoU p10": float(np.percentile(ious, 10)) if ious else float("nan"),
        "distinct scores": f"{len({d['score'] for d in qd})} / {len({d['score'] for d in fd})}",
        "rank rho": float(spearmanr(pairs[:, 0], pairs[:, 1]).statistic) if len(pairs) > 2 else float("nan"),
        "INT8 AP50-95": qv["coco"]["AP"], "build s": m.get("seconds", {}).get("build"),
        "MB": round(m.get("rknn_bytes", 0) / 1e6, 2), "layout": m.get("layout"),
    }


def meets(row: dict) -> bool:
    return (row["AP50 ratio"] >= BARS["AP50 ratio"] and row["AP50-95 ratio"] >= BARS["AP50-95 ratio"]
            and row["MR-2 gap pt"] <= BARS["MR-2 gap pt"] and row["median IoU"] >= BARS["median IoU"])


def print_fidelity(rows: list[tuple[str, dict]], title: str) -> None:
    from services.common.log import table
    cols = ["float AP50", "INT8 AP50", "AP50 ratio", "AP50-95 ratio", "float MR-2", "INT8 MR-2", "MR-2 gap pt",
            "median IoU", "IoU p10", "distinct scores", "rank rho", "INT8 AP50-95", "build s", "MB"]
    fmt = lambda v: f"{v:.3f}" if isinstance(v, float) else str(v)  # noqa: E731
    print(table(["setting", *cols, "bars"], [[label, *[fmt(r[c]) for c in cols], "ok" if meets(r) else "MISSED"]
                                             for label, r in rows],
                title=f"\n{title} (bars: AP50 ratio >= 0.99, AP50-95 ratio >= 0.95, MR-2 gap <= 1.0 pt, "
                      f"median IoU >= 0.97)"))


# ------------------------------------------------------------------------------------- commands
def parse_target(text: str):
    root, exp, *rest = text.split(":", 2)
    overrides = [o for o in (re.split(r",(?![^\[]*\])", rest[0]) if rest else []) if o]  # not inside [..]
    return Path(root).resolve(), exp, overrides


def cmd_fidelity(targets: list[str]) -> list[tuple[str, dict]]:
    rows = []
    for t in targets:
        root, exp, overrides = parse_target(t)
        label = f"{exp}-{root.name}" + (f" {' '.join(overrides)}" if overrides else "")
        rows.append((label, fidelity(run_setting(root, exp, overrides, _slug(label)))))
    print_fidelity(rows, "INT8 (simulator) vs float ONNX of the same head")
    return rows


def cmd_layouts(target: str) -> list[tuple[str, dict]]:
    root, exp, overrides = parse_target(target)
    rows = []
    # YOLO26 has one layout (no DFL, a one-to-one head): measured with its scores in fp16 and in INT8
    settings = ([("one2one", []), ("one2one hybrid none", ["convert.hybrid=none"])] if _is_yolo26(exp)
                else [(layout, []) for layout in ("dfl", "distances", "normalized")])
    for name, extra in settings:
        layout = name.split()[0]
        label = f"{exp}-{root.name} {name}" + (f" {' '.join(overrides)}" if overrides else "")
        rows.append((label, fidelity(run_setting(root, exp, [*overrides, f"export.rknn_head={layout}", *extra],
                                                 _slug(label)))))
    print_fidelity(rows, "RKNN head layouts")
    run_setting(root, exp, overrides, "restore-default")  # leave the root's artifacts in the default layout
    return rows


def cmd_quantization(target: str, skip: str = "") -> list[tuple[str, dict]]:
    from services.common.log import table
    root, exp, overrides = parse_target(target)
    # calibration lists of 20, 100 and 300 images: prefixes of one list drawn from train
    calib = _calibration_source(root, exp)
    lists = {}
    for n in (20, 100, 300):  # a list shorter than 300 (the proxy's 330 images keep ~297 for train) gives all of it
        lists[n] = root / "artifacts" / exp / "benchmark" / f"calib-{n}.txt"
        lists[n].parent.mkdir(parents=True, exist_ok=True)
        lists[n].write_text("".join(f"{line}\n" for line in calib[:n]))
    settings = [("normal", 100, "none", "int8"), ("mmse", 100, "none", "int8"), ("kl_divergence", 100, "none", "int8"),
                ("normal", 20, "none", "int8"), ("normal", 300, "none", "int8"), ("normal", 100, "auto", "int8"),
                ("normal", 100, "scores", "int8"), ("mmse", 100, "scores", "int8"),
                ("kl_divergence", 100, "scores", "int8"), ("normal", 20, "scores", "int8"),
                ("normal", 300, "scores", "int8"), ("normal", 100, "none", "fp16")]
    rows = []
    first = True
    for algorithm, n, hybrid, dtype in settings:
        label = f"int8 {algorithm} calib {min(n, len(calib))} hybrid {hybrid}" if dtype == "int8" else "fp16 (ceiling)"
        if skip and re.search(skip, label):
            print(f"skipped: {label}")
            continue
        extra = [f"convert.algorithm={algorithm}", f"convert.hybrid={hybrid}", f"convert.dtype={dtype}"]
        extra += [f"convert.calibration={lists[n]}"] if dtype == "int8" else []
        rows.append((label, fidelity(run_setting(root, exp, [*overrides, *extra], _slug(f"{exp}-{root.name} {label}"),
                                                 export=first))))
        first = False
    print(table(["setting", "build s", "MB", "AP50", "AP50-95", "MR-2 Reasonable %", "AP50 ratio", "MR-2 gap pt",
                 "median IoU", "rank rho", "bars"],
                [[label, r["build s"], r["MB"], f"{r['INT8 AP50']:.3f}", f"{r['INT8 AP50-95']:.3f}",
                  f"{r['INT8 MR-2']:.2f}", f"{r['AP50 ratio']:.3f}", f"{r['MR-2 gap pt']:+.2f}",
                  f"{r['median IoU']:.3f}", f"{r['rank rho']:.3f}", "ok" if meets(r) else "MISSED"]
                 for label, r in rows],
                title=f"\nQuantization settings, {exp} on {root.name} {' '.join(overrides)} (float ONNX: AP50 "
                      f"{rows[0][1]['float AP50']:.3f}, MR-2 {rows[0][1]['float MR-2']:.2f} %)"))
    run_setting(root, exp, overrides, "restore-default", export=False)
    return rows


def _calibration_source(root: Path, exp: str) -> list[str]:
    import yaml
    cfg = yaml.safe_load((ROOT / "configs" / f"{exp}.yaml").read_text())
    name = cfg["dataset"]["name"]
    listing = root / "datasets" / name / "yolo" / "calib.txt"
    return [str(root / line.strip()) for line in listing.read_text().splitlines() if line.strip()]


def cmd_decode(target: str) -> list[tuple[str, float, float]]:
    """Decode + NMS per 640x640 frame, one core, on the float RKNN-head ONNX's outputs for val images.
    With OVERRIDES (export.imgsz=640), the root's model is exported with them first, and again
    without them afterwards."""
    import cv2
    import onnxruntime as ort
    from services.common.log import table
    from services.common import decode
    cv2.setNumThreads(1)
    root, exp, overrides = parse_target(target)
    model = root / "artifacts" / exp / "models" / f"{exp}.rknn-head.onnx"
    if overrides:
        stage(TRAIN_PY, "export", root, exp, overrides, root / "artifacts" / exp / "benchmark" / "decode-export.log")
    session = ort.InferenceSession(str(model), providers=["CPUExecutionProvider"])
    size = tuple(session.get_inputs()[0].shape[2:])
    layout = decode.layout_of([o.shape for o in session.get_outputs()], size)
    name = _dataset_name(exp)
    images = sorted((root / "datasets" / name / "yolo" / "val" / "images").glob("*.png"))[:20]
    outputs = [session.run(None, {"images": decode.preprocess(cv2.imread(str(p)), size)[0]}) for p in images]
    anchors = sum((size[0] // s) * (size[1] // s) for s in (8, 16, 32))
    # The worst case the bar was set for: ~6000 candidates at conf 0.001 (an untrained or confused
    # model). The real frames' box logits with scores drawn as u**5.6, 71 % of them above 0.001.
    rng = np.random.default_rng(0)
    crowded = [[o if i % 2 == 0 or layout not in ("dfl", "distances", "one2one") else
                (rng.uniform(0, 1, o.shape) ** 5.6).astype(np.float32) for i, o in enumerate(out)] for out in outputs]
    nms_free = layout == "one2one"  # selection by score alone: one bar, 0.5 ms, at every conf
    bars = (0.5, 0.5, 0.5) if nms_free else (1.0, 20.0, 20.0)
    reference = (lambda o, conf: _topk_reference(o, size, conf)) if nms_free else \
        (lambda o, conf: decode.postprocess(o, layout, size, conf, 0.7, 300, nms_fn=decode.nms_reference))
    rows = []
    for conf, bar, frames, what in ((0.25, bars[0], outputs, "conf 0.25"), (0.001, bars[1], outputs, "conf 0.001"),
                                    (0.001, bars[2], crowded, "conf 0.001, crowded")):
        outputs_ = frames
        cands = [int(sum((np.asarray(s) > conf).sum() for s in o[1::2])) if nms_free else
                 len(decode.candidates(o, layout, size, conf)[0]) for o in outputs_]
        # The bar is on this thread's CPU time: on a shared machine wall time also counts the time
        # slices of other processes (both are printed).
        t0, c0 = time.perf_counter(), time.thread_time()
        reps = 5
        for _ in range(reps):
            for o in outputs_:
                decode.postprocess(o, layout, size, conf, 0.7, 300)
        ms = (time.thread_time() - c0) * 1000 / (reps * len(outputs_))
        wall_ms = (time.perf_counter() - t0) * 1000 / (reps * len(outputs_))
        t0 = time.perf_counter()
        for o in outputs_[:5]:
            reference(o, conf)
        ref_ms = (time.perf_counter() - t0) * 1000 / 5
        same = all(all(np.array_equal(a, b) for a, b in zip(decode.postprocess(o, layout, size, conf, 0.7, 300),
                                                             reference(o, conf)))
                   for o in outputs_)
        rows.append((what, ms, bar, float(np.mean(cands)), ref_ms, same, wall_ms))
    print(table(["decode + top-k" if nms_free else "decode + NMS", "candidates/frame", "CPU ms/frame", "bar ms", "",
                 "wall ms/frame", "full-sort top-k ms" if nms_free else "numpy NMS ms (same cut-off)", "identical"],
                [[r[0], f"{r[3]:.0f}", f"{r[1]:.3f}", r[2], "ok" if r[1] <= r[2] else "MISSED", f"{r[6]:.3f}",
                  f"{r[4]:.1f}", r[5]] for r in rows],
                title=f"\nDecode speed, {layout} layout at {size[0]}x{size[1]} ({anchors} anchors), "
                      f"{len(outputs)} val frames of {exp}, one core"))
    if overrides:
        stage(TRAIN_PY, "export", root, exp, [], root / "artifacts" / exp / "benchmark" / "decode-export.log")
    return rows


def _topk_reference(outputs, size, conf: float, max_det: int = 300):
    """The one2one selection computed another way: every anchor's box decoded, then one full stable
    sort of all (anchor, class) scores; the same detections as decode.one2one, which decodes only
    the selected anchors."""
    from services.common import decode
    boxes, scores = [], []
    for stride, box, score in zip(decode.STRIDES, outputs[0::2], outputs[1::2]):
        gh, gw = size[0] // stride, size[1] // stride
        ys, xs = np.divmod(np.arange(gh * gw), gw)
        ltrb = np.asarray(box)[0].T.astype(np.float32)
        ax, ay = xs.astype(np.float32) + 0.5, ys.astype(np.float32) + 0.5
        boxes.append(np.stack([ax - ltrb[:, 0], ay - ltrb[:, 1], ax + ltrb[:, 2], ay + ltrb[:, 3]], 1) * stride)
        scores.append(np.asarray(score)[0])
    boxes, scores = np.concatenate(boxes), np.concatenate(scores, 1).T  # (anchors, classes)
    flat = scores.reshape(-1)
    order = np.argsort(-flat, kind="stable")
    order = order[flat[order] > conf][:max_det]
    anchor, cls = order // scores.shape[1], order % scores.shape[1]
    return boxes[anchor].astype(np.float32), flat[order].astype(np.float32), cls.astype(np.int64)


def _is_yolo26(exp: str) -> bool:
    import yaml
    model = (yaml.safe_load((ROOT / "configs" / f"{exp}.yaml").read_text()).get("train") or {}).get("model", "")
    return Path(str(model)).name.lower().startswith("yolo26")


def _dataset_name(exp: str) -> str:
    import yaml
    return yaml.safe_load((ROOT / "configs" / f"{exp}.yaml").read_text())["dataset"]["name"]


def _slug(label: str) -> str:
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in label)[:120]


def cmd_all(work: Path, annotations: Path) -> int:
    """Train what is missing, then every table."""
    work.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, "VENV": str(VENV)}
    for seed in (0, 1, 2):
        root = work / f"demo-seed{seed}"
        if not (root / "artifacts/demo/weights/best.pt").is_file():
            root.mkdir(exist_ok=True)
            subprocess.run(["make", "--no-print-directory", "demo", f"ARGS=train.seed={seed}", f"VENV={VENV}"],
                           cwd=ROOT, env={**env, "PIPELINE_ROOT": str(root)}, check=True)
    yolo26 = work / "demo-yolo26"
    if not (yolo26 / "artifacts/demo-yolo26/weights/best.pt").is_file():
        yolo26.mkdir(exist_ok=True)
        for target in ("dataset", "fit"):
            subprocess.run(["make", "--no-print-directory", target, "EXP=demo-yolo26", f"VENV={VENV}"],
                           cwd=ROOT, env={**env, "PIPELINE_ROOT": str(yolo26)}, check=True)
    proxy = work / "proxy"
    if not (proxy / "artifacts/proxy/weights/best.pt").is_file():
        proxy.mkdir(exist_ok=True)
        args = " ".join(PROXY_CPU_TRAINING + [f"train.model={work / 'demo-seed0/artifacts/demo/weights/best.pt'}",
                                              f"dataset.proxy_annotations={annotations}"])
        for target in ("dataset", "fit"):
            subprocess.run(["make", "--no-print-directory", target, "EXP=proxy", f"ARGS={args}", f"VENV={VENV}"],
                           cwd=ROOT, env={**env, "PIPELINE_ROOT": str(proxy)}, check=True)
    rows = cmd_fidelity([f"{work}/demo-seed{s}:demo" for s in (0, 1, 2)] + [f"{yolo26}:demo-yolo26"]
                        + [f"{proxy}:proxy:export.imgsz=640", f"{proxy}:proxy:export.imgsz=[640,1280]"])
    cmd_layouts(f"{work}/demo-seed0:demo")
    cmd_layouts(f"{yolo26}:demo-yolo26")
    cmd_layouts(f"{proxy}:proxy:export.imgsz=[640,1280]")
    cmd_quantization(f"{proxy}:proxy:export.imgsz=640")
    run_setting(proxy, "proxy", ["export.imgsz=640"], "decode-model")  # a 640x640 model: 8400 anchors
    decode_rows = cmd_decode(f"{proxy}:proxy")
    decode_rows += cmd_decode(f"{yolo26}:demo-yolo26:export.imgsz=640")
    ok = all(meets(r) for _, r in rows) and all(ms <= bar for _, ms, bar, *_ in decode_rows)
    return 0 if ok else 1


# The proxy fine-tuned on 2 CPU cores from the demo's weights (a GPU run uses configs/proxy.yaml as it is)
PROXY_CPU_TRAINING = ["train.device=cpu", "train.imgsz=640", "train.extra={}", "train.workers=0",
                      "train.batch=8", "train.epochs=6", "train.patience=0", "train.amp=false",
                      "train.optimizer=AdamW", "train.lr0=0.002", "train.warmup_epochs=0",
                      "dataset.proxy_train_images=330", "dataset.proxy_val_images=100", "dataset.calib_images=300"]


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = p.add_subparsers(dest="cmd", required=True)
    sub.add_parser("fidelity").add_argument("targets", nargs="+")
    sub.add_parser("layouts").add_argument("target")
    quant = sub.add_parser("quantization")
    quant.add_argument("target")
    quant.add_argument("--skip", default="", help="a regular expression: settings whose label matches are skipped")
    sub.add_parser("decode").add_argument("target")
    report = sub.add_parser("report", help="the fidelity table of results kept in ROOT/artifacts/EXP/benchmark/")
    report.add_argument("results", nargs="+", type=Path)
    all_ = sub.add_parser("all")
    all_.add_argument("--work", type=Path, default=Path("/tmp/int8-fidelity"))
    all_.add_argument("--annotations", type=Path, default=ROOT.parent / "shared" / "data" / "citypersons",
                      help="the folder with the real anno_train.mat and anno_val.mat the proxy is drawn from")
    a = p.parse_args()
    if a.cmd == "fidelity":
        return 0 if all(meets(r) for _, r in cmd_fidelity(a.targets)) else 1
    if a.cmd == "report":
        rows = [(p.name, fidelity(p.resolve())) for p in a.results]
        print_fidelity(rows, "INT8 (simulator) vs float ONNX of the same head")
        return 0 if all(meets(r) for _, r in rows) else 1
    if a.cmd == "layouts":
        cmd_layouts(a.target)
        return 0
    if a.cmd == "quantization":
        cmd_quantization(a.target, a.skip)
        return 0
    if a.cmd == "decode":
        return 0 if all(ms <= bar for _, ms, bar, *_ in cmd_decode(a.target)) else 1
    return cmd_all(a.work, a.annotations.resolve())


if __name__ == "__main__":
    sys.exit(main())
