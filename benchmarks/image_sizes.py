"""The sizes of the built images, as the engine reports them (uncompressed, all layers).

    python benchmarks/image_sizes.py [--docker docker|podman] [IMAGE ...]

Without IMAGE it takes the tags `make print-images` names (the images the stages would run).
"""
import argparse
import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--docker", default="docker")
    p.add_argument("images", nargs="*")
    a = p.parse_args()
    images = a.images or [w.split("=", 1)[1] for w in subprocess.run(
        ["make", "--no-print-directory", "print-images"], cwd=ROOT, capture_output=True, text=True,
        check=True).stdout.split()]
    rows = []
    for image in images:
        proc = subprocess.run([a.docker, "image", "inspect", image], capture_output=True, text=True)
        if proc.returncode != 0:
            print(f"image_sizes: {image} is not built; run `make images` first", file=sys.stderr)
            return 1
        info = json.loads(proc.stdout)[0]
        layers = len(info.get("RootFS", {}).get("Layers", []))
        rows.append((image, info["Size"] / 1e9, layers))
    print("| image | size (GB, uncompressed) | layers |\n|---|---|---|")
    for image, gb, layers in rows:
        print(f"| {image} | {gb:.2f} | {layers} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
