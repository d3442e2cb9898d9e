"""Float and INT8 miss rate of models trained at different input sizes, on the CityPersons-scale proxy.

    python benchmarks/resolution_trained.py [--work /tmp/resolution-trained] [--epochs 3] [--train-images 150]
                                            [--weights best.pt] [--annotations ../shared/data/citypersons]

The question behind the thesis default (README: "Resolution and the input pipeline"): what does a
model *trained* at 640 (deployed at 640x640, the whole frame letterboxed) give against one trained at
1280 (deployed at [640, 1280]), in float and as the INT8 RKNN model in the simulator? Each size gets
its own project root under --work with the same proxy dataset (configs/proxy.yaml at reduced scale),
is fine-tuned on the CPU from the demo's weights (trained first when --weights is not given), then
exported, evaluated and converted by the real stages (benchmarks/int8_fidelity.py's `run_setting`).
A CPU run is short and small (stated in the table's title): its absolute numbers are far from a
GPU run of configs/proxy.yaml; what it compares is the two sizes under the same budget.
"""
import argparse
import os
import shutil
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))
import int8_fidelity as fid  # noqa: E402

# train size -> the deployed input [h, w] at the training scale
SIZES = {640: "640", 1280: "[640,1280]"}


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--work", type=Path, default=Path("/tmp/resolution-trained"))
    p.add_argument("--epochs", type=int, default=3)
    p.add_argument("--train-images", type=int, default=150, help="proxy train images (of 2975)")
    p.add_argument("--weights", type=Path, help="a demo best.pt to fine-tune from (default: train the demo)")
    p.add_argument("--annotations", type=Path, default=ROOT.parent / "shared" / "data" / "citypersons")
    a = p.parse_args()
    a.work.mkdir(parents=True, exist_ok=True)
    weights = a.weights
    if weights is None:
        demo = a.work / "demo"
        weights = demo / "artifacts/demo/weights/best.pt"
        if not weights.is_file():
            demo.mkdir(exist_ok=True)
            print("training the demo (the starting weights) ...", flush=True)
            fid.make("demo", demo, [], exp="demo")
    data = ["dataset.proxy_train_images=%d" % a.train_images, "dataset.proxy_val_images=100",
            "dataset.calib_images=100", f"dataset.proxy_annotations={a.annotations}"]
    training = ["train.device=cpu", "train.extra={}", "train.workers=0", "train.batch=8", f"train.epochs={a.epochs}",
                "train.patience=0", "train.amp=false", "train.optimizer=AdamW", "train.lr0=0.002",
                "train.warmup_epochs=0", f"train.model={weights.resolve()}"]
    rows = []
    first = None
    for size, deployed in SIZES.items():
        root = a.work / f"proxy-train{size}"
        if not (root / "artifacts/proxy/weights/best.pt").is_file():
            root.mkdir(exist_ok=True)
            if first is not None and not (root / "datasets").exists():  # the same frames, hard-linked
                shutil.copytree(first / "datasets", root / "datasets", copy_function=os.link)
            print(f"proxy: dataset and fine-tuning at imgsz {size} ...", flush=True)
            fid.make("dataset", root, data + training + [f"train.imgsz={size}"])
            fid.make("fit", root, data + training + [f"train.imgsz={size}"])
        first = first or root
        overrides = data + training + [f"train.imgsz={size}", f"export.imgsz={deployed}", f"evaluate.imgsz={deployed}"]
        label = f"trained at {size}, deployed at {deployed}"
        rows.append((label, fid.fidelity(fid.run_setting(root.resolve(), "proxy", overrides, f"train{size}"))))
    fid.print_fidelity(rows, f"proxy, {a.train_images} train / 100 val frames of 2048x1024, fine-tuned "
                             f"{a.epochs} epochs on the CPU from the demo's weights: float = the RKNN-head ONNX, "
                             f"INT8 = the simulator")
    return 0


if __name__ == "__main__":
    sys.exit(main())
