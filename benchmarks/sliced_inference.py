"""Sliced inference on the CityPersons-scale proxy: the 640x1280 letterbox against 2 and 3 tiles, INT8.

    python benchmarks/sliced_inference.py [--work /tmp/sliced-inference] [--weights DEMO_BEST_PT]
                                          [--train-images 150] [--val-images 100] [--epochs 3] [--again]
                                          [--annotations ../shared/data/citypersons]

One model, three ways to deploy it on 2048x1024 frames (evaluate.tiles, services/common/decode.py):

  letterbox  input [640, 1280], 1 tile : the whole frame at scale 0.625, 0.82 Mpx per frame
  2 tiles    input [832, 896],  2 tiles: two 1078x1024 tiles at scale 0.81, 1.49 Mpx (1.8x)
  3 tiles    input [1024, 736], 3 tiles: three 732x1024 tiles at scale 1.0 (native), 2.26 Mpx (2.8x)

Each tile costs about what the letterbox costs (0.75 against 0.82 Mpx), so on the RK3588, one tile per
NPU core (detect.py --tiles), a tiled frame takes about the letterbox's wall time on all three cores
instead of one. The question: what do the extra pixels buy, per miss-rate setup (Reasonable, its small
50-75 px and heavily occluded parts, All down to 20 px)? Every number comes from the real stages: the
export at each input size (train environment), then the convert stage's INT8 build, calibrated on
tiles as the NPU sees them, and its simulator evaluation with the project's evaluator (convert
environment, rknn-toolkit2); results are kept under WORK/proxy/artifacts/proxy/benchmark/.

Scale, for the 2-core development machine: the proxy with --train-images train frames (150 of 2975)
and --val-images val frames (100 of 500) drawn at 2048x1024 from the real annotation files, and one
model fine-tuned from the demo's weights (trained first when --weights is not given) for --epochs
epochs on the CPU at imgsz 1280, the letterbox's scale; the tiles deploy that same model: 38 minutes
here, 18 of them the training. A GPU run of configs/proxy.yaml, or the real data, gives converged numbers; these compare
the three deployments of one weak model.

Bar: 3 tiles lower MR-2 Reasonable by at least 1 point against the letterbox (the same NPU wall time,
three cores instead of one, must buy something on the headline metric). Exit 1 when missed.
"""
import argparse
import json
import shutil
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))
sys.path.insert(0, str(ROOT))
import int8_fidelity as fid  # noqa: E402
from services.common import decode  # noqa: E402

FRAME = (1024, 2048)  # the proxy's frames (h, w), CityPersons' size
OVERLAP = 0.1  # evaluate.tile_overlap's default
SETUPS = {"letterbox 640x1280": ([640, 1280], 1), "2 tiles 832x896": ([832, 896], 2),
          "3 tiles 1024x736": ([1024, 736], 3)}
MR_SETUPS = {"Reasonable": "MR-2 Reasonable", "Reasonable_small": "MR-2 small (50-75 px)",
             "Reasonable_occ=heavy": "MR-2 heavy occl.", "All": "MR-2 All (>= 20 px)"}
BAR_PT = 1.0


def proxy_overrides(a: argparse.Namespace, weights: Path) -> list[str]:
    data = [f"dataset.proxy_train_images={a.train_images}", f"dataset.proxy_val_images={a.val_images}",
            "dataset.calib_images=100", f"dataset.proxy_annotations={a.annotations.resolve()}"]
    training = ["train.device=cpu", "train.extra={}", "train.workers=0", "train.batch=8", f"train.epochs={a.epochs}",
                "train.patience=0", "train.amp=false", "train.optimizer=AdamW", "train.lr0=0.002",
                "train.warmup_epochs=0", "train.imgsz=1280", f"train.model={weights.resolve()}"]
    return data + training


def trained_proxy(a: argparse.Namespace) -> tuple[Path, list[str]]:
    """WORK/proxy with the fine-tuned model (trained when missing), and the overrides it was made with."""
    weights = a.weights
    if weights is None:
        weights = a.work / "demo" / "artifacts/demo/weights/best.pt"
        if not weights.is_file():
            (a.work / "demo").mkdir(parents=True, exist_ok=True)
            print("training the demo (the starting weights) ...", flush=True)
            fid.make("demo", a.work / "demo", [], "demo")
    root = a.work / "proxy"
    overrides = proxy_overrides(a, weights)
    if not (root / "artifacts/proxy/weights/best.pt").is_file():
        root.mkdir(parents=True, exist_ok=True)
        print(f"proxy: dataset and {a.epochs} epochs of fine-tuning at imgsz 1280 on the CPU ...", flush=True)
        fid.make("dataset", root, overrides, "proxy")
        fid.make("fit", root, overrides, "proxy")
    return root, overrides


