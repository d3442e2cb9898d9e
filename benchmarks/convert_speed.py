"""Export plus INT8 RKNN build of YOLO11n at 640 with 100 calibration images, on this machine's CPU.

    python benchmarks/convert_speed.py

Uses the real stages on a scratch project: the demo dataset (100 calibration images), a YOLO11n
checkpoint built from yolo11n.yaml (the weights' values do not change the build's cost), the export
stage at imgsz 640 (train environment), then the RKNN build (convert environment). Prints seconds
per step and the .rknn size. Bar: the build takes <= 120 s. Exit 1 if missed.
"""
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
TRAIN_PY = ROOT / ".venv" / "train" / "bin" / "python"
CONVERT_PY = ROOT / ".venv" / "convert" / "bin" / "python"
BAR = 120.0


def main() -> int:
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        env = {**{k: v for k, v in os.environ.items() if k != "PYTEST_CURRENT_TEST"}, "PIPELINE_ROOT": str(root)}
        args = ["--config", "configs/demo.yaml", "train.imgsz=640", "dataset.calib_images=100",
                "evaluate.sets=[val]"]

        def step(python, code_or_module, *extra):
            t0 = time.perf_counter()
            cmd = [str(python), "-m", code_or_module, *args, *extra] if not code_or_module.startswith("import") \
                else [str(python), "-c", code_or_module]
            proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True)
            if proc.returncode:
                sys.exit(f"{' '.join(cmd[:4])} failed:\n{proc.stdout[-2000:]}\n{proc.stderr[-2000:]}")
            return time.perf_counter() - t0

        step(TRAIN_PY, "services.dataset")
        # a YOLO11n checkpoint without training: ultralytics' own model, saved the way the trainer saves it
        weights = root / "artifacts" / "demo" / "weights"
        weights.mkdir(parents=True)
        step(TRAIN_PY, "import os, torch; from services.common import yolo_env; yolo_env.prepare();"
                       "from ultralytics import YOLO; m = YOLO('yolo11n.yaml').model;"
                       f"torch.save({{'model': m.half(), 'ema': None, 'train_args': {{}}}}, '{weights}/best.pt')")
        export_s = step(TRAIN_PY, "services.export")
        t0 = time.perf_counter()
        step(CONVERT_PY, "services.convert")
        convert_s = time.perf_counter() - t0
        manifest = json.loads((root / "artifacts/demo/models/demo_int8_rk3588.manifest.json").read_text())
        rknn = root / manifest["rknn"]
        s = manifest["seconds"]
        print(f"YOLO11n at 640x640, {manifest['calibration_images']} calibration images, {os.cpu_count()} cpus, "
              f"rknn-toolkit2 {manifest['toolkit_version']}")
        print(f"  export (both ONNX heads, parity):   {export_s:7.1f} s (whole command)")
        print(f"  calibration letterboxing:           {s['calibration_prep']:7.1f} s")
        print(f"  INT8 build (config, load, build):   {s['build']:7.1f} s   bar <= {BAR:.0f} s: "
              f"{'ok' if s['build'] <= BAR else 'MISSED'}")
        print(f"  accuracy analysis:                  {s['accuracy_analysis']:7.1f} s")
        print(f"  simulator evaluation:               {s['simulator_evaluation']:7.1f} s")
        print(f"  convert stage, whole command:       {convert_s:7.1f} s")
        print(f"  .rknn size: {rknn.stat().st_size / 1e6:.2f} MB")
        return 0 if s["build"] <= BAR else 1


if __name__ == "__main__":
    sys.exit(main())
