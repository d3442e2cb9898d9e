"""Full-scale CityPersons conversion: the real .mat files, 3475 valid 2048x1024 placeholder PNGs.

    python benchmarks/dataset_convert.py [--shared ../shared/data/citypersons] [--repeat 3]

Times `python -m services.dataset --config configs/citypersons.yaml` end to end (interpreter start,
imports, conversion, writing) as a user runs it, and reports the bytes of image data copied.
Bars: wall time <= 5 s, 0 bytes copied. Exit code 1 if a bar is missed.
"""
import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))
sys.path.insert(0, str(ROOT))
from conftest import make_real_root  # noqa: E402  (the tests' own fixture builder)

BAR_SECONDS, BAR_BYTES = 5.0, 0


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--shared", default=str(ROOT.parent / "shared" / "data" / "citypersons"))
    p.add_argument("--repeat", type=int, default=3)
    a = p.parse_args()
    if not (Path(a.shared) / "anno_train.mat").is_file():
        print(f"benchmark: no CityPersons annotations in {a.shared}; pass --shared DIR")
        return 2

    import io
    from PIL import Image
    buf = io.BytesIO()
    Image.new("RGB", (2048, 1024)).save(buf, format="PNG")
    times, copied, stage_times = [], [], []
    with tempfile.TemporaryDirectory() as tmp:
        root = make_real_root(Path(tmp), buf.getvalue(), Path(a.shared))
        n_png = sum(1 for _ in (root / "datasets/citypersons/raw/leftImg8bit").rglob("*.png"))
        for i in range(a.repeat):
            t0 = time.perf_counter()
            # CityPersons only: the experiment's COCO person set is another dataset, not benchmarked here
            proc = subprocess.run([sys.executable, "-m", "services.dataset", "--config",
                                   "configs/citypersons.yaml", "--force", "evaluate.sets=[val]"], cwd=ROOT, capture_output=True,
                                  text=True, env={**os.environ, "PIPELINE_ROOT": str(root)})
            times.append(time.perf_counter() - t0)
            if proc.returncode:
                print(proc.stdout + proc.stderr)
                return 1
            m = json.loads((root / "datasets/citypersons/yolo/manifest.json").read_text())
            copied.append(m["bytes_copied"])
            stage_times.append(m["wall_s"])

    wall = statistics.median(times)
    print(f"placeholder PNGs: {n_png} (2048x1024), cpus: {os.cpu_count()}, runs: {a.repeat}")
    print(f"wall time (median, whole command): {wall:.2f} s  [runs: {', '.join(f'{t:.2f}' for t in times)}]"
          f"  bar <= {BAR_SECONDS:.0f} s: {'ok' if wall <= BAR_SECONDS else 'MISSED'}")
    print(f"conversion inside the stage (median): {statistics.median(stage_times):.2f} s")
    print(f"bytes of image data copied: {max(copied)}  bar {BAR_BYTES}: "
          f"{'ok' if max(copied) <= BAR_BYTES else 'MISSED'}")
    return 0 if wall <= BAR_SECONDS and max(copied) <= BAR_BYTES else 1


if __name__ == "__main__":
    sys.exit(main())