def measure(root: Path, overrides: list[str], label: str, size: list, tiles: int, again: bool) -> dict:
    """Export at `size`, then the INT8 build and its simulator evaluation with `tiles`; the metrics."""
    kept = root / "artifacts/proxy/benchmark" / f"sliced-{label.replace(' ', '-')}" / "rknn.json"
    if kept.is_file() and not again:
        return json.loads(kept.read_text())
    print(f"{label}: export, INT8 build and simulator evaluation ...", flush=True)
    shape = f"[{size[0]},{size[1]}]"
    setting = overrides + [f"export.imgsz={shape}", f"evaluate.imgsz={shape}", f"evaluate.tiles={tiles}",
                           f"evaluate.tile_overlap={OVERLAP}"]
    log = kept.parent / "stages.log"
    if kept.parent.exists():
        shutil.rmtree(kept.parent)
    fid.stage(fid.TRAIN_PY, "export", root, "proxy", setting, log)
    fid.stage(fid.CONVERT_PY, "convert", root, "proxy", setting, log)
    metrics = root / "artifacts/proxy/metrics"
    for p in [metrics / "rknn.json", *metrics.glob("rknn.*.detections.json")]:
        shutil.copy(p, kept.parent / p.name)
    return json.loads(kept.read_text())


def row(label: str, size: list, tiles: int, m: dict, base_px: int) -> list:
    x0, y0, x1, y1 = decode.check_tiles(FRAME, tuple(size), tiles, OVERLAP)[0]
    scale = min(size[0] / (y1 - y0), size[1] / (x1 - x0))
    val, px = m["sets"]["val"], tiles * size[0] * size[1]
    mr = [f"{100 * val['miss_rate'][k]:.2f}" for k in MR_SETUPS]
    return [label, f"{size[0]}x{size[1]}", str(tiles), f"{px / 1e6:.2f} Mpx ({px / base_px:.1f}x)", f"{scale:.3f}",
            f"{val['coco']['AP50']:.3f}", f"{val['coco']['AP']:.3f}", *mr,
            f"{m['latency_ms_per_image']['mean']:.0f}"]


def print_table(rows: list, title: str) -> None:
    headers = ["setup", "model input", "tiles", "input pixels per frame", "frame scale", "AP50", "AP50-95",
               *MR_SETUPS.values(), "simulator ms/frame"]
    print(f"\n{title}\n")
    print("| " + " | ".join(headers) + " |")
    print("|" + "---|" * len(headers))
    for r in rows:
        print("| " + " | ".join(r) + " |")


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--work", type=Path, default=Path("/tmp/sliced-inference"))
    p.add_argument("--weights", type=Path, help="a demo best.pt to fine-tune from (default: train the demo)")
    p.add_argument("--train-images", type=int, default=150, help="proxy train frames (of 2975)")
    p.add_argument("--val-images", type=int, default=100, help="proxy val frames (of 500)")
    p.add_argument("--epochs", type=int, default=3)
    p.add_argument("--again", action="store_true", help="measure again what WORK already holds")
    p.add_argument("--annotations", type=Path, default=ROOT.parent / "shared" / "data" / "citypersons",
                   help="the folder with the real anno_train.mat and anno_val.mat the proxy is drawn from")
    a = p.parse_args()
    if not (a.annotations / "anno_train.mat").is_file():
        print(f"sliced_inference: error: no anno_train.mat in {a.annotations}; give --annotations <folder>",
              file=sys.stderr)
        return 2
    root, overrides = trained_proxy(a)
    results = {label: measure(root, overrides, label, size, tiles, a.again) for label, (size, tiles) in SETUPS.items()}
    base_px = 640 * 1280
    rows = [row(label, size, tiles, results[label], base_px) for label, (size, tiles) in SETUPS.items()]
    print_table(rows, f"proxy: {a.val_images} val frames of 2048x1024, one model fine-tuned {a.epochs} epochs at "
                      f"imgsz 1280 on the CPU ({a.train_images} train frames), INT8 in the rknn-toolkit2 simulator, "
                      f"tile overlap {OVERLAP}")
    first, last = (results[k]["sets"]["val"]["miss_rate"]["Reasonable"] for k in (next(iter(SETUPS)), list(SETUPS)[-1]))
    gain = 100 * (first - last)
    met = gain >= BAR_PT
    print(f"\nbar: 3 tiles lower MR-2 Reasonable by >= {BAR_PT:.1f} pt against the letterbox: "
          f"{gain:+.2f} pt, {'met' if met else 'missed'}")
    return 0 if met else 1


if __name__ == "__main__":
    sys.exit(main())
