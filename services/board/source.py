"""SOURCE (an image, a folder of images or a video file) as (name, image) pairs for the pipeline."""
import itertools
import os
from pathlib import Path

import cv2

from .errors import BadInput

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp"}


def open_source(source: Path):
    """SOURCE -> (what it is, an iterator of (name, BGR image, or the Path of an image that
    pre-processing reads)); bad input is refused here, before any context is loaded."""
    if not source.exists():
        raise BadInput(f"{source} does not exist; give an image, a folder of images or a video file")
    if source.is_dir():
        images = sorted(p for p in source.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
        if not images:
            raise BadInput(f"{source} holds no images ({', '.join(sorted(IMAGE_SUFFIXES))}); give a folder of "
                           f"images, an image or a video file")
        return f"folder of {len(images)} image(s)", ((p.name, p) for p in images)  # read by pre-processing
    if source.suffix.lower() in IMAGE_SUFFIXES:
        image = cv2.imread(str(source))
        if image is None:
            raise BadInput(f"{source} cannot be read as an image; check the file (is it complete?)")
        return "image", iter([(source.name, image)])
    return "video", video_frames(source, open_video(source))


def open_video(source: Path) -> cv2.VideoCapture:
    level = cv2.utils.logging.getLogLevel()
    cv2.utils.logging.setLogLevel(cv2.utils.logging.LOG_LEVEL_SILENT)  # its own warnings would be noise here
    os.environ.setdefault("OPENCV_FFMPEG_LOGLEVEL", "-8")  # and FFmpeg's ("moov atom not found"), read at its start
    try:
        cap = cv2.VideoCapture(str(source))
        opened = cap.isOpened()
    finally:
        cv2.utils.logging.setLogLevel(level)
    if not opened:
        raise BadInput(f"OpenCV cannot open {source} as a video; give an image ({', '.join(sorted(IMAGE_SUFFIXES))}), "
                       f"a folder of images, or a video this OpenCV reads (re-encode it: ffmpeg -i {source.name} "
                       f"-c:v libx264 {source.stem}.mp4)")
    return cap


def video_frames(source: Path, cap: cv2.VideoCapture):
    """The video's frames in order, named <stem>_<index>.jpg (the names --out and --gt use)."""
    i = 0
    try:
        while True:
            ok, frame = cap.read()
            if not ok:
                break
            yield f"{source.stem}_{i:06d}.jpg", frame
            i += 1
    finally:
        cap.release()


def first_frame_size(frames):
    """The first frame's (h, w), or None when it cannot be read, and the frames again, that one
    included (decoded here when it was a file, so it is not read twice): --tiles is checked against
    it before any context is loaded."""
    first = next(frames, None)
    if first is None:
        return None, iter(())
    name, image = first
    if isinstance(image, Path):
        image = cv2.imread(str(image))
    return (None if image is None else image.shape[:2]), itertools.chain([(name, image)], frames)
